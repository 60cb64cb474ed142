"""ConvLSTM fusion of the levels (paper 3.3, last paragraph; released code docs/reference.md 1.3).

The levels ``[Y3, Y4, Y5]`` are fed as a sequence to a convolutional LSTM (cell size 500 in the
paper, 1x1 kernels, layer-normalised gates and cell, forget bias 1 as in the released code). The
last hidden state is the fused feature.

Peepholes (``peephole=True``, off by default as the paper does not mention them; on in the
released-code preset): the input and forget gates also see the previous cell, the output gate the
new one, ``i += w_ci * c_{t-1}``, ``f += w_cf * c_{t-1}``, ``o += w_co * c_t``, added before the gates'
layer norm as in the released cell (Shi et al. 2015). The released cell learns one weight per
position and channel of its fixed 40 x 40 grid; here there is one weight per channel, shared by all
positions, so that any input size works. They start at zero (the cell starts as the plain one).
"""

from __future__ import annotations

import torch
from torch import nn

from cmpc.errors import ConfigError


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of every position of a ``[B, C, H, W]`` map."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvLSTM(nn.Module):
    """Convolutional LSTM over a list of ``[B, C_in, H, W]`` maps; returns the last hidden state ``[B, hidden, H, W]``.

    ``peephole``: per-channel peephole weights ``[3, hidden, 1, 1]`` (rows: input, forget, output gate).
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 1, forget_bias: float = 1.0,
                 peephole: bool = False):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"model.convlstm_kernel={kernel_size} must be an odd integer >= 1: the ConvLSTM pads "
                              f"by kernel // 2 to keep the map size, which only an odd kernel does")
        self.hidden, self.forget_bias = hidden, forget_bias
        self.gates = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel_size, padding=kernel_size // 2, bias=False)
        self.gate_norms = nn.ModuleList(ChannelLayerNorm(hidden) for _ in range(4))
        self.cell_norm = ChannelLayerNorm(hidden)
        self.peephole = nn.Parameter(torch.zeros(3, hidden, 1, 1)) if peephole else None

    def forward(self, sequence: list[torch.Tensor]) -> torch.Tensor:
        first = sequence[0]
        h = first.new_zeros(first.shape[0], self.hidden, *first.shape[2:])
        c = torch.zeros_like(h)
        norm_i, norm_f, norm_o, norm_g = self.gate_norms
        for x in sequence:
            i, f, o, g = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
            if self.peephole is not None:
                i, f = i + self.peephole[0] * c, f + self.peephole[1] * c
            i, f, g = norm_i(i), norm_f(f), norm_g(g)
            c = torch.sigmoid(f + self.forget_bias) * c + torch.sigmoid(i) * torch.tanh(g)
            if self.peephole is not None:
                o = o + self.peephole[2] * c
            c = self.cell_norm(c)
            h = torch.sigmoid(norm_o(o)) * torch.tanh(c)
        return h
