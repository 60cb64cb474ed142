"""Relation-Aware Reasoning, paper 3.1.3, eqs. 5-10.

A graph over the N = H x W positions of the multimodal map, whose edges are routed through the
relational words: ``B = (M~ W5)(R W6)^T`` (eq. 6) with ``r_t = p_rel_t l_t`` (eq. 5),
``B1 = softmax_T(B)`` (eq. 7), ``B2 = softmax_N(B^T)`` (eq. 8), ``A = B1 B2`` (eq. 9) and
``g`` graph convolutions ``M- = (A + I) M~ W7`` (eq. 10).

Fast path (default): ``A`` is never materialised; ``A M~ = B1 (B2 M~)`` costs O(N T C) time and
O(N T) memory instead of O(N^2 C) and O(N^2). The explicit path builds ``A`` for reference and
visualisation (``adjacency()``); both agree to float tolerance (tests).

Choices the paper leaves open (docs/model.md): the affinity is scaled by 1/sqrt(C) as in the
released code; padding words get no attention; each graph convolution is followed by LayerNorm
and ReLU (needed to stack g > 1 layers), all layers share the adjacency built from the first
layer's vertices, and the output is L2-normalised over channels like the released code.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cmpc.errors import check_choice
from cmpc.models.functional import l2_normalize, masked_softmax

RAR_PATHS = ("fast", "explicit")  # model.rar_path: how A M (eq. 10) is computed


class RelationAwareReasoning(nn.Module):
    def __init__(self, dim: int, word_dim: int, layers: int = 1, path: str = "fast"):
        super().__init__()
        check_choice("model.rar_path", path, RAR_PATHS)
        self.path = path
        self.vertex = nn.Linear(dim, dim)  # M -> M~ (the "linear layer" of 3.1.3)
        self.vertex_key = nn.Linear(dim, dim, bias=False)  # W5
        self.word_key = nn.Linear(word_dim, dim, bias=False)  # W6
        self.gcn = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(layers))  # W7 per layer
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))

    def attention(self, vertices: torch.Tensor, relation_words: torch.Tensor, mask: torch.Tensor):
        """Return ``B1 [B, N, T]`` (eq. 7) and ``B2 [B, T, N]`` (eq. 8)."""
        keys = self.vertex_key(vertices)
        scores = keys @ self.word_key(relation_words).transpose(1, 2) / math.sqrt(keys.shape[-1])  # eq. 6
        b1 = masked_softmax(scores, mask[:, None, :], dim=2)  # eq. 7
        b2 = torch.softmax(scores.transpose(1, 2), dim=2)  # eq. 8
        return b1, b2

    def adjacency(self, multimodal: torch.Tensor, relation_words: torch.Tensor, mask: torch.Tensor):
        """The explicit ``A = B1 B2`` (eq. 9), ``[B, N, N]``, rows summing to 1."""
        vertices = self.vertex(multimodal.flatten(2).transpose(1, 2))
        b1, b2 = self.attention(vertices, relation_words, mask)
        return b1 @ b2

    def forward(self, multimodal: torch.Tensor, relation_words: torch.Tensor, mask: torch.Tensor):
        """``multimodal [B, C, H, W]``, ``relation_words = p_rel * L [B, T, C_l]`` (eq. 5),
        ``mask [B, T]`` -> reasoned ``M- [B, C, H, W]``."""
        b, c, h, w = multimodal.shape
        x = self.vertex(multimodal.flatten(2).transpose(1, 2))  # M~ [B, N, C]
        b1, b2 = self.attention(x, relation_words, mask)
        adjacency = b1 @ b2 if self.path == "explicit" else None  # eq. 9
        for weight, norm in zip(self.gcn, self.norms):
            propagated = adjacency @ x if adjacency is not None else b1 @ (b2 @ x)  # A M~
            x = torch.relu(norm(weight(propagated + x)))  # eq. 10: (A + I) M~ W7
        return l2_normalize(x.transpose(1, 2).reshape(b, c, h, w))  # channel L2 norm (released code)
