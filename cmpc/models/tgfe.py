"""Text-Guided Feature Exchange, paper 3.3, eqs. 22-24.

For level i at round k: the sentence attends over the positions of ``Y^i_{k-1}``
(``Lambda = (s W10)(Y W11)^T``, eq. 22, softmax-normalised over H x W with 1/sqrt(C) scaling as in
the released code), pools a global context ``g = Lambda Y`` (eq. 23), fuses ``[s; g]`` with a fully
connected layer into ``c`` and lets ``sigmoid(c)`` select channels of the other levels:
``Y^i_k = Y^i_{k-1} + sum_{j != i} sigmoid(c) * Y^j_{k-1}`` (eq. 24). All levels are updated in
parallel from round k-1; every round and level has its own weights. The released code also
L2-normalised every output (``normalize=True``, model.tgfe_normalize); the default follows eq. 24,
which keeps the exchanged features on the scale of the ConvLSTM state that they are fed to.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cmpc.models.functional import l2_normalize


class LevelExchange(nn.Module):
    """One level's update in one round (eqs. 22-24)."""

    def __init__(self, dim: int, word_dim: int, normalize: bool = False):
        super().__init__()
        self.normalize = normalize
        self.query = nn.Linear(word_dim, dim, bias=False)  # W10
        self.key = nn.Conv2d(dim, dim, kernel_size=1, bias=False)  # W11
        self.context = nn.Linear(word_dim + dim, dim)  # fully connected fusion of [s; g]

    def forward(self, own: torch.Tensor, others: list[torch.Tensor], sentence: torch.Tensor) -> torch.Tensor:
        b, c, h, w = own.shape
        keys = self.key(own).flatten(2)  # [B, C, HW]
        scores = torch.einsum("bc,bcn->bn", self.query(sentence), keys) / math.sqrt(c)  # eq. 22
        attention = torch.softmax(scores, dim=1)
        pooled = torch.einsum("bn,bcn->bc", attention, own.flatten(2))  # eq. 23
        gate = torch.sigmoid(self.context(torch.cat([sentence, pooled], dim=1)))[:, :, None, None]
        updated = own + sum(gate * other for other in others)  # eq. 24
        return l2_normalize(updated) if self.normalize else updated


class TextGuidedFeatureExchange(nn.Module):
    def __init__(self, dim: int, word_dim: int, levels: int, rounds: int, normalize: bool = False):
        super().__init__()
        self.rounds = nn.ModuleList(
            nn.ModuleList(LevelExchange(dim, word_dim, normalize) for _ in range(levels)) for _ in range(rounds)
        )

    def forward(self, features: list[torch.Tensor], sentence: torch.Tensor) -> list[torch.Tensor]:
        for exchanges in self.rounds:
            features = [
                exchange(own, features[:i] + features[i + 1 :], sentence)
                for i, (exchange, own) in enumerate(zip(exchanges, features))
            ]
        return features
