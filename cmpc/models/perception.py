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

from cmpc.models.functional import l2_normalize


class EntityPerception(nn.Module):
    def __init__(self, visual_dim: int, word_dim: int, dim: int, heads: int = 5, tanh: bool = False):
        super().__init__()
        self.heads, self.dim, self.tanh = heads, dim, tanh
        self.word_proj = nn.Linear(word_dim, heads * dim)  # W3i for i = 1..r, stacked
        self.visual_proj = nn.Conv2d(visual_dim, heads * dim, kernel_size=1)  # W4i, stacked

    def per_head(self, visual: torch.Tensor, q_e: torch.Tensor) -> torch.Tensor:
        """Reference form of eqs. 3-4: r head maps of C_m channels each, multiplied and summed."""
        b, _, h, w = visual.shape
        words = self.word_proj(q_e).view(b, self.heads, self.dim, 1, 1)
        vis = self.visual_proj(visual).view(b, self.heads, self.dim, h, w)
        if self.tanh:
            words, vis = torch.tanh(words), torch.tanh(vis)
        return (words * vis).sum(dim=1)  # eq. 3 per head, eq. 4 sum over the r heads

    def forward(self, visual: torch.Tensor, q_e: torch.Tensor) -> torch.Tensor:
        """``visual [B, C_v, H, W]``, ``q_e [B, C_l]`` -> multimodal ``M [B, C_m, H, W]``."""
        if self.tanh:  # the tanh on X W4i does not commute with the head sum
            return l2_normalize(self.per_head(visual, q_e))
        # eqs. 3-4 folded: sum_i (q W3i) * (X W4i) = X (sum_i W4i diag(q W3i)), one per-sentence 1x1 conv of
        # C_v x C_m instead of r of them at every position (same result, r times fewer multiply-adds)
        b, c, h, w = visual.shape
        words = self.word_proj(q_e).view(b, self.heads, self.dim)
        weight = self.visual_proj.weight.view(self.heads, self.dim, c)
        w_eff = torch.einsum("bhd,hdv->bdv", words, weight)
        b_eff = torch.einsum("bhd,hd->bd", words, self.visual_proj.bias.view(self.heads, self.dim))
        fused = torch.bmm(w_eff, visual.flatten(2)) + b_eff[..., None]
        return l2_normalize(fused.view(b, self.dim, h, w))
