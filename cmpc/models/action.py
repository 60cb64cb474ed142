"""Action-Aware Reasoning (AAR), paper 3.2.2, eqs. 12-21 (the extra stage of CMPC-V).

Inputs: the EP maps of the K frames ``M_V [K, HW, C_m]``, the reasoned map of the centre frame
``M-_ctr [HW, C_m]`` (RAR output; the EP map when RAR is off) and the action words
(``q_a = sum_t p_act_t l_t``, eq. 12, computed with the other sentence vectors in
:meth:`cmpc.models.video.CMPCVideo.encode_language`).

1. Each frame attends to the action words: ``D_V = softmax_HW((M_V W8)(q_a W9) / sqrt(C_m))``
   (eqs. 13-14) and pools one vertex per frame, ``P~_V = D_V M_V`` (eq. 15), ``[K, C_m]``.
2. Temporal graph over the K vertices, adjacency ``A_V`` either by direct relevance (DR, paper
   default): ``A_V = softmax_rows((P~ W12)(P~ W13)^T / sqrt(C_m))`` (eqs. 16-17), or by adaptive
   relevance (AR, table 7): action words ``p_act * L`` route the edges exactly as relational words
   do in RAR (eqs. 6-9, :class:`~cmpc.models.relation.RelationAwareReasoning` on the K vertices).
   Graph convolution ``P-_V = (A_V + I) P~_V W14`` (eq. 18).
3. Projection back onto the centre frame: ``E_V = softmax_K((P-_V W14')(M-_ctr W15)^T / sqrt(C_m))``
   (eqs. 19-20; every position's weights over the K frames sum to 1) and ``P^_V = E_V^T P-_V``
   (eq. 21), the temporal context ``[HW, C_m]``.

Decisions where the paper is ambiguous (docs/video.md):
- eq. 19 reuses the symbol W14 of the graph convolution (eq. 18); we read it as a typo and give
  the attention query its own matrix (``W14'``, :attr:`context_query`).
- eq. 21 is printed with ``P~_V`` (the vertices *before* the graph convolution), while the text says
  "the reasoned context P-_V is then projected"; the default projects ``P-_V`` (``values="reasoned"``),
  ``values="vertices"`` follows eq. 21 as printed.
- each graph convolution is followed by LayerNorm and ReLU and several layers share one adjacency,
  as in RAR (docs/model.md); eq. 18 has one layer (``layers=1``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cmpc.errors import check_choice
from cmpc.models.relation import RelationAwareReasoning

ADJACENCIES = ("dr", "ar")
VALUES = ("reasoned", "vertices")


class DirectRelevanceGraph(nn.Module):
    """The temporal graph of AAR with direct-relevance edges (eqs. 16-18)."""

    def __init__(self, dim: int, layers: int = 1):
        super().__init__()
        self.query = nn.Linear(dim, dim, bias=False)  # W12
        self.key = nn.Linear(dim, dim, bias=False)  # W13
        self.gcn = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(layers))  # W14 per layer
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))

    def adjacency(self, vertices: torch.Tensor) -> torch.Tensor:
        """``A_V [B, K, K]``, rows summing to 1, from the vertices ``P~_V [B, K, C]``."""
        scores = self.query(vertices) @ self.key(vertices).transpose(1, 2)  # eq. 16
        return torch.softmax(scores / math.sqrt(vertices.shape[-1]), dim=-1)  # eq. 17

    def forward(self, vertices: torch.Tensor) -> torch.Tensor:
        adjacency = self.adjacency(vertices)
        x = vertices
        for weight, norm in zip(self.gcn, self.norms):
            x = torch.relu(norm(weight(adjacency @ x + x)))  # eq. 18: (A_V + I) P~_V W14
        return x


class ActionAwareReasoning(nn.Module):
    def __init__(self, dim: int, word_dim: int, adjacency: str = "dr", layers: int = 1, values: str = "reasoned"):
        super().__init__()
        check_choice("model.aar_adjacency", adjacency, ADJACENCIES)
        check_choice("model.aar_values", values, VALUES)
        self.adjacency_kind, self.values = adjacency, values
        self.frame_key = nn.Linear(dim, dim, bias=False)  # W8
        self.action_query = nn.Linear(word_dim, dim, bias=False)  # W9
        self.graph = (
            DirectRelevanceGraph(dim, layers)
            if adjacency == "dr"
            else RelationAwareReasoning(dim, word_dim, layers)  # AR: action words as routers (table 7)
        )
        self.context_query = nn.Linear(dim, dim, bias=False)  # W14' (eq. 19, see module docstring)
        self.context_key = nn.Linear(dim, dim, bias=False)  # W15

    # -- stages, exposed for tests and visualisation ---------------------------------------------
    def frame_attention(self, frames: torch.Tensor, q_a: torch.Tensor) -> torch.Tensor:
        """``D_V [B, K, HW]`` (eqs. 13-14) from ``frames [B, K, HW, C]`` and ``q_a [B, C_l]``."""
        scores = self.frame_key(frames) @ self.action_query(q_a)[:, None, :, None]  # eq. 13
        return torch.softmax(scores.squeeze(-1) / math.sqrt(frames.shape[-1]), dim=-1)  # eq. 14

    def reason(self, vertices: torch.Tensor, action_words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``P-_V [B, K, C]`` from the vertices ``P~_V [B, K, C]`` (eqs. 16-18, DR or AR edges)."""
        if self.adjacency_kind == "dr":
            return self.graph(vertices)
        as_map = vertices.transpose(1, 2)[..., None]  # the K vertices as a K x 1 "map" for RAR
        return self.graph(as_map, action_words, mask)[..., 0].transpose(1, 2)

    def adjacency(self, vertices: torch.Tensor, action_words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The temporal adjacency ``A_V [B, K, K]`` (eq. 17 for DR; eq. 9 with action words for AR)."""
        if self.adjacency_kind == "dr":
            return self.graph.adjacency(vertices)
        return self.graph.adjacency(vertices.transpose(1, 2)[..., None], action_words, mask)

    def projection(self, reasoned: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """``E_V [B, K, HW]`` (eqs. 19-20), normalised over the K frames, from ``P-_V`` and ``M-_ctr [B, HW, C]``."""
        scores = self.context_query(reasoned) @ self.context_key(center).transpose(1, 2)  # eq. 19
        return torch.softmax(scores / math.sqrt(center.shape[-1]), dim=1)  # eq. 20

    # -- forward -----------------------------------------------------------------------------------
    def forward(
        self,
        frames: torch.Tensor,
        center: torch.Tensor,
        q_a: torch.Tensor,
        action_words: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """``frames = M_V [B, K, C, H, W]``, ``center = M-_ctr [B, C, H, W]``, ``q_a [B, C_l]`` (eq. 12),
        ``action_words = p_act * L [B, T, C_l]`` and ``mask [B, T]`` (AR only) -> ``P^_V [B, C, H, W]``."""
        b, _, c, h, w = frames.shape
        m_v = frames.flatten(3).transpose(2, 3)  # [B, K, HW, C]
        d_v = self.frame_attention(m_v, q_a)
        vertices = (d_v[:, :, None, :] @ m_v)[:, :, 0]  # eq. 15: P_V = D_V M_V -> P~_V [B, K, C]
        reasoned = self.reason(vertices, action_words, mask)
        center = center.flatten(2).transpose(1, 2)  # [B, HW, C]
        e_v = self.projection(reasoned, center)
        context = e_v.transpose(1, 2) @ (reasoned if self.values == "reasoned" else vertices)  # eq. 21
        return context.transpose(1, 2).reshape(b, c, h, w)
