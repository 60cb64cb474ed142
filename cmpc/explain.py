"""What CMPC did with a sentence in one forward pass: the RAR graphs (eq. 9) of every visual level.

The word types (eq. 1) are part of every model output (``out["word_probs"]``); the graph ``A = B1 B2`` of
Relation-Aware Reasoning is not (the fast path never builds it), so :func:`capture_reasoning` records the
inputs of each level's :class:`~cmpc.models.relation.RelationAwareReasoning` during a forward and
:func:`reasoning_graphs` rebuilds ``A`` from them with the module's own explicit path
(:meth:`~cmpc.models.relation.RelationAwareReasoning.adjacency`). :func:`outgoing_attention` is a row of
``A`` averaged over a region, the quantity of the paper's figure 9 ("where the referent sends its
messages"). Used by ``benchmarks/rar_attention.py`` and the web demo (:mod:`cmpc.demo`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

__all__ = ["capture_reasoning", "cell_cover", "outgoing_attention", "reasoning_graphs"]


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
