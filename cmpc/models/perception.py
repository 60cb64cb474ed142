"""Entity Perception, paper 3.1.2, eqs. 2-4.

The entity words vector ``q_e = sum_t (p_ent + p_attr) l_t`` (eq. 2) is fused with every position of
the visual feature ``X`` by a simplified bilinear fusion with ``r`` heads (eqs. 3-4):
``M = sum_i (q_e W3i) * (X W4i)``. As in the released code the fused map is L2-normalised over
channels; the released code also squashed each factor with tanh (``tanh`` option, off by default
to stay with the paper's equations).
"""

from __future__ import annotations

import torch
from torch import nn

from .functional import l2_normalize


class EntityPerception(nn.Module):
    def __init__(self, visual_dim: int, word_dim: int, dim: int, heads: int = 5, tanh: bool = False):
        super().__init__()
        self.heads, self.dim, self.tanh = heads, dim, tanh
        self.word_proj = nn.Linear(word_dim, heads * dim)  # W3i for i = 1..r, stacked
        self.visual_proj = nn.Conv2d(visual_dim, heads * dim, kernel_size=1)  # W4i, stacked

    def forward(self, visual: torch.Tensor, q_e: torch.Tensor) -> torch.Tensor:
        """``visual [B, C_v, H, W]``, ``q_e [B, C_l]`` -> multimodal ``M [B, C_m, H, W]``."""
        b, _, h, w = visual.shape
        words = self.word_proj(q_e).view(b, self.heads, self.dim, 1, 1)
        vis = self.visual_proj(visual).view(b, self.heads, self.dim, h, w)
        if self.tanh:
            words, vis = torch.tanh(words), torch.tanh(vis)
        fused = (words * vis).sum(dim=1)  # eq. 3 per head, eq. 4 sum over the r heads
        return l2_normalize(fused)
