"""Training loss: binary cross-entropy on the final and per-level auxiliary logits.

Logits are upsampled (bilinear) to the input resolution and compared with the letterboxed target.
Total = ``final_weight * BCE(final) + aux_weight * sum_levels BCE(aux)`` (released code: 0.7 / 0.1).
``reduction="mean"`` averages over pixels (paper 4.1.3); ``"sum"`` sums over pixels and averages over
the batch (released code; about S*S times larger, which changes the balance with weight decay).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmpc.models.functional import upsample_logits


def mask_bce(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """BCE of ``[B, 1, h, w]`` logits against a ``[B, S, S]`` 0/1 target."""
    logits = upsample_logits(logits.float(), target.shape[-2:])[:, 0]
    loss = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.flatten(1).sum(dim=1).mean()
    raise ValueError(f"loss reduction must be 'mean' or 'sum', got {reduction!r}")


def referring_loss(
    outputs: dict, target: torch.Tensor, final_weight: float = 0.7, aux_weight: float = 0.1, reduction: str = "mean"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted loss and its parts for logging (``{"loss/final", "loss/aux0", ...}``: detached scalar tensors on the
    loss's device, so that nothing waits for a GPU here)."""
    final = mask_bce(outputs["logits"], target, reduction)
    aux = [mask_bce(a, target, reduction) for a in outputs.get("aux_logits", [])]
    total = final_weight * final + aux_weight * sum(aux) if aux else final
    parts = {"loss/final": final.detach()}
    parts.update({f"loss/aux{i}": a.detach() for i, a in enumerate(aux)})
    return total, parts
