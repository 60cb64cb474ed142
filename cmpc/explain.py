"""What CMPC did with a sentence in one forward pass: the word types (eq. 1) and the RAR graphs (eq. 9) of every
visual level.

The word types are part of every model output (``out["word_probs"]``, left-padded): :func:`sentence_words` keeps
the rows of the words read and :func:`word_type_chart` draws them as the paper's figure 5. The graph ``A = B1 B2`` of
Relation-Aware Reasoning is not (the fast path never builds it), so :func:`capture_reasoning` records the
inputs of each level's :class:`~cmpc.models.relation.RelationAwareReasoning` during a forward and
:func:`reasoning_graphs` rebuilds ``A`` from them with the module's own explicit path
(:meth:`~cmpc.models.relation.RelationAwareReasoning.adjacency`). :func:`outgoing_attention` is a row of
``A`` averaged over a region, the quantity of the paper's figure 9 ("where the referent sends its
messages"). Used by ``benchmarks/rar_attention.py``, the web demo (:mod:`cmpc.demo`) and the pictures that end
a training run (:mod:`cmpc.engine.report_pictures`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cmpc.data.text import UNK_ID, tokenize
from cmpc.viz import word_type_bars, word_type_panels

__all__ = [
    "SentenceWords", "capture_reasoning", "cell_cover", "outgoing_attention", "read_words", "reasoning_graphs",
    "sentence_words", "word_type_chart", "word_type_rows", "word_types_figure",
]


# -- word types (eq. 1) ------------------------------------------------------------------------------------
@dataclass
class SentenceWords:
    """The sentence as the model reads it: ``words`` (the first ``max_words`` tokens), ``known[i]`` (False: read
    as ``<unk>``), the classifier's type names and ``probs [len(words), n_types]`` (eq. 1; None without one)."""

    words: list[str]
    known: list[bool]
    types: tuple[str, ...]
    probs: np.ndarray | None


def read_words(vocab, sentence: str, max_words: int) -> tuple[torch.Tensor, list[str], list[bool]]:
    """``(token ids [max_words] left-padded, words, known)``: what the model reads of ``sentence`` (its first
    ``max_words`` tokens; ``known[i]`` False for a word read as ``<unk>``). Raises ``DatasetError`` for a sentence
    without words (:meth:`cmpc.data.text.Vocabulary.encode`)."""
    words = tokenize(sentence or "")[:max_words]
    tokens = vocab.encode(sentence, max_words)
    known = [i != UNK_ID for i in tokens[max_words - len(words):].tolist()]
    return tokens, words, known


def sentence_words(words: Sequence[str], known: Sequence[bool], types: Sequence[str],
                   word_probs: torch.Tensor | None) -> SentenceWords:
    """The word types of one sentence: ``word_probs [1, T, n_types]`` (the model's left-padded output for a batch
    of one, or None for a model without a word classifier) cut to one row per word of ``words``."""
    probs = None
    if word_probs is not None:
        rows = word_probs[0].float().cpu().numpy()
        probs = rows[len(rows) - len(words):]
    return SentenceWords(list(words), list(known), tuple(types), probs)


def _labels(words: SentenceWords) -> list[str]:
    return [w if k else f"{w}*" for w, k in zip(words.words, words.known)]


def word_type_chart(words: SentenceWords, title: str | None = None) -> np.ndarray | None:
    """Stacked bars of each word's type distribution (eq. 1, the paper's figure 5) as RGB; None for a model
    without a classifier. Words outside the vocabulary carry a ``*``."""
    if words.probs is None:
        return None
    return word_type_bars(_labels(words), words.probs, words.types, title=title)


def word_types_figure(sentences: Sequence[tuple[SentenceWords, str | None]]) -> np.ndarray | None:
    """:func:`word_type_chart` of several ``(words, title)`` sentences (their classifier's types must agree) in one
    figure, one under the other; None when there are none or their model has no word classifier."""
    if not sentences or any(words.probs is None for words, _ in sentences):
        return None
    return word_type_panels([(_labels(words), words.probs, title) for words, title in sentences], sentences[0][0].types)


def word_type_rows(words: SentenceWords) -> list[list]:
    """Table rows ``[word, p_type1, ...]`` (probabilities rounded to 3 decimals); empty without a classifier."""
    if words.probs is None:
        return []
    return [[label, *(round(float(p), 3) for p in row)] for label, row in zip(_labels(words), words.probs)]


# -- relation-aware reasoning (eq. 9) ----------------------------------------------------------------------


@contextmanager
def capture_reasoning(model) -> Iterator[dict[str, tuple]]:
    """Record the RAR inputs of every level during forwards inside the ``with`` block.

    Yields a dict ``{level name (model.level_names, e.g. "res5"): (multimodal [B, C, h, w], relation words
    [B, T, C_l], word mask [B, T])}``, overwritten by each forward; levels without RAR never appear. Works for
    CMPC-I and CMPC-V (whose RAR sees the centre frame). The hooks are removed on leaving the block.
    """
    captured: dict[str, tuple] = {}
    handles = [
        level.reasoning.register_forward_pre_hook(lambda m, args, name=name: captured.__setitem__(name, args))
        for name, level in zip(model.level_names, model.levels)
        if level.reasoning is not None
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def reasoning_graphs(model, captured: dict[str, tuple]) -> dict[str, tuple[torch.Tensor, tuple[int, int]]]:
    """``{level: (A [B, N, N], (h, w))}``: the explicit RAR adjacency (eq. 9, rows sum to 1) of each captured
    level and the grid of its N = h * w positions (row-major), on the CPU."""
    levels = dict(zip(model.level_names, model.levels))
    graphs = {}
    for name, args in captured.items():
        grid = tuple(int(s) for s in args[0].shape[-2:])
        graphs[name] = (levels[name].reasoning.adjacency(*args).float().cpu(), grid)
    return graphs


def cell_cover(masks: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """Fraction of each cell of an ``h x w`` grid covered by the union of ``masks`` (each ``[S, S]``, the
    letterboxed input frame), flattened row-major: ``[h * w]`` floats in [0, 1]."""
    union = torch.stack([torch.as_tensor(m, dtype=torch.float32) for m in masks]).amax(dim=0)[None, None]
    return F.adaptive_avg_pool2d(union, tuple(size)).flatten()


def outgoing_attention(adjacency: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """The rows of ``adjacency`` (``[N, N]``, rows summing to 1) averaged with weights ``source`` (``[N]``,
    e.g. :func:`cell_cover` of the referent): where the region sends its edge mass, ``[N]`` summing to 1.

    Raises ``ValueError`` when ``source`` has no positive weight (an empty region sends nothing)."""
    total = source.sum()
    if not total > 0:
        raise ValueError("outgoing_attention needs a source region with positive weight (the region is empty)")
    return source.to(adjacency.dtype) @ adjacency / total
