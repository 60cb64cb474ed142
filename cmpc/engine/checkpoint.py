"""Checkpoints: written atomically (temporary file + rename), read without running code, and the RNG state
needed to resume exactly.

Two kinds, both plain dicts of tensors, numbers, strings, lists and dicts (what ``torch.load(weights_only=True)``
reads; a pickled object of any other type is refused, so a shared ``.pt`` cannot run code):

- ``best.pt`` (:data:`EVAL_KEYS`): what evaluation and prediction need: weights, config, vocabulary.
- ``last.pt`` (:data:`RESUME_KEYS` on top): optimiser, loss scaler, step, loss history and RNG states.

Both carry ``meta`` (:func:`provenance`): format version, cmpc, torch and git versions.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from cmpc.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 1: pickled with weights_only=False, best.pt with optimiser state; 2: weights-only, lean best.pt
EVAL_KEYS = ("model", "config", "vocab")
RESUME_KEYS = EVAL_KEYS + ("optimizer", "scaler", "step", "best", "history", "rng")


def atomic_save(obj, path: str | Path) -> None:
    """``torch.save`` to a temporary file ``.<name>.*`` in the same folder, then rename over ``path``.

    Raises:
        ConfigError: the file could not be written (disk full, quota, I/O error); the previous ``path``, if
            any, is left as it was and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        before = "the previous one is intact" if path.is_file() else "there was no earlier one"
        reason = err.strerror or errno.errorcode.get(err.errno, type(err).__name__)
        fix = "free space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
        raise ConfigError(f"could not write checkpoint {path} ({reason}); {before}: {fix}, "
                          f"then continue with resume=true") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.<name>.pt.*`` files an interrupted :func:`atomic_save` left in ``folder``; returns them."""
    leftovers = [p for p in Path(folder).glob(".*.pt.*") if p.is_file()]
    for p in leftovers:
        p.unlink(missing_ok=True)
    return leftovers


def load_checkpoint(path: str | Path, need: tuple[str, ...] = EVAL_KEYS, map_location="cpu") -> dict:
    """A checkpoint written by ``train.py``, read with ``weights_only=True`` (no code runs).

    Args:
        need: keys the caller uses (:data:`EVAL_KEYS` to evaluate, :data:`RESUME_KEYS` to resume).
    Raises:
        ConfigError: missing, a directory, unreadable or truncated, holding pickled objects other than
            tensors and plain containers, or lacking one of ``need`` (another program's file, or a best.pt
            given to resume).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"checkpoint {path} is a directory, not a file: remove or rename it, or pass the .pt inside")
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; pass checkpoint=PATH to a .pt written by train.py")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a truncated, foreign or unsafe file
        unsafe = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(err), re.IGNORECASE)
        if unsafe:
            raise ConfigError(f"checkpoint {path} holds pickled Python objects ({unsafe.group(1)}), which could run "
                              f"code when loaded; refused: use a checkpoint written by train.py, or re-save one from "
                              f"a source you trust as plain tensors") from None
        raise ConfigError(f"checkpoint {path} cannot be read ({err.__class__.__name__}): "
                          f"re-run training or pick another file") from None
    if not isinstance(state, dict) or any(k not in state for k in EVAL_KEYS):
        raise ConfigError(f"{path} is not a cmpc training checkpoint (no model, config and vocab inside): "
                          f"pass a best.pt or last.pt written by train.py")
    written_by = state.get("meta", {}).get("format", 1)
    if written_by > FORMAT_VERSION:
        raise ConfigError(f"checkpoint {path} has format {written_by}, written by a newer cmpc "
                          f"({state['meta'].get('cmpc')}); this one reads up to {FORMAT_VERSION}: update cmpc")
    missing = [k for k in need if k not in state]
    if missing:
        raise ConfigError(f"checkpoint {path} has no {', '.join(missing)} (a best.pt keeps only what evaluation "
                          f"needs): resume from the run's last.pt")
    return state


SCHEDULE_KEYS = ("steps", "schedule", "lr", "end_lr", "decay_steps", "poly_power", "step_at", "step_gamma")


def _flat(node, prefix: str) -> dict:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}.{key}").items()}
    return {prefix: node}


def check_resume(state: dict, path, cfg, vocab_words: list[str]) -> None:
    """Stop when the run about to resume builds another vocabulary or model than the checkpoint's; warn when
    its learning-rate schedule changed.

    Keys only one side has (added or removed since the checkpoint) and ``backbone.weights`` (the trained
    weights are in the checkpoint) are not compared.

    Raises:
        ConfigError: one line naming the difference: vocabulary size; same size, other words or order (the
            first differing position); or the model/backbone keys that differ.
    """
    saved = list(state["vocab"])
    if len(saved) != len(vocab_words):
        raise ConfigError(f"resume={path}: the checkpoint's vocabulary has {len(saved)} words, this dataset builds "
                          f"{len(vocab_words)}: resume with the dataset (and vocabulary settings) it was trained on")
    if saved != vocab_words:
        i = next(i for i, (a, b) in enumerate(zip(saved, vocab_words)) if a != b)
        how = "the same words in another order" if sorted(saved) == sorted(vocab_words) else "other words"
        raise ConfigError(f"resume={path}: the vocabulary has {how} (word {i}: {saved[i]!r} in the checkpoint, "
                          f"{vocab_words[i]!r} now), so every embedding would be misread: resume with the dataset "
                          f"it was trained on")
    now = OmegaConf.to_container(cfg, resolve=True)
    old, new = ({**_flat(c.get("model", {}), "model"), **_flat(c.get("backbone", {}), "backbone")}
                for c in (state["config"], now))
    differ = [k for k in sorted(old.keys() & new.keys()) if old[k] != new[k] and k != "backbone.weights"]
    if differ:
        shown = "; ".join(f"{k} {old[k]!r} in the checkpoint, {new[k]!r} now" for k in differ[:4])
        more = " ..." if len(differ) > 4 else ""
        raise ConfigError(f"resume={path}: the model differs from the checkpoint's: {shown}{more}; "
                          f"resume with the checkpoint's values or start a new run")
    old_t, new_t = state["config"].get("trainer", {}), now["trainer"]
    changed = [k for k in SCHEDULE_KEYS if k in old_t and k in new_t and old_t[k] != new_t[k]]
    if changed:
        log.warning("resume=%s: %s changed (%s): the learning-rate schedule from step %d on differs from the "
                    "original run's", path, ", ".join(f"trainer.{k}" for k in changed),
                    ", ".join(f"{old_t[k]} -> {new_t[k]}" for k in changed), state["step"])


def load_weights(model: torch.nn.Module, weights: dict, path) -> None:
    """``model.load_state_dict(weights)``; a checkpoint whose tensors do not fit the model its config builds
    (written by other code, or edited) raises ConfigError naming the first differences instead of a traceback."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k} {tuple(weights[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
              for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} tensors missing ({', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})" if unexpected else "",
                 f"{len(shapes)} of another shape ({shapes[0]})" if shapes else ""]
        raise ConfigError(f"checkpoint {path} does not fit the model its config builds: "
                          f"{'; '.join(p for p in parts if p)}; use the cmpc version that wrote it "
                          f"(meta.git in the checkpoint) or retrain")
    model.load_state_dict(weights)


def provenance() -> dict:
    """Format version, cmpc and torch versions and the git commit of the code (``+dirty`` with local changes)."""
    from cmpc import __version__
    from cmpc.engine.environment import git_commit

    return {"format": FORMAT_VERSION, "cmpc": __version__, "torch": str(torch.__version__), "git": git_commit()}


def rng_state() -> dict:
    """Python, numpy, torch (and every visible GPU's) generator states, as tuples, ints and tensors only."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`. GPU states are restored for the GPUs both machines have; when the number of
    visible GPUs differs (resumed on another machine shape) a warning says that GPU randomness will differ
    from an uninterrupted run."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))  # tensor (or ndarray: older checkpoints)
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda") or []
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if saved and len(saved) != visible:
        log.warning("the checkpoint holds the RNG states of %d GPUs, this machine shows %d: restoring %d; "
                    "random draws on the GPU (dropout) will differ from an uninterrupted run",
                    len(saved), visible, min(len(saved), visible))
    for index in range(min(len(saved), visible)):
        torch.cuda.set_rng_state(saved[index], index)


def load_scaler_state(scaler: torch.amp.GradScaler, saved: dict) -> None:
    """Restore the fp16 loss scale; a run that switches to ``trainer.amp=fp16`` on resume (the checkpoint's
    scaler was disabled and saved nothing) starts from a fresh scale instead."""
    if scaler.is_enabled() and not saved:
        log.warning("trainer.amp=fp16 on resume from a run without fp16: the loss scale starts afresh")
        return
    scaler.load_state_dict(saved)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's (every device's) global generators with ``seed``. The rest follows:
    torch seeds each data-loader worker's ``random``, numpy and torch generators from a base seed drawn from
    this process's torch generator, and the batch order is a function of ``seed`` and the step alone
    (:mod:`cmpc.engine.sampler`)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def deterministic_kernels(enabled: bool) -> None:
    """``trainer.deterministic``: ``torch.use_deterministic_algorithms(enabled, warn_only=True)``, so that a run
    repeated on the same machine (same device, thread count, library versions) gives the same weights and
    metrics. It makes the backward of ``features[image_index]`` (grouped batches) deterministic on a CPU and
    selects deterministic cuDNN convolutions on CUDA, which also needs ``CUBLAS_WORKSPACE_CONFIG`` (set here to
    ``:4096:8`` unless already set; it must be set before cuBLAS starts, i.e. before the first matrix product on
    the GPU); cuDNN's autotuner (``benchmark``) is switched off. An operation without a deterministic kernel
    warns once and runs anyway (docs/performance.md, "Deterministic runs", lists those the models use). torch's
    NaN-filling of fresh memory, a check for kernels that read memory they did not write (none of ours), is
    left off: it cost 6-9 % of a CPU training step. ``enabled=False`` restores torch's defaults."""
    import torch.utils.deterministic

    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.utils.deterministic.fill_uninitialized_memory = not enabled  # True is torch's default
    torch.use_deterministic_algorithms(enabled, warn_only=enabled)
