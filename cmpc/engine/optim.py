"""Optimiser and learning-rate schedule of the official recipe (docs/reference.md 1.2).

Adam; weight decay only on the weights of convolutions and linear layers that are trained
(the released code's L2 term covers the conv weights of the new modules, not biases, norms, the
LSTM or the embeddings); biases get twice the learning rate; the learning rate follows a
polynomial decay (power 0.9) from ``lr`` to ``end_lr`` over ``decay_steps``, or a step schedule
(divided by ``step_gamma`` at ``step_at`` x steps; Refer-YouTube-VOS in the paper).
"""

from __future__ import annotations

import torch
from torch import nn

from cmpc.errors import ConfigError


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, bias_lr_mult: float) -> list[dict]:
    decay, no_decay, biases = [], [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if name == "bias":
                biases.append(param)
            elif name == "weight" and isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                decay.append(param)
            else:
                no_decay.append(param)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "lr_mult": 1.0},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "lr_mult": 1.0},
        {"params": biases, "lr": lr * bias_lr_mult, "weight_decay": 0.0, "lr_mult": bias_lr_mult},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """Adam or AdamW (``cfg.optimizer``) over :func:`parameter_groups`. ``cfg.fused_optimizer`` (default false)
    updates every parameter in one fused kernel (torch's ``fused=True``, CPU and CUDA): the same update up to float
    rounding, without one small kernel per parameter and step (docs/performance.md). Raises ConfigError for another
    optimiser name."""
    groups = parameter_groups(model, cfg.lr, cfg.weight_decay, cfg.bias_lr_mult)
    options = {"lr": cfg.lr, "fused": True} if cfg.get("fused_optimizer", False) else {"lr": cfg.lr}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, **options)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, **options)
    raise ConfigError(f"trainer.optimizer must be adam or adamw, got {cfg.optimizer!r}")


def learning_rate(step: int, cfg) -> float:
    """Base learning rate at ``step`` (before the per-group multipliers)."""
    if cfg.schedule == "poly":
        progress = min(step, cfg.decay_steps) / max(cfg.decay_steps, 1)
        return (cfg.lr - cfg.end_lr) * (1 - progress) ** cfg.poly_power + cfg.end_lr
    if cfg.schedule == "step":
        return cfg.lr * (cfg.step_gamma if step >= cfg.step_at * cfg.steps else 1.0)
    if cfg.schedule == "constant":
        return cfg.lr
    raise ConfigError(f"trainer.schedule must be poly, step or constant, got {cfg.schedule!r}")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
