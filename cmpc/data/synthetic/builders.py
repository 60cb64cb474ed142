"""Scene builders: one per kind of expression, each places a target, the look-alikes and landmarks that make
that kind necessary, and fillers; :func:`_build_scene` adds more targets of the same kind, paraphrases and an
optional negative expression, then shuffles the objects so that their order never reveals the target.

All randomness comes from the context's generator (``_Ctx.rng``), in a fixed order: changing the order of
draws changes every generated file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .resolver import _AXIS_LOCATION, _axes, _from_axes, _matches, kind_is_valid, motion_label, relation_status, resolve
from .scene import DECOY_SHARE, GAP, OFF_AXIS, PAD, RELATION_GAP, Expression, Phrase, Scene, SceneObject
from .sentences import clean_sentence, realize
from .shapes import _ROTATES
from .vocabulary import COLOURS, LOCATIONS, MOTIONS, RELATIONS, SHAPES, SIZE_RADIUS, SIZES


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
    def n(p):
        return sum(1 for x in objs if _matches(x, p))
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
        def ok(o):
            return room <= math.dist(o.centres[0], lm.centres[0]) <= 0.75 * S
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
