"""The 8-D spatial coordinate map and its fusion with visual features (paper 3.1.1).

Each level of backbone features is concatenated with an 8-D coordinate map
``O in R^{H x W x 8}`` and projected by a 1x1 convolution to ``C_v`` channels.
The coordinate formula is the one of the released code (docs/reference.md 1.3): for cell (h, w) of an
H x W grid, ``[xmin, ymin, xmax, ymax, xctr, yctr, 1/W, 1/H]`` with coordinates in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from cmpc.models.functional import l2_normalize


def spatial_coords(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Return the 8-D coordinate map ``[8, H, W]``."""
    ys = torch.arange(height, device=device, dtype=dtype)
    xs = torch.arange(width, device=device, dtype=dtype)
    xmin = (xs / width * 2 - 1).expand(height, width)
    xmax = ((xs + 1) / width * 2 - 1).expand(height, width)
    ymin = (ys / height * 2 - 1)[:, None].expand(height, width)
    ymax = ((ys + 1) / height * 2 - 1)[:, None].expand(height, width)
    ones = torch.ones(height, width, device=device, dtype=dtype)
    return torch.stack(
        [xmin, ymin, xmax, ymax, (xmin + xmax) / 2, (ymin + ymax) / 2, ones / width, ones / height]
    )


class CoordinateFusion(nn.Module):
    """``X = l2norm(Conv1x1([V; O]))``: one backbone level fused with the coordinate map."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels + 8, out_channels, kernel_size=1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        n, _, h, w = feats.shape
        coords = spatial_coords(h, w, feats.device, feats.dtype).expand(n, -1, -1, -1)
        return l2_normalize(self.proj(torch.cat([feats, coords], dim=1)))
