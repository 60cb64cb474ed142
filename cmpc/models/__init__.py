"""The CMPC networks: one module per paper concept, assembled by :mod:`cmpc.models.cmpc`."""

from __future__ import annotations

import inspect

from torch import nn

from cmpc.errors import ConfigError
from cmpc.models.backbone import build_backbone
from cmpc.models.cmpc import CMPCImage
from cmpc.models.video import CMPCVideo

MODELS = {"cmpc_i": CMPCImage, "baseline": CMPCImage, "cmpc_v": CMPCVideo}
# model config keys that are not network keywords: ``glove`` tells the engine to initialise the embeddings
ENGINE_KEYS = ("glove",)


def model_keywords(cls: type) -> list[str]:
    """The keyword-only arguments of ``cls``'s constructor, following ``**options`` to its base classes."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def build_model(model_cfg, backbone_cfg, vocab_size: int, embeddings=None) -> nn.Module:
    """The network named by ``model_cfg.name`` on the backbone of ``backbone_cfg``.

    ``model_cfg`` (a config node or dict, ``configs/model/*.yaml``) holds ``name`` plus the keywords of that
    network's constructor (:class:`~cmpc.models.cmpc.CMPCImage`, :class:`~cmpc.models.video.CMPCVideo`), checked
    against its signature as :func:`~cmpc.models.backbone.build_backbone` does; ``embeddings`` is an optional
    ``[vocab_size, embed_dim]`` matrix of initial word vectors. Raises :class:`ConfigError` for an unknown name or
    key.
    """
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(model_cfg, DictConfig):
            model_cfg = OmegaConf.to_container(model_cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    options = {k: v for k, v in dict(model_cfg).items() if k not in ENGINE_KEYS}
    name = options.pop("name", None)
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    cls = MODELS[name]
    allowed = model_keywords(cls)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} for model {name!r}: allowed keys are {allowed}")
    return cls(build_backbone(backbone_cfg), vocab_size, embeddings, **options)
