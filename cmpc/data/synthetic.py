"""Procedurally generated referring segmentation benchmark ("synthetic"), for images and videos.

Scenes hold 2-6 flat shapes (circle, square, triangle, star, diamond, cross) in six colours and two
clearly different sizes on a textured, noisy background. Every scene is built around one *kind* of
referring expression, so that results can be split by kind:

- ``entity``: the shape alone identifies the target ("the triangle");
- ``attribute``: shape plus colour and/or size is needed ("the small red ball");
- ``relation``: the target has an identical twin and only its relation to a landmark tells them apart
  ("the circle left of the blue square"; left/right/above/below/next to/between); most directional scenes
  hold a decoy twin further in that direction, so "the leftmost circle" is not the answer;
- ``location``: look-alikes that only absolute position tells apart ("the leftmost box", "the top right ball");
- ``action`` (videos only): identical twins that differ only in motion ("the red ball moving left");
- ``negative`` (optional): an expression about an object that is not in the scene (empty target).

A small grammar turns a structured :class:`Expression` into text (:func:`realize`) and back
(:func:`parse_expression`); :func:`resolve` returns the objects of a :class:`Scene` that an expression refers
to (``None`` when it is ill-posed, e.g. two candidates are too close to call one "leftmost"). Every
written expression resolves to exactly its target; ambiguous ones are resampled, never written.

Output formats are the real ones: the refer-API layout (``instances.json``, ``refs(unc).p``) for images
(:func:`generate_image_benchmark`) and the Refer-YouTube-VOS layout (palette PNG annotations,
``meta_expressions.json``) for videos (:func:`generate_video_benchmark`), plus side files ``kinds.json``
and ``scenes.json`` (objects with attributes and positions). Output is byte-for-byte deterministic given the
parameters (and library versions); the randomness of one sample derives from (seed, split, index) only.
Generation goes to a temporary sibling folder that is renamed into place after a ``COMPLETE.json`` stamp
is written; :func:`ensure_image_benchmark`/:func:`ensure_video_benchmark` regenerate only when the stamp is
missing or its parameters differ. See ``docs/synthetic.md``.

This module must not import torch or other ``cmpc.data`` modules.
"""
from __future__ import annotations

import io
import json
import math
import os
import pickle
import shutil
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from cmpc.errors import ConfigError, DatasetError

__all__ = [
    "GENERATOR_VERSION", "SHAPES", "COLOURS", "SIZES", "KINDS", "MOTIONS", "RELATIONS", "LOCATIONS",
    "Phrase", "Expression", "SceneObject", "Scene", "ImageSample", "VideoSample",
    "clean_sentence", "realize", "parse_expression", "resolve", "kind_is_valid", "relation_subkind",
    "generate_image_sample", "generate_video_sample",
    "generate_image_benchmark", "generate_video_benchmark", "ensure_image_benchmark", "ensure_video_benchmark",
    "scene_from_json", "load_image_scenes", "load_video_scenes", "benchmark_statistics", "format_statistics",
]

GENERATOR_VERSION = 3

# ----------------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
SHAPE_WORDS = {
    "circle": ("circle", "ball", "disk"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross",),
}
COLOURS = {  # base RGB, jittered per object
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 210, 40),
    "purple": (145, 55, 195),
    "orange": (245, 135, 25),
}
COLOUR_WORDS = {"red": ("red",), "green": ("green",), "blue": ("blue",), "yellow": ("yellow",),
                "purple": ("purple", "violet"), "orange": ("orange",)}
SIZES = ("small", "big")
SIZE_WORDS = {"small": ("small", "little", "tiny"), "big": ("big", "large")}
SIZE_RADIUS = {"small": (12.0, 15.0), "big": (19.0, 24.0)}  # bounding radius in px at 128 px images

KINDS = ("entity", "attribute", "relation", "location", "action", "negative")
IMAGE_KINDS = ("entity", "attribute", "relation", "location")
MOTIONS = ("left", "right", "up", "down", "still", "bounce")
RELATIONS = ("left", "right", "above", "below", "near", "between")
LOCATIONS = (("left",), ("right",), ("top",), ("bottom",),
             ("top", "left"), ("top", "right"), ("bottom", "left"), ("bottom", "right"))

PREFIXES = (("please", "find"), ("find",), ("segment",), ("please", "segment"), ("show", "me"),
            ("look", "at"), ("where", "is"), ("can", "you", "find"))
SUFFIXES_IMAGE = (("in", "the", "picture"), ("in", "the", "image"), ("please",))
SUFFIXES_VIDEO = (("in", "the", "video"), ("in", "the", "clip"), ("please",))
CONNECTORS = (("that", "is"), ("which", "is"))

REL_PHRASES = {
    "left": (("left", "of"), ("to", "the", "left", "of"), ("on", "the", "left", "of")),
    "right": (("right", "of"), ("to", "the", "right", "of"), ("on", "the", "right", "of")),
    "above": (("above",), ("over",)),
    "below": (("below",), ("under",), ("beneath",)),
    "near": (("next", "to"), ("beside",), ("near",), ("close", "to")),
    "between": (("between",),),
}
LOC_PRE = {  # words before the noun; corners combine one vertical and one horizontal word
    ("left",): (("leftmost",), ("left",)),
    ("right",): (("rightmost",), ("right",)),
    ("top",): (("topmost",), ("uppermost",), ("top",)),
    ("bottom",): (("bottommost",), ("lowest",), ("bottom",)),
}
for _v in ("top", "bottom"):
    for _h in ("left", "right"):
        LOC_PRE[(_v, _h)] = ((_v, _h),)
LOC_POST = {
    ("left",): (("on", "the", "left"), ("furthest", "to", "the", "left"), ("at", "the", "left")),
    ("right",): (("on", "the", "right"), ("furthest", "to", "the", "right"), ("at", "the", "right")),
    ("top",): (("at", "the", "top"), ("nearest", "the", "top"), ("highest", "up")),
    ("bottom",): (("at", "the", "bottom"), ("nearest", "the", "bottom"), ("lowest", "down")),
}
for _v in ("top", "bottom"):
    for _h in ("left", "right"):
        LOC_POST[(_v, _h)] = (("in", "the", _v, _h, "corner"), ("at", "the", _v, _h))
MOTION_POST = {
    "left": (("moving", "left"), ("moving", "to", "the", "left"), ("going", "left"), ("heading", "left")),
    "right": (("moving", "right"), ("moving", "to", "the", "right"), ("going", "right"), ("heading", "right")),
    "up": (("moving", "up"), ("moving", "upwards"), ("going", "up"), ("rising",)),
    "down": (("moving", "down"), ("moving", "downwards"), ("going", "down"), ("sinking",)),
    "still": (("standing", "still"), ("not", "moving"), ("staying", "still"), ("staying", "in", "place")),
    "bounce": (("bouncing",), ("bouncing", "up", "and", "down"), ("jumping", "up", "and", "down"), ("hopping",)),
}
MOTION_PRE = {"bounce": ("bouncing", "hopping"), "still": ("motionless", "static")}

_SHAPE_OF = {w: s for s, ws in SHAPE_WORDS.items() for w in ws}
_COLOUR_OF = {w: c for c, ws in COLOUR_WORDS.items() for w in ws}
_SIZE_OF = {w: z for z, ws in SIZE_WORDS.items() for w in ws}
_LOC_WORD = {"leftmost": "left", "left": "left", "rightmost": "right", "right": "right", "topmost": "top",
             "uppermost": "top", "top": "top", "bottommost": "bottom", "lowest": "bottom", "bottom": "bottom"}
_MOTION_PRE_OF = {w: m for m, ws in MOTION_PRE.items() for w in ws}


def _by_length(table):
    """(phrase tokens, value) pairs, longest phrase first, for greedy matching."""
    pairs = [(tuple(p), v) for v, ps in table.items() for p in ps]
    return sorted(pairs, key=lambda pv: -len(pv[0]))


_REL_MATCH = _by_length(REL_PHRASES)
_LOC_MATCH = _by_length(LOC_POST)
_MOTION_MATCH = _by_length(MOTION_POST)

# Geometry constants, as fractions of the image side S.
PAD = 0.02           # objects keep this far from the border
GAP = 0.03           # minimum gap between the bounding circles of two objects
LOC_MARGIN = 0.05    # "leftmost" needs a lead of this much over the runner-up
NEAR_TRUE, NEAR_FALSE = 0.10, 0.25        # edge distances for "next to" / clearly not next to
BETWEEN_D_TRUE, BETWEEN_D_FALSE = 0.10, 0.30
OFF_AXIS = 1.0       # "left of" is false for an object whose offset across is >= its offset along (and clears the landmark)
DECOY_SHARE = 0.8    # share of left/right/above/below scenes whose twin lies beyond the target (see _build_relation)
RELATION_GAP = (0.0, 0.15)  # default range of the extra target-landmark distance of left/right/above/below
MOVE_MIN = 0.05      # net displacement for "moving left" etc.
STILL_MAX = 0.01     # path length under which an object is "standing still"


# ----------------------------------------------------------------------------------------------------------
# Scenes and expressions
# ----------------------------------------------------------------------------------------------------------
@dataclass
class SceneObject:
    """One object: look (shape, colour, size), bounding radius in px, centre (x, y) per frame, motion label.

    ``oid`` is the written id (``ann_id`` for images, ``obj_id`` string for videos) once known.
    """
    shape: str
    colour: str
    size: str
    radius: float
    centres: list = field(default_factory=list)
    motion: str = "still"
    oid: object = None
    # rendering only
    rgb: tuple = (0.0, 0.0, 0.0)
    angle: float = 0.0
    shade: tuple = (0.0, 0.0)
    offsets: list = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "radius": self.radius,
                "motion": self.motion, "centres": [list(c) for c in self.centres]}


@dataclass
class Scene:
    """Objects of one image (one frame) or one clip (K frames); ``size`` = image side in px."""
    size: int
    objects: list

    @property
    def num_frames(self) -> int:
        return len(self.objects[0].centres) if self.objects else 1


def scene_from_json(objects: list, size: int) -> Scene:
    """Rebuild a :class:`Scene` from the ``objects`` list of ``scenes.json`` (each may carry ``oid``)."""
    objs = [SceneObject(o["shape"], o["colour"], o["size"], float(o["radius"]),
                        [tuple(c) for c in o["centres"]], o.get("motion", "still"), o.get("oid"))
            for o in objects]
    return Scene(int(size), objs)


@dataclass(frozen=True)
class Phrase:
    """A noun phrase: a shape plus optional colour and size."""
    shape: str
    colour: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class Expression:
    """A parsed referring expression: target phrase plus at most one of location / relation / motion."""
    target: Phrase
    location: tuple | None = None     # ("left",) ... ("top", "right")
    relation: str | None = None       # one of RELATIONS
    landmarks: tuple = ()             # Phrases; two for "between"
    motion: str | None = None         # one of MOTIONS


def _matches(o: SceneObject, p: Phrase) -> bool:
    return o.shape == p.shape and (p.colour is None or o.colour == p.colour) and (p.size is None or o.size == p.size)


def _all_frames(values):
    """Three-valued AND over frames: True/False when every frame agrees, else None."""
    first = values[0]
    if first is None:
        return None
    for v in values[1:]:
        if v is not first:
            return None
    return first


def _relation_frame(a, rel, lms, k, S):
    ax, ay = a.centres[k]
    if rel == "between":
        (bx, by), (cx, cy) = lms[0].centres[k], lms[1].centres[k]
        vx, vy = cx - bx, cy - by
        norm2 = vx * vx + vy * vy
        if norm2 <= 1e-9:
            return None
        t = ((ax - bx) * vx + (ay - by) * vy) / norm2
        d = abs((ax - bx) * vy - (ay - by) * vx) / math.sqrt(norm2)
        if 0.2 <= t <= 0.8 and d <= BETWEEN_D_TRUE * S:
            return True
        if t < 0.0 or t > 1.0 or d >= BETWEEN_D_FALSE * S:
            return False
        return None
    b = lms[0]
    bx, by = b.centres[k]
    rr = a.radius + b.radius
    if rel == "near":
        e = math.hypot(ax - bx, ay - by) - rr
        if e <= NEAR_TRUE * S:
            return True
        if e >= NEAR_FALSE * S:
            return False
        return None
    along, across = _axes(rel, ax - bx, ay - by)
    if along - rr >= 0.0 and abs(across) <= 0.5 * rr:
        return True          # fully on that side and roughly level with the landmark
    if along <= 0.0:
        return False         # centre not on that side of the landmark's centre
    if abs(across) >= max(OFF_AXIS * along, rr + GAP * S):
        return False         # clearly off the axis: above/below the landmark rather than left of it (etc.)
    return None


def _axes(rel, dx, dy):
    """(along, across) of the offset (dx, dy) from a landmark, for a directional relation."""
    if rel == "left":
        return -dx, dy
    if rel == "right":
        return dx, dy
    if rel == "above":
        return -dy, dx
    if rel == "below":
        return dy, dx
    raise ValueError(f"unknown relation {rel!r}")


def _from_axes(rel, along, across):
    """Inverse of :func:`_axes`: the offset (dx, dy) with that along/across."""
    return {"left": (-along, across), "right": (along, across),
            "above": (across, -along), "below": (across, along)}[rel]


def relation_status(a: SceneObject, rel: str, landmarks, S: int):
    """True / False / None (unclear) for "``a`` is <rel> the landmark(s)" over all frames."""
    return _all_frames([_relation_frame(a, rel, landmarks, k, S) for k in range(len(a.centres))])


def motion_label(o: SceneObject, S: int):
    """Classify a trajectory as one of MOTIONS, or None when it is not clearly any of them."""
    cs = o.centres
    if len(cs) < 2:
        return "still"
    steps = [(cs[i + 1][0] - cs[i][0], cs[i + 1][1] - cs[i][1]) for i in range(len(cs) - 1)]
    path = sum(math.hypot(dx, dy) for dx, dy in steps)
    if path <= STILL_MAX * S:
        return "still"
    xs, ys = [c[0] for c in cs], [c[1] for c in cs]
    dx, dy = xs[-1] - xs[0], ys[-1] - ys[0]
    sy = [s[1] for s in steps if abs(s[1]) > 1e-6]
    reversals = sum(1 for i in range(len(sy) - 1) if (sy[i] > 0) != (sy[i + 1] > 0))
    if reversals >= 1 and max(xs) - min(xs) <= STILL_MAX * S and max(ys) - min(ys) >= 0.04 * S:
        return "bounce"
    mono_x = all(s[0] >= 0 for s in steps) or all(s[0] <= 0 for s in steps)
    mono_y = all(s[1] >= 0 for s in steps) or all(s[1] <= 0 for s in steps)
    if mono_x and mono_y:
        if abs(dx) >= MOVE_MIN * S and abs(dy) <= 0.3 * abs(dx):
            return "left" if dx < 0 else "right"
        if abs(dy) >= MOVE_MIN * S and abs(dx) <= 0.3 * abs(dy):
            return "up" if dy < 0 else "down"
    return None


def _locate_frame(objs, loc, k, S):
    m = LOC_MARGIN * S
    winners = []
    for axis in loc:
        if axis == "left":
            scores = [-o.centres[k][0] for o in objs]
        elif axis == "right":
            scores = [o.centres[k][0] for o in objs]
        elif axis == "top":
            scores = [-o.centres[k][1] for o in objs]
        elif axis == "bottom":
            scores = [o.centres[k][1] for o in objs]
        else:
            raise ValueError(f"unknown location {axis!r}")
        order = sorted(range(len(objs)), key=lambda i: -scores[i])
        if scores[order[0]] - scores[order[1]] < m:
            return None
        winners.append(order[0])
    if any(w != winners[0] for w in winners):
        return None
    return winners[0]


def resolve(scene: Scene, expr: Expression):
    """Indices (into ``scene.objects``) of the objects ``expr`` refers to; ``None`` if it is ill-posed.

    Ill-posed means: a landmark phrase does not pick exactly one object, or some candidate is too close
    to a decision boundary (relation, location, motion) to say whether it qualifies. An empty set means the
    expression refers to nothing (negative). Relations, locations and motions must hold in every frame.
    """
    objs, S = scene.objects, scene.size
    lm_idx = []
    for ph in expr.landmarks:
        hits = [i for i, o in enumerate(objs) if _matches(o, ph)]
        if len(hits) != 1:
            return None
        lm_idx.append(hits[0])
    cands = [i for i, o in enumerate(objs) if _matches(o, expr.target) and i not in lm_idx]
    if expr.motion is not None:
        keep = []
        for i in cands:
            label = motion_label(objs[i], S)
            if label is None:
                return None
            if label == expr.motion:
                keep.append(i)
        cands = keep
    if expr.relation is not None:
        if len(lm_idx) != (2 if expr.relation == "between" else 1):
            return None
        lms = [objs[j] for j in lm_idx]
        keep = []
        for i in cands:
            st = relation_status(objs[i], expr.relation, lms, S)
            if st is None:
                return None
            if st:
                keep.append(i)
        cands = keep
    if expr.location is not None and len(cands) >= 2:
        sub = [objs[i] for i in cands]
        won = _all_frames([_locate_frame(sub, expr.location, k, S) for k in range(scene.num_frames)])
        if won is None:
            return None
        cands = [cands[won]]
    return set(cands)


_AXIS_LOCATION = {"left": ("left",), "right": ("right",), "above": ("top",), "below": ("bottom",)}


def relation_subkind(scene: Scene, expr: Expression) -> str:
    """``"shortcut"`` if the directional relation ``expr`` picks the same object as the location phrase of its
    direction ("the circle left of the blue square" -> "the leftmost circle"), ``"decoy"`` if it does not,
    else the relation itself (``"near"``, ``"between"``)."""
    if expr.relation not in _AXIS_LOCATION:
        return expr.relation
    shortcut = resolve(scene, Expression(expr.target, location=_AXIS_LOCATION[expr.relation]))
    return "shortcut" if shortcut == resolve(scene, expr) else "decoy"


def kind_is_valid(scene: Scene, expr: Expression, kind: str, target) -> bool:
    """Whether ``expr`` refers to exactly ``target`` (index; None for negatives) AND needs what ``kind`` says.

    entity: bare shape, unique; attribute: every given colour/size is needed; relation/location/action:
    the noun phrase alone matches two or more objects.
    """
    res = resolve(scene, expr)
    if kind == "negative":
        return res == set()
    if res is None or res != {target}:
        return False
    t = expr.target
    mods = (expr.location is not None) + (expr.relation is not None) + (expr.motion is not None)
    n_np = sum(1 for o in scene.objects if _matches(o, t))
    if kind == "entity":
        return mods == 0 and t.colour is None and t.size is None
    if kind == "attribute":
        if mods or (t.colour is None and t.size is None):
            return False
        reduced = []
        if t.colour is not None:
            reduced.append(Phrase(t.shape, None, t.size))
        if t.size is not None:
            reduced.append(Phrase(t.shape, t.colour, None))
        return all(sum(1 for o in scene.objects if _matches(o, p)) >= 2 for p in reduced)
    if kind == "relation":
        return expr.relation is not None and n_np >= 2 and expr.location is None and expr.motion is None
    if kind == "location":
        return expr.location is not None and n_np >= 2 and expr.relation is None and expr.motion is None
    if kind == "action":
        return expr.motion is not None and n_np >= 2 and expr.location is None and expr.relation is None
    raise ValueError(f"unknown kind {kind!r}")


# ----------------------------------------------------------------------------------------------------------
# Text: realize and parse
# ----------------------------------------------------------------------------------------------------------
def clean_sentence(text: str) -> str:
    """Lower-case, keep letters/digits, single spaces (the refer ``sent`` field)."""
    out = "".join(ch if ch.isalnum() else " " for ch in text.lower())
    return " ".join(out.split())


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _np_words(rng, p: Phrase, pre=()):
    words = ["the", *pre]
    if p.size is not None:
        words.append(_pick(rng, SIZE_WORDS[p.size]))
    if p.colour is not None:
        words.append(_pick(rng, COLOUR_WORDS[p.colour]))
    words.append(_pick(rng, SHAPE_WORDS[p.shape]))
    return words


def realize(expr: Expression, rng, video: bool = False) -> str:
    """Render ``expr`` as a sentence (``raw`` form: may be capitalised and end with '.' or '?')."""
    t = expr.target
    pre, post = [], []
    np_phrase = t
    if expr.location is not None:
        if rng.random() < 0.5:
            pre = list(_pick(rng, LOC_PRE[expr.location]))
        else:
            conn = list(_pick(rng, CONNECTORS)) if rng.random() < 0.2 else []
            post = conn + list(_pick(rng, LOC_POST[expr.location]))
    elif expr.motion is not None:
        if expr.motion in MOTION_PRE and rng.random() < 0.3:
            pre = [_pick(rng, MOTION_PRE[expr.motion])]
        else:
            conn = list(_pick(rng, CONNECTORS)) if rng.random() < 0.4 else []
            post = conn + list(_pick(rng, MOTION_POST[expr.motion]))
    elif expr.relation is not None:
        conn = list(_pick(rng, CONNECTORS)) if rng.random() < 0.3 else []
        post = conn + list(_pick(rng, REL_PHRASES[expr.relation]))
        post += _np_words(rng, expr.landmarks[0])
        if expr.relation == "between":
            post += ["and"] + _np_words(rng, expr.landmarks[1])
    elif (t.colour is not None or t.size is not None) and rng.random() < 0.3:
        attrs = []
        if t.size is not None:
            attrs.append(_pick(rng, SIZE_WORDS[t.size]))
        if t.colour is not None:
            attrs.append(_pick(rng, COLOUR_WORDS[t.colour]))
        if len(attrs) == 2 and rng.random() < 0.5:
            attrs.reverse()
        post = list(_pick(rng, CONNECTORS)) + " and ".join(attrs).split()
        np_phrase = Phrase(t.shape)
    words = _np_words(rng, np_phrase, pre) + post
    prefix = ()
    if rng.random() < 0.35:
        prefix = _pick(rng, PREFIXES)
        words = list(prefix) + words
    if rng.random() < 0.25:
        suffixes = SUFFIXES_VIDEO if video else SUFFIXES_IMAGE
        words += list(_pick(rng, suffixes[:-1] if "please" in prefix else suffixes))
    text = " ".join(words)
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    if prefix == ("where", "is"):
        text += "?"
    elif rng.random() < 0.5:
        text += "."
    return text


def _strip(toks, table, at_end=False):
    for p in sorted(table, key=len, reverse=True):
        n = len(p)
        if len(toks) > n and (tuple(toks[-n:]) if at_end else tuple(toks[:n])) == p:
            return toks[:-n] if at_end else toks[n:]
    return toks


def _parse_np(toks, i, allow_pre):
    """Parse ``the [pre...] [size] [colour] noun`` from ``toks[i:]``; returns (next i, Phrase, loc, motion)."""
    if i >= len(toks) or toks[i] != "the":
        raise ValueError("expected 'the'")
    i += 1
    colour = size = motion = None
    loc = []
    while i < len(toks):
        w = toks[i]
        if w in _SHAPE_OF:
            return i + 1, Phrase(_SHAPE_OF[w], colour, size), tuple(loc) or None, motion
        if w in _SIZE_OF and size is None:
            size = _SIZE_OF[w]
        elif w in _COLOUR_OF and colour is None:
            colour = _COLOUR_OF[w]
        elif allow_pre and w in _LOC_WORD and not size and not colour and _LOC_WORD[w] not in loc:
            loc.append(_LOC_WORD[w])
        elif allow_pre and w in _MOTION_PRE_OF and motion is None and not size and not colour:
            motion = _MOTION_PRE_OF[w]
        else:
            raise ValueError(f"unexpected word {w!r}")
        i += 1
    raise ValueError("no shape noun")


def _match_at(toks, i, pairs):
    for p, v in pairs:
        if tuple(toks[i:i + len(p)]) == p:
            return i + len(p), v
    return None


def _norm_loc(loc):
    if loc is None:
        return None
    vert = [a for a in loc if a in ("top", "bottom")]
    hor = [a for a in loc if a in ("left", "right")]
    if len(vert) > 1 or len(hor) > 1:
        raise ValueError("contradictory location")
    return tuple(vert + hor)


def parse_expression(text: str) -> Expression:
    """Parse a sentence produced by :func:`realize` (raw or cleaned). Raises ``ValueError`` if it does not fit."""
    toks = clean_sentence(text).split()
    toks = _strip(toks, PREFIXES)
    toks = _strip(toks, SUFFIXES_IMAGE + SUFFIXES_VIDEO, at_end=True)
    i, target, loc, motion = _parse_np(toks, 0, allow_pre=True)
    relation, landmarks = None, ()
    if i < len(toks):
        for c in CONNECTORS:
            if tuple(toks[i:i + len(c)]) == c:
                i += len(c)
                break
        hit = _match_at(toks, i, _REL_MATCH)
        if hit is not None and (hit[0] < len(toks) and toks[hit[0]] == "the"):
            i, relation = hit
            i, lm, _, _ = _parse_np(toks, i, allow_pre=False)
            landmarks = (lm,)
            if relation == "between":
                if i >= len(toks) or toks[i] != "and":
                    raise ValueError("'between' needs 'and'")
                i, lm2, _, _ = _parse_np(toks, i + 1, allow_pre=False)
                landmarks = (lm, lm2)
        elif (hit := _match_at(toks, i, _MOTION_MATCH)) is not None:
            if motion is not None:
                raise ValueError("two motions")
            i, motion = hit
        elif (hit := _match_at(toks, i, _LOC_MATCH)) is not None:
            if loc is not None:
                raise ValueError("two locations")
            i, loc = hit
        else:  # post-nominal attributes: "that is red", "which is small and red"
            colour, size = target.colour, target.size
            first = True
            while i < len(toks):
                if not first:
                    if toks[i] != "and":
                        raise ValueError(f"unexpected word {toks[i]!r}")
                    i += 1
                    if i >= len(toks):
                        raise ValueError("dangling 'and'")
                w = toks[i]
                if w in _COLOUR_OF and colour is None:
                    colour = _COLOUR_OF[w]
                elif w in _SIZE_OF and size is None:
                    size = _SIZE_OF[w]
                else:
                    raise ValueError(f"unexpected word {w!r}")
                i += 1
                first = False
            target = Phrase(target.shape, colour, size)
    if i != len(toks):
        raise ValueError(f"trailing words {' '.join(toks[i:])!r}")
    loc = _norm_loc(loc)
    if (loc is not None) + (relation is not None) + (motion is not None) > 1:
        raise ValueError("more than one of location / relation / motion")
    return Expression(target, loc, relation, landmarks, motion)


# ----------------------------------------------------------------------------------------------------------
# Scene construction
# ----------------------------------------------------------------------------------------------------------
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


class _Ctx:
    def __init__(self, rng, S, K, min_objects, max_objects, relation_gap=RELATION_GAP):
        self.rng, self.S, self.K = rng, S, K
        self.relation_gap = relation_gap
        self.u = S / 128.0
        self.video = K > 1
        self.min_objects, self.max_objects = min_objects, max_objects

    def uniform(self, a, b):
        return float(self.rng.uniform(a, b))

    def pick(self, seq, exclude=()):
        opts = [x for x in seq if x not in exclude]
        return opts[int(self.rng.integers(len(opts)))]

    def offsets(self, motion):
        K, S, rng = self.K, self.S, self.rng
        if K == 1 or motion == "still":
            return [(0.0, 0.0)] * K
        if motion == "bounce":
            amp = self.uniform(0.08, 0.13) * S
            nb = 2 if K >= 6 and rng.random() < 0.5 else 1
            return [(0.0, -amp * abs(math.sin(math.pi * nb * k / (K - 1)))) for k in range(K)]
        total = self.uniform(0.10, 0.20) * S
        drift = self.uniform(-0.1, 0.1) * total
        d = {"left": (-total, drift), "right": (total, drift), "up": (drift, -total), "down": (drift, total)}[motion]
        return [(d[0] * k / (K - 1), d[1] * k / (K - 1)) for k in range(K)]

    def new(self, shape=None, colour=None, size=None, motion=None, offsets=None):
        rng = self.rng
        shape = shape or self.pick(SHAPES)
        colour = colour or self.pick(tuple(COLOURS))
        size = size or ("big" if rng.random() < 0.45 else "small")
        lo, hi = SIZE_RADIUS[size]
        radius = round(self.uniform(lo, hi) * self.u, 2)
        angle = round(self.uniform(-8, 8), 2) if shape in _ROTATES else 0.0
        gain = self.uniform(0.85, 1.1)
        rgb = tuple(float(np.clip(c * gain + rng.integers(-18, 19), 0, 255)) for c in COLOURS[colour])
        shade = (self.uniform(0, 2 * math.pi), self.uniform(5, 22))
        if offsets is not None:
            motion = motion or "still"
        else:
            motion = motion or (self.pick(MOTIONS) if self.video else "still")
            offsets = self.offsets(motion)
        return SceneObject(shape, colour, size, radius, [], motion, None, rgb, angle, shade, list(offsets))

    def set_start(self, o, x0, y0):
        o.centres = [(round(x0 + dx, 2), round(y0 + dy, 2)) for dx, dy in o.offsets]

    def bounds(self, o):
        S, pad = self.S, PAD * self.S + o.radius
        xs = [d[0] for d in o.offsets]
        ys = [d[1] for d in o.offsets]
        return (pad - min(xs), S - pad - max(xs)), (pad - min(ys), S - pad - max(ys))

    def collides(self, o, others):
        g = GAP * self.S
        for p in others:
            lim = o.radius + p.radius + g
            for (ax, ay), (bx, by) in zip(o.centres, p.centres):
                if (ax - bx) ** 2 + (ay - by) ** 2 < lim * lim:
                    return True
        return False

    def place(self, o, placed, proposal=None, accept=None, tries=60):
        (x_lo, x_hi), (y_lo, y_hi) = self.bounds(o)
        if x_lo > x_hi or y_lo > y_hi:
            return False
        for _ in range(tries):
            if proposal is None:
                x0, y0 = self.uniform(x_lo, x_hi), self.uniform(y_lo, y_hi)
            else:
                x0, y0 = proposal()
                if not (x_lo <= x0 <= x_hi and y_lo <= y0 <= y_hi):
                    continue
            self.set_start(o, x0, y0)
            if self.collides(o, placed):
                continue
            if accept is not None and not accept(o):
                continue
            placed.append(o)
            return True
        o.centres = []
        return False

    def fill(self, objs, n, forbid=None):
        while len(objs) < n:
            for _ in range(10):
                o = self.new()
                if forbid is None or not forbid(o):
                    break
            else:
                return
            if not self.place(o, objs):
                return

    def count(self):
        return int(self.rng.integers(self.min_objects, self.max_objects + 1))

    def subset_phrases(self, o):
        """The four noun phrases that describe ``o`` (shape, +colour, +size, +both), in random order."""
        ps = [Phrase(o.shape), Phrase(o.shape, o.colour), Phrase(o.shape, None, o.size),
              Phrase(o.shape, o.colour, o.size)]
        return [ps[i] for i in self.rng.permutation(4)]


def _unique_phrase(ctx, objs, o):
    """A phrase that picks exactly ``o``: minimal, sometimes with colour added; None if impossible."""
    n = lambda p: sum(1 for x in objs if _matches(x, p))
    two = [Phrase(o.shape, o.colour), Phrase(o.shape, None, o.size)]
    if ctx.rng.random() < 0.5:
        two.reverse()
    options = [Phrase(o.shape)] + two + [Phrase(o.shape, o.colour, o.size)]
    if ctx.rng.random() < 0.35:
        options = options[1:]
    for p in options:
        if n(p) == 1:
            return p
    return None


def _build_entity(ctx):
    objs = []
    t = ctx.new()
    if not ctx.place(t, objs):
        return None
    n = max(ctx.count(), 2 if ctx.max_objects >= 2 else 1)
    if n >= 2 and ctx.rng.random() < 0.8:  # same colour, other shape: colour alone does not solve it
        ctx.place(ctx.new(shape=ctx.pick(SHAPES, (t.shape,)), colour=t.colour), objs)
    ctx.fill(objs, n, forbid=lambda o: o.shape == t.shape)
    return objs, Expression(Phrase(t.shape)), t


def _build_attribute(ctx):
    rng = ctx.rng
    need = [("colour",), ("size",), ("colour", "size")][int(rng.choice(3, p=[0.4, 0.25, 0.35]))]
    if ctx.max_objects < 3:
        need = need[:1]
    t = ctx.new()
    objs = []
    if not ctx.place(t, objs):
        return None
    for a in need:  # one same-shape distractor per attribute, differing only in that attribute
        d = ctx.new(shape=t.shape,
                    colour=ctx.pick(tuple(COLOURS), (t.colour,)) if a == "colour" else t.colour,
                    size=ctx.pick(SIZES, (t.size,)) if a == "size" else t.size)
        if not ctx.place(d, objs):
            return None
    n = max(ctx.count(), len(objs) + 1)
    if len(objs) < ctx.max_objects and rng.random() < 0.8:  # same colour and size, other shape
        ctx.place(ctx.new(shape=ctx.pick(SHAPES, (t.shape,)), colour=t.colour, size=t.size), objs)
    phrase = Phrase(t.shape, t.colour if "colour" in need else None, t.size if "size" in need else None)
    ctx.fill(objs, min(n, ctx.max_objects), forbid=lambda o: _matches(o, phrase))
    return objs, Expression(phrase), t


def _build_relation(ctx):
    rng, S = ctx.rng, ctx.S
    rels = RELATIONS if ctx.max_objects >= 4 else RELATIONS[:-1]
    rel = ctx.pick(rels)
    t = ctx.new()
    shared = t.offsets if ctx.video else None  # target and landmarks move together
    lshape = ctx.pick(SHAPES, (t.shape,))
    lm = ctx.new(shape=lshape, motion=t.motion, offsets=shared)
    objs = []
    if not ctx.place(lm, objs):
        return None
    lms = [lm]
    if rel == "between":
        lm2 = ctx.new(shape=ctx.pick(SHAPES, (t.shape,)), motion=t.motion, offsets=shared)
        room = lm.radius + lm2.radius + 2 * t.radius + 4 * GAP * S
        ok = lambda o: room <= math.dist(o.centres[0], lm.centres[0]) <= 0.75 * S
        if not ctx.place(lm2, objs, accept=ok):
            return None
        lms.append(lm2)

    def proposal():
        (lx, ly) = lm.centres[0]
        rr = lm.radius + t.radius
        if rel == "near":
            a, d = ctx.uniform(0, 2 * math.pi), rr + GAP * S + ctx.uniform(0, 0.06) * S
            return lx + d * math.cos(a), ly + d * math.sin(a)
        if rel == "between":
            (mx, my) = lms[1].centres[0]
            f, j = ctx.uniform(0.4, 0.6), ctx.uniform(-0.04, 0.04) * S
            vx, vy = mx - lx, my - ly
            nrm = math.hypot(vx, vy)
            return lx + f * vx - j * vy / nrm, ly + f * vy + j * vx / nrm
        along = rr + GAP * S + ctx.uniform(*ctx.relation_gap) * S
        dx, dy = _from_axes(rel, along, ctx.uniform(-0.3, 0.3) * rr)
        return lx + dx, ly + dy

    if not ctx.place(t, objs, proposal=proposal, accept=lambda o: relation_status(o, rel, lms, S) is True, tries=80):
        return None

    def beyond(o):
        """``o`` lies further in the relation's direction than the target (in every frame)."""
        return all(_axes(rel, ox - tx, oy - ty)[0] > 0 for (ox, oy), (tx, ty) in zip(o.centres, t.centres))

    def decoy():
        """Beyond the target but clearly off the landmark's axis, so "the leftmost circle" is not the answer."""
        (lx, ly), (tx, ty) = lm.centres[0], t.centres[0]
        along = _axes(rel, tx - lx, ty - ly)[0] + ctx.uniform(0.01, 0.10) * S
        across = max(OFF_AXIS * along, lm.radius + t.radius + GAP * S) + ctx.uniform(0.01, 0.10) * S
        dx, dy = _from_axes(rel, along, across if rng.random() < 0.5 else -across)
        return lx + dx, ly + dy

    n_twins = 3 if ctx.max_objects >= len(objs) + 2 and rng.random() < 0.2 else 1
    # left/right/above/below: without a decoy the target is always the extreme twin in the relation's direction,
    # and "the leftmost circle" would answer "the circle left of the blue square" without looking at the landmark
    decoys = 1 if rel in _AXIS_LOCATION and rng.random() < DECOY_SHARE else 0
    for i in range(n_twins):  # identical twins for which the relation clearly does not hold
        d = ctx.new(shape=t.shape, colour=t.colour, size=t.size)
        d.radius, d.rgb, d.angle = t.radius, t.rgb, t.angle
        if i < decoys:
            ok = ctx.place(d, objs, proposal=decoy, tries=100,
                           accept=lambda o: beyond(o) and relation_status(o, rel, lms, S) is False)
        else:
            ok = ctx.place(d, objs, accept=lambda o: relation_status(o, rel, lms, S) is False, tries=100)
        if not ok:
            return None
    ctx.fill(objs, min(max(ctx.count(), len(objs)), ctx.max_objects))
    lphr = [_unique_phrase(ctx, objs, x) for x in lms]
    if any(p is None for p in lphr):
        return None
    for p in ctx.subset_phrases(t):
        expr = Expression(p, relation=rel, landmarks=tuple(lphr))
        if kind_is_valid(Scene(S, objs), expr, "relation", objs.index(t)):
            return objs, expr, t
    return None


def _twins(ctx, t, n, shared):
    out = []
    for _ in range(n):
        d = ctx.new(shape=t.shape, colour=t.colour, size=t.size, motion=t.motion, offsets=shared)
        d.radius, d.rgb, d.angle = t.radius, t.rgb, t.angle
        out.append(d)
    return out


def _build_location(ctx):
    rng = ctx.rng
    loc = LOCATIONS[int(rng.integers(len(LOCATIONS)))]
    t = ctx.new()
    m = 3 if ctx.max_objects >= 3 and rng.random() < 0.35 and len(loc) == 1 else 2
    objs = []
    for o in [t] + _twins(ctx, t, m - 1, t.offsets if ctx.video else None):
        if not ctx.place(o, objs):
            return None
    ctx.fill(objs, min(max(ctx.count(), len(objs)), ctx.max_objects))
    scene = Scene(ctx.S, objs)
    for p in ctx.subset_phrases(t):
        expr = Expression(p, location=loc)
        res = resolve(scene, expr)
        if res and len(res) == 1:
            (i,) = res
            if kind_is_valid(scene, expr, "location", i):
                return objs, expr, objs[i]
    return None


def _build_action(ctx):
    rng = ctx.rng
    m = 3 if ctx.max_objects >= 3 and rng.random() < 0.25 else 2
    picks = rng.permutation(len(MOTIONS))[:m]
    t = ctx.new(motion=MOTIONS[int(picks[0])])
    objs = []
    if not ctx.place(t, objs):
        return None
    for j in picks[1:]:
        d = ctx.new(shape=t.shape, colour=t.colour, size=t.size, motion=MOTIONS[int(j)])
        d.radius, d.rgb, d.angle = t.radius, t.rgb, t.angle
        if not ctx.place(d, objs):
            return None
    ctx.fill(objs, min(max(ctx.count(), len(objs)), ctx.max_objects))
    scene = Scene(ctx.S, objs)
    for p in ctx.subset_phrases(t):
        expr = Expression(p, motion=t.motion)
        if kind_is_valid(scene, expr, "action", objs.index(t)):
            return objs, expr, t
    return None


_BUILDERS = {"entity": _build_entity, "attribute": _build_attribute, "relation": _build_relation,
             "location": _build_location, "action": _build_action}


def _more_targets(ctx, objs, kind):
    """Other (expression, target index) pairs of the same kind that are well posed in this scene."""
    scene, S = Scene(ctx.S, objs), ctx.S
    cands = []
    if kind == "entity":
        cands = [(Expression(Phrase(o.shape)), i) for i, o in enumerate(objs)]
    elif kind == "attribute":
        for i, o in enumerate(objs):
            cands += [(Expression(p), i) for p in (Phrase(o.shape, o.colour), Phrase(o.shape, None, o.size),
                                                   Phrase(o.shape, o.colour, o.size))]
    elif kind == "relation":
        lphr = [_unique_phrase(ctx, objs, o) for o in objs]
        for i, o in enumerate(objs):
            for j, lp in enumerate(lphr):
                if j != i and lp is not None and objs[j].shape != o.shape:
                    for rel in RELATIONS[:-1]:
                        cands.append((Expression(ctx.subset_phrases(o)[0], relation=rel, landmarks=(lp,)), i))
    elif kind == "location":
        for i, o in enumerate(objs):
            for loc in LOCATIONS:
                cands.append((Expression(ctx.subset_phrases(o)[0], location=loc), i))
    elif kind == "action":
        for i, o in enumerate(objs):
            label = motion_label(o, S)
            if label is not None:
                cands.append((Expression(ctx.subset_phrases(o)[0], motion=label), i))
    for j in ctx.rng.permutation(len(cands)):
        expr, i = cands[int(j)]
        if kind_is_valid(scene, expr, kind, i):
            yield expr, i


def _negative_expression(ctx, objs):
    rng = ctx.rng
    for _ in range(30):
        if rng.random() < 0.6:  # hard negative: an existing shape with another colour (and maybe size)
            o = objs[int(rng.integers(len(objs)))]
            p = Phrase(o.shape, ctx.pick(tuple(COLOURS), (o.colour,)), o.size if rng.random() < 0.3 else None)
        else:
            p = Phrase(ctx.pick(SHAPES), ctx.pick(tuple(COLOURS)) if rng.random() < 0.5 else None)
        if not any(_matches(o, p) for o in objs):
            return Expression(p)
    return None


@dataclass
class _Ref:
    target: int | None   # index into the scene's objects (before shuffling is applied)
    kind: str
    expression: Expression
    sentences: list


def _pick_kind(kinds, seed, split, index, domain):
    """Kind of sample ``index``: a golden-ratio sequence over the cumulative weights, so that the shares of
    any run of consecutive indices follow the weights closely (still a function of (seed, split, index))."""
    offset = float(_sample_rng(seed, split, 0, 100 + domain).random())
    u = (offset + index * 0.6180339887498949) % 1.0
    names = list(kinds)
    cum = np.cumsum([kinds[k] for k in names], dtype=float)
    return names[min(int(np.searchsorted(cum / cum[-1], u, side="right")), len(names) - 1)]


def _build_scene(ctx, kind, n_expr, negative):
    """Scene objects (shuffled) and refs: a designed first ref, more targets of the same kind, paraphrases."""
    for _attempt in range(400):
        built = _BUILDERS[kind](ctx)
        if built is None:
            continue
        objs, expr, t = built
        if len(objs) < ctx.min_objects:
            continue
        ti = objs.index(t)
        if kind_is_valid(Scene(ctx.S, objs), expr, kind, ti):
            break
    else:  # pragma: no cover - the builders succeed within a few attempts
        raise RuntimeError(f"could not build a {kind} scene")
    order = [int(i) for i in ctx.rng.permutation(len(objs))]   # written order must not reveal the target
    objs = [objs[i] for i in order]
    ti = objs.index(t)
    video = ctx.video
    refs = [_Ref(ti, kind, expr, [realize(expr, ctx.rng, video)])]
    n_sent = 1
    more = _more_targets(ctx, objs, kind) if n_expr > 1 else iter(())
    while n_sent < n_expr:
        nxt = next((p for p in more if all(r.target != p[1] for r in refs)), None)
        if nxt is not None:
            refs.append(_Ref(nxt[1], kind, nxt[0], [realize(nxt[0], ctx.rng, video)]))
        else:  # paraphrase of an existing ref
            r = refs[int(ctx.rng.integers(len(refs)))]
            for _ in range(6):
                s = realize(r.expression, ctx.rng, video)
                if all(clean_sentence(s) != clean_sentence(x) for x in r.sentences):
                    r.sentences.append(s)
                    break
        n_sent += 1
    if negative > 0 and ctx.rng.random() < negative:
        neg = _negative_expression(ctx, objs)
        if neg is not None:
            refs.append(_Ref(None, "negative", neg, [realize(neg, ctx.rng, video)]))
    return objs, refs


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------
# In-memory samples
# ----------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------
# Parameters, atomic output folders, stamps
# ----------------------------------------------------------------------------------------------------------
IMAGE_DEFAULTS = dict(seed=0, image_size=128, splits={"train": 2000, "val": 200, "test": 400},
                      kinds={"entity": 1, "attribute": 1, "relation": 1, "location": 1},
                      min_objects=2, max_objects=6, expressions_per_image=(1, 3), negative=0.0,
                      relation_gap=RELATION_GAP, segmentation="polygon")
VIDEO_DEFAULTS = dict(seed=0, image_size=128, num_frames=8, splits={"train": 600, "valid": 150},
                      kinds={"entity": 1, "attribute": 1, "relation": 1, "location": 1, "action": 1},
                      min_objects=2, max_objects=5, expressions_per_video=(1, 3), negative=0.0,
                      relation_gap=RELATION_GAP)
MARKER = ".cmpc-synthetic"
STAMP = "COMPLETE.json"
FRAME_STEP = 5


def _check_int(name, v, lo, hi=None):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        rng = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"synthetic benchmark: {name}={v!r} must be an integer {rng}; fix the value")
    return int(v)


def _normalise(params, defaults, video):
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(f"synthetic benchmark: unknown parameter(s) {unknown}; allowed: {sorted(defaults)}")
    p = {**defaults, **{k: v for k, v in params.items() if v is not None}}
    p["seed"] = _check_int("seed", p["seed"], 0)
    p["image_size"] = _check_int("image_size", p["image_size"], 64, 1024)
    p["min_objects"] = _check_int("min_objects", p["min_objects"], 1, 8 if video else 10)
    p["max_objects"] = _check_int("max_objects", p["max_objects"], p["min_objects"], 8 if video else 10)
    if video:
        p["num_frames"] = _check_int("num_frames", p["num_frames"], 4, 64)
    splits = p["splits"]
    if not isinstance(splits, dict) or not splits:
        raise ConfigError("synthetic benchmark: splits must be a mapping like {'train': 2000, 'val': 200}")
    p["splits"] = {}
    for name, n in dict(splits).items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"synthetic benchmark: split name {name!r} must be a plain word like 'train'")
        p["splits"][name] = _check_int(f"splits[{name!r}]", n, 0, 10**6)
    allowed = KINDS[:5] if video else IMAGE_KINDS
    kinds = dict(p["kinds"])
    bad = sorted(set(kinds) - set(allowed))
    if bad:
        hint = " ('negative' is set with negative=<share>)" if "negative" in bad else ""
        raise ConfigError(f"synthetic benchmark: unknown kind(s) {bad} for {'videos' if video else 'images'}; "
                          f"use {list(allowed)}{hint}")
    kinds = {k: float(v) for k, v in kinds.items() if float(v) > 0}
    if not kinds or any(not math.isfinite(v) for v in kinds.values()):
        raise ConfigError("synthetic benchmark: kinds needs at least one positive finite weight")
    if "relation" in kinds and p["max_objects"] < 3:
        raise ConfigError("synthetic benchmark: relation expressions need max_objects >= 3; "
                          "raise it or drop 'relation'")
    if p["max_objects"] < 2 and set(kinds) - {"entity"}:
        raise ConfigError("synthetic benchmark: attribute/location/action need max_objects >= 2; raise it")
    p["kinds"] = {k: kinds[k] for k in allowed if k in kinds}
    key = "expressions_per_video" if video else "expressions_per_image"
    e = p[key]
    if isinstance(e, (int, np.integer)):
        e = (e, e)
    if not isinstance(e, (list, tuple)) or len(e) != 2:
        raise ConfigError(f"synthetic benchmark: {key} must be (min, max), e.g. (1, 3)")
    lo = _check_int(key, e[0], 1, 20)
    p[key] = [lo, _check_int(key, e[1], lo, 20)]
    neg = p["negative"]
    if not isinstance(neg, (int, float)) or not 0.0 <= float(neg) <= 1.0:
        raise ConfigError(f"synthetic benchmark: negative={neg!r} must be a probability in [0, 1]")
    p["negative"] = float(neg)
    g = p["relation_gap"]
    if (not isinstance(g, (list, tuple)) or len(g) != 2 or not all(isinstance(v, (int, float)) for v in g)
            or not 0.0 <= g[0] <= g[1] <= 0.6):
        raise ConfigError(f"synthetic benchmark: relation_gap={g!r} must be [min, max] with 0 <= min <= max <= 0.6 "
                          "(fractions of the image side)")
    p["relation_gap"] = [float(g[0]), float(g[1])]
    if not video and p["segmentation"] not in ("polygon", "rle"):
        raise ConfigError(f"synthetic benchmark: segmentation={p['segmentation']!r} must be 'polygon' or 'rle'")
    p["version"] = GENERATOR_VERSION
    return p


def _read_stamp(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_temps(root):
    for p in root.parent.glob(f".{root.name}.tmp-*"):
        try:
            pid = int(p.name.rsplit(".tmp-", 1)[1].split("-")[0])
        except (ValueError, IndexError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _check_replaceable(root):
    if root.exists():
        if not root.is_dir():
            raise ConfigError(f"synthetic benchmark: {root} is a file; pass another root or delete it")
        if any(root.iterdir()) and not (root / MARKER).exists():
            raise ConfigError(f"synthetic benchmark: {root} exists and is not a cmpc synthetic benchmark; "
                              "pass an empty or new folder as root")


def _atomic_generate(root, stamp_rel, params, writer, progress):
    root = Path(root).absolute()
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    tmp.mkdir()
    try:
        (tmp / MARKER).write_text("cmpc synthetic benchmark; regenerated by cmpc.data.synthetic\n")
        writer(tmp, params, progress)
        stamp = tmp / stamp_rel
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"generator": "cmpc.data.synthetic", "params": params}, indent=1) + "\n")
        old = None
        if root.exists():
            _check_replaceable(root)
            old = root.parent / f".{root.name}.old-{os.getpid()}-{os.urandom(4).hex()}"
            os.rename(root, old)
        try:
            os.rename(tmp, root)
        except OSError:
            other = _read_stamp(root / stamp_rel)  # a concurrent generator won the race
            if other is None or other.get("params") != params:
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _jpeg_bytes(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def _dump_json(obj, path, compact=True):
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=1)
    with open(path, "w", encoding="utf-8") as f:  # dumps (one shot) uses the C encoder, dump does not
        f.write(text)


def _bar(iterable, total, desc, progress):
    if not progress:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="img", leave=True)


def _write_images(out, p, progress):
    S = p["image_size"]
    ddir, idir = out / "synthetic", out / "images" / "synthetic"
    ddir.mkdir(parents=True)
    idir.mkdir(parents=True)
    images, anns, refs, kinds, scenes = [], [], [], {}, {}
    img_id = ann_id = ref_id = sent_id = 0
    gen = dict(image_size=S, kinds=p["kinds"], min_objects=p["min_objects"], max_objects=p["max_objects"],
               expressions_per_image=tuple(p["expressions_per_image"]), negative=p["negative"],
               relation_gap=tuple(p["relation_gap"]))
    for split, count in p["splits"].items():
        for index in _bar(range(count), count, f"synthetic images {split}", progress):
            s = generate_image_sample(p["seed"], split, index, **gen)
            img_id += 1
            file_name = f"synthetic_{split}_{index:06d}.jpg"
            (idir / file_name).write_bytes(_jpeg_bytes(s.image))
            images.append({"id": img_id, "file_name": file_name, "height": S, "width": S})
            ids, sobjs = [], []
            for o, m, poly in zip(s.scene.objects, s.masks, s.polygons):
                ann_id += 1
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                if p["segmentation"] == "rle":
                    seg = {"size": [S, S], "counts": rle["counts"].decode("ascii")}
                else:
                    seg = [poly]
                bbox = [float(v) for v in mask_utils.toBbox(rle)]
                anns.append({"id": ann_id, "image_id": img_id, "category_id": SHAPES.index(o.shape) + 1,
                             "segmentation": seg, "bbox": bbox, "area": float(m.sum()), "iscrowd": 0})
                ids.append(ann_id)
                sobjs.append({"ann_id": ann_id, **o.to_json()})
            for r in s.refs:
                sents = []
                for raw in r.sentences:
                    sent = clean_sentence(raw)
                    sents.append({"tokens": sent.split(), "raw": raw, "sent_id": sent_id, "sent": sent})
                    kinds[str(sent_id)] = r.kind
                    sent_id += 1
                refs.append({"ref_id": ref_id, "ann_id": ids[r.target] if r.target is not None else -1,
                             "image_id": img_id, "category_id": SHAPES.index(r.expression.target.shape) + 1,
                             "split": split, "file_name": file_name,
                             "sent_ids": [x["sent_id"] for x in sents], "sentences": sents, "kind": r.kind})
                ref_id += 1
            scenes[str(img_id)] = {"split": split, "file_name": file_name, "size": S, "objects": sobjs}
    cats = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    info = {"description": "cmpc synthetic referring segmentation benchmark", "version": GENERATOR_VERSION}
    _dump_json({"info": info,
                "images": images, "annotations": anns, "categories": cats}, ddir / "instances.json")
    with open(ddir / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    _dump_json(kinds, ddir / "kinds.json")
    _dump_json(scenes, ddir / "scenes.json")


def _palette():
    pal = [0, 0, 0]
    for i in range(1, 256):  # PASCAL VOC style colour map
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


_PNG_PALETTE = _palette()


def _png_bytes(lab):
    im = Image.frombytes("P", (lab.shape[1], lab.shape[0]), np.ascontiguousarray(lab).tobytes())
    im.putpalette(_PNG_PALETTE)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _write_videos(out, p, progress):
    K = p["num_frames"]
    frames = [f"{FRAME_STEP * k:05d}" for k in range(K)]
    kinds, scenes = {}, {}
    gen = dict(image_size=p["image_size"], num_frames=K, kinds=p["kinds"], min_objects=p["min_objects"],
               max_objects=p["max_objects"], expressions_per_video=tuple(p["expressions_per_video"]),
               negative=p["negative"], relation_gap=tuple(p["relation_gap"]))
    for split, count in p["splits"].items():
        jdir, adir, edir = out / split / "JPEGImages", out / split / "Annotations", out / "meta_expressions" / split
        for d in (jdir, adir, edir):
            d.mkdir(parents=True)
        meta, mexp = {}, {}
        for index in _bar(range(count), count, f"synthetic videos {split}", progress):
            s = generate_video_sample(p["seed"], split, index, **gen)
            vid = f"{split}_{index:05d}"
            (jdir / vid).mkdir()
            (adir / vid).mkdir()
            for name, fr, lab in zip(frames, s.frames, s.labels):
                (jdir / vid / f"{name}.jpg").write_bytes(_jpeg_bytes(fr))
                (adir / vid / f"{name}.png").write_bytes(_png_bytes(lab))
            meta[vid] = {"objects": {str(i + 1): {"category": o.shape, "frames": list(frames)}
                                     for i, o in enumerate(s.scene.objects)}}
            exps, vk = {}, {}
            for r in s.refs:
                for raw in r.sentences:
                    eid = str(len(exps))
                    oid = str(r.target + 1) if r.target is not None else "-1"
                    exps[eid] = {"exp": clean_sentence(raw), "obj_id": oid}
                    vk[eid] = r.kind
            mexp[vid] = {"expressions": exps, "frames": list(frames)}
            kinds[vid] = vk
            scenes[vid] = {"split": split, "size": p["image_size"],
                           "objects": [{"obj_id": str(i + 1), **o.to_json()} for i, o in enumerate(s.scene.objects)]}
        _dump_json({"videos": meta}, out / split / "meta.json")
        _dump_json({"videos": mexp}, edir / "meta_expressions.json")
    _dump_json(kinds, out / "kinds.json")
    _dump_json(scenes, out / "scenes.json")


def generate_image_benchmark(root, *, seed=0, image_size=128, splits=None, kinds=None, min_objects=2,
                             max_objects=6, expressions_per_image=(1, 3), negative=0.0, relation_gap=RELATION_GAP,
                             segmentation="polygon", progress=True) -> Path:
    """Write the image benchmark in the refer layout under ``root`` (replacing an older one); returns ``root``.

    ``splits`` (default ``{"train": 2000, "val": 200, "test": 400}``) counts images; ``kinds`` (default the four
    image kinds, weight 1 each) weights the kind of each image's expressions; ``negative`` is the probability
    that an image also gets one expression about an absent object (``ann_id`` -1, empty target);
    ``relation_gap`` (fractions of the side) is the range of the extra distance between a left/right/above/below
    target and its landmark.
    Files: ``root/synthetic/{instances.json, refs(unc).p, kinds.json, scenes.json, COMPLETE.json}`` and
    ``root/images/synthetic/*.jpg``.
    """
    p = _normalise(dict(seed=seed, image_size=image_size, splits=splits, kinds=kinds, min_objects=min_objects,
                        max_objects=max_objects, expressions_per_image=expressions_per_image, negative=negative,
                        relation_gap=relation_gap, segmentation=segmentation), IMAGE_DEFAULTS, video=False)
    return _atomic_generate(root, Path("synthetic") / STAMP, p, _write_images, progress)


def generate_video_benchmark(root, *, seed=0, image_size=128, num_frames=8, splits=None, kinds=None, min_objects=2,
                             max_objects=5, expressions_per_video=(1, 3), negative=0.0, relation_gap=RELATION_GAP,
                             progress=True) -> Path:
    """Write the video benchmark in the Refer-YouTube-VOS layout under ``root``; returns ``root``.

    ``splits`` (default ``{"train": 600, "valid": 150}``) counts clips of ``num_frames`` frames named
    "00000", "00005", ...; every frame has a palette PNG annotation; the centre frame (index K//2) is the one to
    train on. Side files ``root/kinds.json`` ({vid: {exp_id: kind}}), ``root/scenes.json``, ``root/COMPLETE.json``.
    """
    p = _normalise(dict(seed=seed, image_size=image_size, num_frames=num_frames, splits=splits, kinds=kinds,
                        min_objects=min_objects, max_objects=max_objects, expressions_per_video=expressions_per_video,
                        negative=negative, relation_gap=relation_gap), VIDEO_DEFAULTS, video=True)
    return _atomic_generate(root, Path(STAMP), p, _write_videos, progress)


def _ensure(root, params, defaults, video, stamp_rel, generate):
    progress = params.pop("progress", True)
    p = _normalise(dict(params), defaults, video)
    stamp = _read_stamp(Path(root) / stamp_rel)
    if stamp is not None and json.dumps(stamp.get("params")) == json.dumps(p):  # order matters (split order = ids)
        return Path(root).absolute()
    return generate(root, **params, progress=progress)


def ensure_image_benchmark(root, **params) -> Path:
    """Return ``root`` if it holds a complete image benchmark made with these params, else (re)generate it."""
    return _ensure(root, params, IMAGE_DEFAULTS, False, Path("synthetic") / STAMP, generate_image_benchmark)


def ensure_video_benchmark(root, **params) -> Path:
    """Return ``root`` if it holds a complete video benchmark made with these params, else (re)generate it."""
    return _ensure(root, params, VIDEO_DEFAULTS, True, Path(STAMP), generate_video_benchmark)


# ----------------------------------------------------------------------------------------------------------
# Reading back, statistics
# ----------------------------------------------------------------------------------------------------------
def _load_json(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing; (re)generate with scripts/make_synthetic.py --root ...") from None
    except ValueError as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); delete the folder and regenerate it") from None


def load_image_scenes(root) -> dict:
    """{image_id: Scene} from ``root/synthetic/scenes.json`` (object ``oid`` = ann_id)."""
    data = _load_json(Path(root) / "synthetic" / "scenes.json")
    return {int(k): scene_from_json([{**o, "oid": o["ann_id"]} for o in v["objects"]], v["size"])
            for k, v in data.items()}


def load_video_scenes(root) -> dict:
    """{video_id: Scene} from ``root/scenes.json`` (object ``oid`` = obj_id string)."""
    data = _load_json(Path(root) / "scenes.json")
    return {k: scene_from_json([{**o, "oid": o["obj_id"]} for o in v["objects"]], v["size"]) for k, v in data.items()}


def benchmark_statistics(root) -> list:
    """Per-split counts for a generated benchmark (image or video layout, detected from the files)."""
    root = Path(root)
    rows = []
    if (root / "synthetic" / "instances.json").exists():
        inst = _load_json(root / "synthetic" / "instances.json")
        try:
            with open(root / "synthetic" / "refs(unc).p", "rb") as f:
                refs = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError) as e:
            raise DatasetError(f"cannot read refs(unc).p under {root} ({e}); "
                               "delete the folder and regenerate it") from None
        kinds = _load_json(root / "synthetic" / "kinds.json")
        img_split = {}
        for r in refs:
            img_split[r["image_id"]] = r["split"]
        n_obj = {}
        for a in inst["annotations"]:
            n_obj[a["image_id"]] = n_obj.get(a["image_id"], 0) + 1
        for split in dict.fromkeys(r["split"] for r in refs):
            ids = [i for i, s in img_split.items() if s == split]
            row = {"split": split, "images": len(ids), "objects": sum(n_obj.get(i, 0) for i in ids),
                   "refs": sum(1 for r in refs if r["split"] == split)}
            sids = [sid for r in refs if r["split"] == split for sid in r["sent_ids"]]
            row["expressions"] = len(sids)
            for k in KINDS:
                row[k] = sum(1 for sid in sids if kinds[str(sid)] == k)
            rows.append(row)
        return rows
    if (root / "meta_expressions").is_dir():
        kinds = _load_json(root / "kinds.json")
        for edir in sorted((root / "meta_expressions").iterdir()):
            split = edir.name
            mexp = _load_json(edir / "meta_expressions.json")["videos"]
            meta = _load_json(root / split / "meta.json")["videos"]
            row = {"split": split, "videos": len(mexp), "frames": sum(len(v["frames"]) for v in mexp.values()),
                   "objects": sum(len(v["objects"]) for v in meta.values()),
                   "expressions": sum(len(v["expressions"]) for v in mexp.values())}
            for k in KINDS:
                row[k] = sum(1 for vid in mexp for e in kinds[vid].values() if e == k)
            rows.append(row)
        order = {"train": 0, "val": 1, "valid": 1, "test": 2}
        return sorted(rows, key=lambda r: (order.get(r["split"], 3), r["split"]))
    raise DatasetError(f"{root} holds no synthetic benchmark; "
                       f"generate one with scripts/make_synthetic.py --root {root}")


def format_statistics(rows) -> str:
    """Markdown table of :func:`benchmark_statistics` rows (kind columns that are all zero are dropped)."""
    if not rows:
        return ""
    cols = [c for c in rows[0] if c not in KINDS] + [k for k in KINDS if any(r.get(k) for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)
