"""Sentences: :func:`realize` writes an :class:`~.scene.Expression` as varied text (prefixes, connectors,
post-nominal attributes, capitalisation, punctuation) and :func:`parse_expression` reads such text back.
"""
from __future__ import annotations

from .scene import Expression, Phrase
from .vocabulary import (
    _COLOUR_OF,
    _LOC_MATCH,
    _LOC_WORD,
    _MOTION_MATCH,
    _MOTION_PRE_OF,
    _REL_MATCH,
    _SHAPE_OF,
    _SIZE_OF,
    COLOUR_WORDS,
    CONNECTORS,
    LOC_POST,
    LOC_PRE,
    MOTION_POST,
    MOTION_PRE,
    PREFIXES,
    REL_PHRASES,
    SHAPE_WORDS,
    SIZE_WORDS,
    SUFFIXES_IMAGE,
    SUFFIXES_VIDEO,
)


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
