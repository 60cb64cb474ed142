"""Scenes and expressions: the objects of an image or clip (:class:`SceneObject`, :class:`Scene`), the structured
referring expression (:class:`Phrase`, :class:`Expression`), and the geometry constants that decide when a relation,
location or motion holds (fractions of the image side S).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Geometry constants, as fractions of the image side S.
PAD = 0.02           # objects keep this far from the border
GAP = 0.03           # minimum gap between the bounding circles of two objects
LOC_MARGIN = 0.05    # "leftmost" needs a lead of this much over the runner-up
NEAR_TRUE, NEAR_FALSE = 0.10, 0.25        # edge distances for "next to" / clearly not next to
BETWEEN_D_TRUE, BETWEEN_D_FALSE = 0.10, 0.30
OFF_AXIS = 1.0       # "left of" is false for an object whose offset across is >= its offset along
                     # (and clears the landmark)
# share of left/right/above/below scenes whose twin lies beyond the target (see builders._build_relation)
DECOY_SHARE = 0.8
RELATION_GAP = (0.0, 0.15)  # default range of the extra target-landmark distance of left/right/above/below
MOVE_MIN = 0.05      # net displacement for "moving left" etc.
STILL_MAX = 0.01     # path length under which an object is "standing still"


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
