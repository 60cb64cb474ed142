"""From a resolved config to the objects a run needs: vocabulary, datasets, model."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from torch import nn

from ..data import build_dataset, build_glove, build_vocab
from ..errors import ConfigError
from ..models import build_model

log = logging.getLogger(__name__)


@dataclass
class Data:
    vocab: object
    embeddings: np.ndarray | None
    train: object | None
    eval: object | None
    test: object | None

    @property
    def video(self) -> bool:
        first = self.train or self.eval or self.test
        return bool(getattr(first, "is_video", False))


def build_datasets(cfg, splits=("train", "eval", "test")) -> Data:
    """The vocabulary, GloVe rows (when ``model.glove``) and the requested splits of ``cfg.dataset``."""
    ds = cfg.dataset
    vocab = build_vocab(ds)
    embeddings = None
    if cfg.model.glove:
        if ds.glove is None:
            log.warning("model.glove=true but dataset.glove is null: word embeddings start random")
        else:
            embeddings = build_glove(ds, vocab)
            if embeddings.shape[1] != cfg.model.embed_dim:
                raise ConfigError(
                    f"dataset.glove gives {embeddings.shape[1]}-d vectors but model.embed_dim={cfg.model.embed_dim}; "
                    f"set model.embed_dim={embeddings.shape[1]}"
                )
    names = {"train": ds.train_split, "eval": ds.eval_split, "test": ds.get("test_split")}
    built = {key: build_dataset(ds, names[key], vocab) if key in splits and names[key] else None for key in names}
    return Data(vocab, embeddings, built["train"], built["eval"], built["test"])


def build_model_for(cfg, vocab, embeddings=None) -> nn.Module:
    return build_model(cfg.model, cfg.backbone, len(vocab), embeddings)
