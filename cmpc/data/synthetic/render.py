"""Rendering: a textured, noisy background (low-frequency tint, faint strokes, specks in object colours), flat
shaded objects, and sensor noise; everything is drawn in float32 and rounded once at the end.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .vocabulary import COLOURS

_PALETTE = [(c[0], c[1], c[2]) for c in COLOURS.values()]


def _background(ctx):
    rng, S = ctx.rng, ctx.S
    g = int(rng.integers(3, 7))
    tint = rng.uniform(70, 190) + rng.normal(0, 25, 3)   # greyish tint, random hue
    low = (tint + rng.normal(0, 30, (g, g, 3))).astype(np.float32)
    bg = cv2.resize(low, (S, S), interpolation=cv2.INTER_CUBIC)
    mid = rng.normal(0, 10, (16, 16, 3)).astype(np.float32)
    bg += cv2.resize(mid, (S, S), interpolation=cv2.INTER_LINEAR)
    for _ in range(int(rng.integers(0, 4))):  # faint strokes
        layer = bg.copy()
        col = _PALETTE[int(rng.integers(len(_PALETTE)))] if rng.random() < 0.5 else tuple(rng.uniform(0, 255, 3))
        p1 = (int(rng.integers(S)), int(rng.integers(S)))
        p2 = (int(rng.integers(S)), int(rng.integers(S)))
        cv2.line(layer, p1, p2, tuple(float(c) for c in col), int(rng.integers(1, 3)), cv2.LINE_8)
        a = float(rng.uniform(0.3, 0.6))
        bg = cv2.addWeighted(bg, 1 - a, layer, a, 0.0)
    for _ in range(int(rng.integers(0, 7))):  # small specks in object colours
        col = _PALETTE[int(rng.integers(len(_PALETTE)))]
        c = (int(rng.integers(S)), int(rng.integers(S)))
        cv2.circle(bg, c, max(1, int(rng.integers(1, 3) * ctx.u)), tuple(float(x) for x in col), -1, cv2.LINE_8)
    return bg


def _paint(img, o, mask, k):
    ys, xs = np.nonzero(mask)
    cx, cy = o.centres[k]
    ang, amp = o.shade
    g = ((xs - cx) * math.cos(ang) + (ys - cy) * math.sin(ang)) * (amp / max(o.radius, 1.0))
    img[ys, xs] = np.asarray(o.rgb, np.float32)[None, :] + g.astype(np.float32)[:, None]


def _finish(ctx, img, sigma):
    S = ctx.S
    img = img + ctx.rng.standard_normal((S, S, 3), dtype=np.float32) * sigma
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
