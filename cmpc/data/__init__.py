"""Datasets for referring image / video segmentation: registry, builders and the shared vocabulary.

``build_dataset(cfg, split, vocab)`` turns the ``dataset`` config node (docs/architecture.md; one YAML file per
dataset under ``configs/dataset/``) into a :class:`~cmpc.data.base.ReferringDataset`; ``build_vocab(cfg)`` loads
``cfg.vocab`` or builds the vocabulary from the training split (docs/reference.md section 1.2) and writes it under
``cfg.cache_dir``; ``build_glove(cfg, vocab)`` gives the cached GloVe matrix when ``cfg.glove`` is set.

The synthetic benchmarks (``cfg.generate`` set) are generated on first use by :mod:`cmpc.data.synthetic`.
This package never imports :mod:`cmpc.models` or :mod:`cmpc.engine`.
"""

from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from cmpc.data.a2d import A2DDataset
from cmpc.data.base import RawSample, ReferringDataset, collate, collate_grouped
from cmpc.data.jhmdb import JHMDBDataset
from cmpc.data.refer import (
    GRefDataset,
    GRefUMDDataset,
    RefClefDataset,
    SyntheticImageDataset,
    UNCDataset,
    UNCPlusDataset,
)
from cmpc.data.referit import ReferItDataset
from cmpc.data.text import Vocabulary, cached_glove_matrix, glove_matrix, tokenize
from cmpc.data.transforms import Letterbox
from cmpc.data.ytvos import SyntheticVideoDataset, VideoExpression, YTVOSDataset, write_submission
from cmpc.errors import ConfigError

log = logging.getLogger(__name__)

DATASETS: dict[str, type[ReferringDataset]] = {
    "unc": UNCDataset,
    "unc+": UNCPlusDataset,
    "gref": GRefDataset,
    "gref_umd": GRefUMDDataset,
    "refclef": RefClefDataset,
    "referit": ReferItDataset,
    "a2d": A2DDataset,
    "jhmdb": JHMDBDataset,
    "ytvos": YTVOSDataset,
    "synthetic": SyntheticImageDataset,
    "synthetic_video": SyntheticVideoDataset,
}

# keys of the `dataset` node consumed here rather than passed to the dataset class
REGISTRY_KEYS = {"name", "train_split", "eval_split", "test_split", "vocab", "glove", "glove_dim", "min_count",
                 "generate"}

__all__ = ["DATASETS", "build_dataset", "build_vocab", "build_glove", "vocab_path", "collate", "collate_grouped",
           "RawSample", "ReferringDataset", "Vocabulary", "Letterbox", "VideoExpression", "write_submission",
           "tokenize", "glove_matrix", "cached_glove_matrix"]


def _as_dict(cfg: Any) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(cfg, dict):
        raise ConfigError(f"the dataset config must be a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def dataset_class(name: str) -> type[ReferringDataset]:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset.name={name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def _cache_dir(d: dict) -> Path | None:
    c = d.get("cache_dir")
    if c is False or c == "":
        return None
    return Path(c) if c else Path(d["root"]) / "cache"


def _ensure_generated(d: dict, cls: type[ReferringDataset]) -> None:
    gen = d.get("generate")
    if not gen:
        return
    from cmpc.data import synthetic  # generated benchmarks only

    fn_name = "ensure_video_benchmark" if cls.is_video else "ensure_image_benchmark"
    fn = getattr(synthetic, fn_name, None)
    if fn is None:
        raise ConfigError(f"cmpc.data.synthetic has no {fn_name}(); dataset.generate cannot be honoured")
    fn(d["root"], **(gen if isinstance(gen, dict) else {}))


def _accepted_kwargs(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("self", "split", "vocab"):
                names.add(p.name)
    return names


def build_dataset(cfg: Any, split: str, vocab: Vocabulary | None = None) -> ReferringDataset:
    """The dataset ``cfg.name`` for ``split`` (``vocab`` may be None only to read sentences / counts)."""
    d = _as_dict(cfg)
    cls = dataset_class(d.get("name"))
    if not d.get("root"):
        raise ConfigError(f"dataset.root is not set for dataset '{d.get('name')}'; point it at the folder "
                          f"described in data/README.md")
    _ensure_generated(d, cls)
    kwargs = {k: v for k, v in d.items() if k not in REGISTRY_KEYS}
    kwargs["cache_dir"] = _cache_dir(d)
    accepted = _accepted_kwargs(cls)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"dataset '{d['name']}' does not take key(s) {', '.join('dataset.' + k for k in unknown)}; "
                          f"accepted: {', '.join(sorted(accepted | REGISTRY_KEYS))}")
    return cls(split=split, vocab=vocab, **kwargs)


def vocab_path(cfg: Any) -> Path | None:
    """Where :func:`build_vocab` writes the built vocabulary (None when ``cfg.vocab`` is a file or no cache)."""
    d = _as_dict(cfg)
    if d.get("vocab"):
        return None
    cache = _cache_dir(d)
    if cache is None:
        return None
    tag = re.sub(r"[^A-Za-z0-9_+-]", "_", f"{d['name']}_{d.get('train_split', 'train')}")
    return cache / f"vocab_{tag}_min{int(d.get('min_count', 1) or 1)}.txt"


def build_vocab(cfg: Any) -> Vocabulary:
    """``cfg.vocab`` if set, else built from ``cfg.train_split`` (min count ``cfg.min_count``, default 1)."""
    d = _as_dict(cfg)
    if d.get("vocab"):
        return Vocabulary.load(d["vocab"])
    ds = build_dataset(d, d.get("train_split", "train"), vocab=None)
    vocab = Vocabulary.build(ds.sentences(), min_count=int(d.get("min_count", 1) or 1))
    path = vocab_path(d)
    if path is not None:
        try:
            if not path.is_file() or Vocabulary.load(path) != vocab:
                vocab.save(path)
        except OSError as e:
            log.warning("could not write the vocabulary to %s (%s)", path, e)
    log.info("vocabulary of %s/%s: %d words", d["name"], d.get("train_split", "train"), len(vocab))
    return vocab


def build_glove(cfg: Any, vocab: Vocabulary, stats: dict | None = None) -> np.ndarray | None:
    """GloVe ``[len(vocab), D]`` for ``cfg.glove`` (cached under ``cfg.cache_dir``), or None if unset."""
    d = _as_dict(cfg)
    source = d.get("glove")
    if not source:
        return None
    cache = _cache_dir(d)
    if cache is None:
        return glove_matrix(vocab, source, dim=d.get("glove_dim"), stats=stats)
    stem = re.sub(r"[^A-Za-z0-9_.+-]", "_", Path(str(source)).stem)
    path = cache / f"glove_{stem}_{vocab.fingerprint()}.npy"
    return cached_glove_matrix(vocab, source, path, dim=d.get("glove_dim"), stats=stats)
