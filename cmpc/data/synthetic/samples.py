"""In-memory samples: one image (:func:`generate_image_sample`) or one clip (:func:`generate_video_sample`),
a function of (seed, split, index) and the parameters only.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .builders import _build_scene, _Ctx
from .render import _background, _finish, _paint
from .scene import RELATION_GAP, Scene
from .shapes import object_polygon, polygon_mask
from .vocabulary import IMAGE_KINDS, KINDS


@dataclass
class ImageSample:
    """One generated image: scene, RGB image, per-object masks and polygons, refs (target = object index)."""
    scene: Scene
    image: np.ndarray
    masks: list
    polygons: list
    refs: list


@dataclass
class VideoSample:
    """One generated clip: scene, K RGB frames, K label maps (0 = background, i + 1 = object i), refs."""
    scene: Scene
    frames: list
    labels: list
    refs: list


def _split_code(split):
    return zlib.crc32(split.encode("utf-8"))


def _sample_rng(seed, split, index, domain):
    return np.random.default_rng(np.random.SeedSequence([int(seed), domain, _split_code(split), int(index)]))


def _pick_kind(kinds, seed, split, index, domain):
    """Kind of sample ``index``: a golden-ratio sequence over the cumulative weights, so that the shares of
    any run of consecutive indices follow the weights closely (still a function of (seed, split, index))."""
    offset = float(_sample_rng(seed, split, 0, 100 + domain).random())
    u = (offset + index * 0.6180339887498949) % 1.0
    names = list(kinds)
    cum = np.cumsum([kinds[k] for k in names], dtype=float)
    return names[min(int(np.searchsorted(cum / cum[-1], u, side="right")), len(names) - 1)]


def generate_image_sample(seed: int, split: str, index: int, *, image_size=128, kinds=None, min_objects=2,
                          max_objects=6, expressions_per_image=(1, 3), negative=0.0,
                          relation_gap=RELATION_GAP) -> ImageSample:
    """Generate image ``index`` of ``split`` in memory; depends only on (seed, split, index) and the params."""
    kinds = dict(kinds or {k: 1 for k in IMAGE_KINDS})
    rng = _sample_rng(seed, split, index, 0)
    ctx = _Ctx(rng, int(image_size), 1, int(min_objects), int(max_objects), tuple(relation_gap))
    lo, hi = expressions_per_image
    n_expr = int(rng.integers(lo, hi + 1))
    objs, refs = _build_scene(ctx, _pick_kind(kinds, seed, split, index, 0), n_expr, float(negative))
    img = _background(ctx)
    polys, masks = [], []
    for o in objs:
        poly = object_polygon(o, 0)
        m = polygon_mask(poly, ctx.S)
        _paint(img, o, m, 0)
        polys.append(poly)
        masks.append(m)
    image = _finish(ctx, img, ctx.uniform(3, 9))
    return ImageSample(Scene(ctx.S, objs), image, masks, polys, refs)


def generate_video_sample(seed: int, split: str, index: int, *, image_size=128, num_frames=8, kinds=None,
                          min_objects=2, max_objects=5, expressions_per_video=(1, 3), negative=0.0,
                          relation_gap=RELATION_GAP) -> VideoSample:
    """Generate clip ``index`` of ``split`` in memory; depends only on (seed, split, index) and the params."""
    kinds = dict(kinds or {k: 1 for k in KINDS[:5]})
    rng = _sample_rng(seed, split, index, 1)
    ctx = _Ctx(rng, int(image_size), int(num_frames), int(min_objects), int(max_objects), tuple(relation_gap))
    lo, hi = expressions_per_video
    n_expr = int(rng.integers(lo, hi + 1))
    objs, refs = _build_scene(ctx, _pick_kind(kinds, seed, split, index, 1), n_expr, float(negative))
    bg = _background(ctx)
    sigma = ctx.uniform(3, 9)
    frames, labels = [], []
    for k in range(ctx.K):
        img = bg.copy()
        lab = np.zeros((ctx.S, ctx.S), np.uint8)
        for i, o in enumerate(objs):
            m = polygon_mask(object_polygon(o, k), ctx.S)
            _paint(img, o, m, k)
            lab[m] = i + 1
        frames.append(_finish(ctx, img, sigma))
        labels.append(lab)
    return VideoSample(Scene(ctx.S, objs), frames, labels, refs)
