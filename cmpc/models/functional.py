"""Small tensor helpers shared by the CMPC modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l2_normalize(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Unit L2 norm along ``dim`` (the released code normalises every feature map over channels)."""
    return F.normalize(x, p=2.0, dim=dim, eps=1e-6)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Softmax over ``dim`` that gives exactly zero weight where ``mask`` is False.

    ``mask`` broadcasts against ``scores``. Rows whose mask is entirely False yield zeros.
    """
    if mask is None:
        return torch.softmax(scores, dim=dim)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=dim) * mask


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of ``[B, 1, h, w]`` logits to the input size (loss and evaluation)."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
