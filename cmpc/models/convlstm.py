"""ConvLSTM fusion of the levels (paper 3.3, last paragraph; released code REFERENCE 1.3).

The levels ``[Y3, Y4, Y5]`` are fed as a sequence to a convolutional LSTM (cell size 500 in the
paper, 1x1 kernels, layer-normalised gates and cell, forget bias 1 as in the released code; the
released cell's peephole connections are left out). The last hidden state is the fused feature.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of every position of a ``[B, C, H, W]`` map."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvLSTM(nn.Module):
    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 1, forget_bias: float = 1.0):
        super().__init__()
        self.hidden, self.forget_bias = hidden, forget_bias
        self.gates = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel_size, padding=kernel_size // 2, bias=False)
        self.gate_norms = nn.ModuleList(ChannelLayerNorm(hidden) for _ in range(4))
        self.cell_norm = ChannelLayerNorm(hidden)

    def forward(self, sequence: list[torch.Tensor]) -> torch.Tensor:
        first = sequence[0]
        h = first.new_zeros(first.shape[0], self.hidden, *first.shape[2:])
        c = torch.zeros_like(h)
        for x in sequence:
            gates = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
            i, f, o, g = (norm(gate) for norm, gate in zip(self.gate_norms, gates))
            c = self.cell_norm(torch.sigmoid(f + self.forget_bias) * c + torch.sigmoid(i) * torch.tanh(g))
            h = torch.sigmoid(o) * torch.tanh(c)
        return h

