"""Config values checked before any data is read or model built: one ConfigError line per fault, naming the
key and its allowed range (README "Checks on inputs").

:func:`check_train_config` (train.py, :func:`cmpc.engine.trainer.train`), :func:`check_eval_config` (eval.py)
and :func:`check_predict_config` (predict.py) each check the keys their script reads; :func:`check_dataset_root`
checks that an existing ``dataset.root`` can be read.
"""

from __future__ import annotations

import os
from numbers import Integral, Real

import torch
from omegaconf import OmegaConf

from cmpc.errors import ConfigError, check_choice
from cmpc.models.action import ADJACENCIES, VALUES
from cmpc.models.language import ROUTING_SCALES, ROUTINGS, WORD_ENCODERS
from cmpc.models.relation import RAR_PATHS

# key -> (kind, lowest allowed value, what the range means); kind "int" | "number"; None allowed where noted
TRAINER_RULES = {
    "steps": ("int", 1, "an integer >= 1 (optimisation steps)"),
    "batch_size": ("int", 1, "an integer >= 1 (sentences per global batch)"),
    "eval_batch_size": ("int", 1, "an integer >= 1"),
    "num_workers": ("int", 0, "an integer >= 0 (0 = load data in the main process)"),
    "checkpoint_every": ("int", 1, "an integer >= 1 (steps between last.pt writes)"),
    "log_every": ("int", 1, "an integer >= 1 (steps between TensorBoard scalars)"),
    "eval_every": ("int", 0, "an integer >= 0 (0 = validate only at the end)"),
    "lr": ("number", 0, "a number >= 0"),
    "end_lr": ("number", 0, "a number >= 0"),
    "weight_decay": ("number", 0, "a number >= 0"),
    "feature_cache_mb": ("number", 0, "a number >= 0 (MiB of cached backbone features; 0 = off)"),
}
OPTIONAL_TRAINER_RULES = {  # null allowed
    "stop_at_step": ("int", 1, "null or an integer >= 1"),
    "grad_clip": ("number", 0, "null or a number >= 0 (null or 0 = off)"),
}
CHOICES = {"trainer.amp": ("off", "bf16", "fp16"), "model.word_encoder": WORD_ENCODERS, "model.routing_words": ROUTINGS,
           "model.routing_scale": ROUTING_SCALES, "model.rar_path": RAR_PATHS, "model.aar_adjacency": ADJACENCIES,
           "model.aar_values": VALUES}  # None (a model without the key) passes


def _check_value(key: str, value, kind: str, lowest, allowed: str) -> None:
    is_int = isinstance(value, Integral) and not isinstance(value, bool)
    is_number = is_int or (isinstance(value, Real) and not isinstance(value, bool) and value == value
                           and abs(value) != float("inf"))
    if (kind == "int" and not is_int) or not is_number or value < lowest:
        raise ConfigError(f"{key}={value!r} is out of range: it must be {allowed}")


def _get(cfg, key: str):
    if OmegaConf.is_missing(cfg, key):
        raise ConfigError(f"{key} is required: set {key}=... on the command line")
    return OmegaConf.select(cfg, key, default=None)


def check_device(cfg) -> None:
    """``device``: auto, cpu, cuda, cuda:N (or another name torch.device accepts)."""
    name = _get(cfg, "device")
    if name == "auto":
        return
    try:
        torch.device(str(name))
    except (RuntimeError, ValueError):
        raise ConfigError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from None


def check_dataset_root(dataset) -> None:
    """An existing ``dataset.root`` must be a readable folder (a missing one is reported by the dataset, or
    generated for the synthetic sets)."""
    root = OmegaConf.select(dataset, "root", default=None) if OmegaConf.is_config(dataset) else dataset.get("root")
    if not root or not os.path.exists(str(root)):
        return
    if not os.path.isdir(str(root)):
        raise ConfigError(f"dataset.root={root} is a file, not a folder; point it at the folder described in "
                          f"data/README.md")
    if not os.access(str(root), os.R_OK | os.X_OK):
        raise ConfigError(f"dataset.root={root} cannot be read (permission denied); fix its permissions "
                          f"(chmod -R u+rX) or copy the dataset somewhere readable")


def process_count() -> int:
    """The number of training processes of this launch: ``WORLD_SIZE`` (set by torchrun), 1 without it.

    Raises:
        ConfigError: ``WORLD_SIZE`` is set but is not an integer >= 1.
    """
    value = os.environ.get("WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"the environment variable WORLD_SIZE={value!r} is not a process count: unset it, or "
                          f"launch with torchrun, which sets it")
    return int(value)


def check_batch_splits(batch_size: int, processes: int) -> None:
    """The global batch ``trainer.batch_size`` (sentences) must split into ``processes`` equal shares
    (:class:`cmpc.engine.sampler.StepBatchSampler`). Raises ConfigError naming the process count otherwise."""
    if batch_size % processes:
        lower, upper = batch_size // processes * processes, (batch_size // processes + 1) * processes
        nearest = f"{lower} or {upper}" if lower else str(upper)
        raise ConfigError(f"trainer.batch_size={batch_size} is the global batch, split equally over the {processes} "
                          f"processes of this run (WORLD_SIZE={processes}): set trainer.batch_size to a multiple of "
                          f"{processes} (e.g. {nearest})")


def check_train_config(cfg) -> None:
    """The trainer keys (:data:`TRAINER_RULES`), ``trainer.amp``, ``seed``, that the global batch splits over the
    processes (:func:`check_batch_splits`), ``device`` and the dataset root."""
    for name, (kind, lowest, allowed) in TRAINER_RULES.items():
        _check_value(f"trainer.{name}", _get(cfg, f"trainer.{name}"), kind, lowest, allowed)
    for name, (kind, lowest, allowed) in OPTIONAL_TRAINER_RULES.items():
        value = _get(cfg, f"trainer.{name}")
        if value is not None:
            _check_value(f"trainer.{name}", value, kind, lowest, allowed)
    for key, choices in CHOICES.items():
        value = _get(cfg, key)
        if value is not None:
            check_choice(key, value, choices)
    kernel = _get(cfg, "model.convlstm_kernel")
    if kernel is not None:
        allowed = "an odd integer >= 1 (the ConvLSTM keeps the map size)"
        _check_value("model.convlstm_kernel", kernel, "int", 1, allowed)
        if kernel % 2 == 0:
            raise ConfigError(f"model.convlstm_kernel={kernel} is out of range: it must be {allowed}")
    seed, allowed = _get(cfg, "seed"), "an integer from 0 to 2**32 - 1 (numpy's seed range)"
    _check_value("seed", seed, "int", 0, allowed)
    if seed > 2**32 - 1:
        raise ConfigError(f"seed={seed} is out of range: it must be {allowed}")
    check_batch_splits(cfg.trainer.batch_size, process_count())
    check_device(cfg)
    check_dataset_root(cfg.dataset)


def check_eval_config(cfg) -> None:
    """eval.py's ``batch_size``, ``num_workers``, ``crf_workers``, ``amp`` and ``device``."""
    _check_value("batch_size", _get(cfg, "batch_size"), "int", 1, "an integer >= 1")
    _check_value("num_workers", _get(cfg, "num_workers"), "int", 0, "an integer >= 0")
    if _get(cfg, "crf_workers") is not None:
        _check_value("crf_workers", cfg.crf_workers, "int", 0, "null (one per CPU core) or an integer >= 0")
    if str(_get(cfg, "amp")) not in CHOICES["trainer.amp"]:
        raise ConfigError(f"amp={cfg.amp!r} is unknown: use one of {', '.join(CHOICES['trainer.amp'])}")
    check_device(cfg)


def check_predict_config(cfg) -> None:
    """predict.py: a non-empty ``text``, exactly one of ``image`` / ``video``, and ``device``."""
    if OmegaConf.is_missing(cfg, "text") or cfg.text is None or not str(cfg.text).strip():
        raise ConfigError('text is required: give the referring expression, e.g. text="the man on the left"')
    if (cfg.image is None) == (cfg.video is None):
        raise ConfigError("give exactly one of image=PATH or video=PATH")
    check_device(cfg)
