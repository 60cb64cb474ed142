"""The CMPC networks: one module per paper concept, assembled by :mod:`cmpc.models.cmpc`."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .backbone import build_backbone
from .cmpc import CMPCImage
from .video import CMPCVideo

MODELS = {"cmpc_i": CMPCImage, "baseline": CMPCImage, "cmpc_v": CMPCVideo}


def build_model(model_cfg, backbone_cfg, vocab_size: int, embeddings=None) -> nn.Module:
    """The network named by ``model_cfg.name`` on the backbone of ``backbone_cfg``."""
    if model_cfg.name not in MODELS:
        raise ConfigError(f"unknown model {model_cfg.name!r}; choose one of {sorted(MODELS)}")
    return MODELS[model_cfg.name](model_cfg, build_backbone(backbone_cfg), vocab_size, embeddings)
