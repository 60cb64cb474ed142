"""Grammar tables of the synthetic benchmark: the words for shapes, colours, sizes, relations, locations and
motions, the kinds of expression, and the phrase tables that :mod:`.sentences` writes and reads back.

Every tuple is an alternative spelling; a table maps a meaning (``"left"``, ``("top", "right")``) to its spellings.
"""
from __future__ import annotations

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
