"""Shape geometry: the unit outline of each shape, an object's polygon in a frame (rotated, scaled, placed) and
its rasterisation, done exactly as the refer API decodes polygons (pycocotools).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from pycocotools import mask as mask_utils

from .scene import SceneObject
from .vocabulary import SHAPES


def _unit_polygon(shape):
    if shape == "circle":
        a = np.linspace(0, 2 * np.pi, 28, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if shape == "square":
        h = 1 / math.sqrt(2)
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    if shape == "triangle":
        a = np.radians([-90, 30, 150])
        return np.stack([np.cos(a), np.sin(a)], 1)
    if shape == "star":
        a = np.radians(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.48)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if shape == "diamond":
        return np.array([[0, -1], [0.68, 0], [0, 1], [-0.68, 0]])
    if shape == "cross":
        w = 0.3
        e = math.sqrt(1 - w * w)
        return np.array([[-w, -e], [w, -e], [w, -w], [e, -w], [e, w], [w, w], [w, e], [-w, e],
                         [-w, w], [-e, w], [-e, -w], [-w, -w]])
    raise ValueError(shape)


_UNIT = {s: _unit_polygon(s) for s in SHAPES}
_ROTATES = ("square", "triangle", "star", "cross")


def object_polygon(o: SceneObject, k: int = 0) -> list:
    """Flat [x1, y1, x2, y2, ...] polygon (rounded to 0.01 px) of object ``o`` in frame ``k``."""
    pts = _UNIT[o.shape]
    if o.angle:
        c, s = math.cos(math.radians(o.angle)), math.sin(math.radians(o.angle))
        pts = pts @ np.array([[c, s], [-s, c]])
    cx, cy = o.centres[k]
    xy = pts * o.radius + np.array([cx, cy])
    return [round(float(v), 2) for v in xy.reshape(-1)]


def polygon_mask(poly: list, S: int) -> np.ndarray:
    """Rasterise a flat polygon exactly as the refer API does (pycocotools frPyObjects + decode)."""
    rle = mask_utils.frPyObjects([poly], S, S)
    with warnings.catch_warnings():  # pycocotools + numpy 2: harmless DeprecationWarning about __array__(copy=)
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)[:, :, 0].astype(bool)
