"""The resolver: which objects of a :class:`~.scene.Scene` an :class:`~.scene.Expression` refers to.

Relations, locations and motions are three-valued per frame (True, False, or None = too close to the boundary
to call); an expression is ill-posed (``resolve`` returns ``None``) when any candidate is unclear, so every
written expression has exactly one answer. :func:`kind_is_valid` adds what each kind must need (e.g. a relation
expression whose noun phrase alone matches two or more objects).
"""
from __future__ import annotations

import math

from .scene import (
    BETWEEN_D_FALSE,
    BETWEEN_D_TRUE,
    GAP,
    LOC_MARGIN,
    MOVE_MIN,
    NEAR_FALSE,
    NEAR_TRUE,
    OFF_AXIS,
    STILL_MAX,
    Expression,
    Phrase,
    Scene,
    SceneObject,
)


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


def shortcut_chance(scene: Scene, expr: Expression) -> float | None:
    """Chance (0-1) that the best answer which skips what the expression's kind needs picks its target.

    - Relation, left/right/above/below: the location phrase of that direction, without the landmark ("the circle
      left of the blue square" -> "the leftmost circle"): 1 if that picks the target (:func:`relation_subkind`
      ``"shortcut"``), else 0 (a decoy twin lies further in that direction).
    - Relation, next to / between, and location: one of the noun phrase's matches at random ("the circle", the
      landmark or the position words ignored): 1 / their number.
    - Other kinds (entity, attribute, action, negative): ``None`` (no such shortcut).
    With perfect masks the objects never overlap, so this is also the shortcut's prec@0.5 (docs/synthetic.md).
    """
    if expr.relation is not None and expr.relation in _AXIS_LOCATION:
        return 1.0 if relation_subkind(scene, expr) == "shortcut" else 0.0
    if expr.relation is None and expr.location is None:
        return None
    look_alikes = sum(1 for o in scene.objects if _matches(o, expr.target))
    return 1.0 / look_alikes if look_alikes else 0.0


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
