"""Run directories: one per run, created atomically, agreed by every torchrun process, continued only on resume.

- ``${cmpc_run_dir:PARENT,NAME}`` (the default ``hydra.run.dir`` of train/eval/predict) creates ``PARENT/NAME``
  with a plain ``mkdir`` (no ``exist_ok``), so that of two runs started in the same second the second gets
  ``NAME_1`` (then ``_2``, ...). Under torchrun rank 0 alone creates it and publishes the path in torchrun's
  own key-value store; the other ranks read it there, so the clock of no other process matters.
- :func:`open_run_dir` (called by the trainer) checks that all ranks agree, refuses a directory that already
  holds checkpoints unless the run resumes, holds a lock for the whole run (a second trainer in the same
  directory is refused), and removes temporary checkpoint files a killed run left behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from datetime import timedelta
from pathlib import Path

from omegaconf import OmegaConf

from cmpc.cli import friendly_errors
from cmpc.engine import checkpoint as ckpt
from cmpc.engine.config_check import process_count
from cmpc.engine.distributed import DistInfo, gather_objects
from cmpc.errors import ConfigError

STORE_KEY = "cmpc/run_dir"


def claim_new_dir(parent: str | Path, name: str) -> Path:
    """Create ``parent/name`` (or ``name_1``, ``name_2``, ... when taken) atomically and return it."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    for attempt in range(10_000):
        path = Path(parent) / (name if attempt == 0 else f"{name}_{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"10000 run directories named {name}* under {parent}; set hydra.run.dir=PATH")


def _agent_store():
    """The key-value store torchrun's agent hosts for its worker processes (None outside torchrun)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from torch.distributed import TCPStore

    return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                    timeout=timedelta(minutes=10))


def agreed_run_dir(parent: str, name: str) -> str:
    """The run directory of this launch: claimed once (by rank 0 under torchrun), the same path for all ranks.

    Raises:
        ConfigError: several processes (``WORLD_SIZE`` > 1) not launched by torchrun: they have no shared
            store to agree in, so ``hydra.run.dir`` must be given.
    """
    if process_count() == 1:
        return str(claim_new_dir(parent, name))
    store = _agent_store()
    if store is None:
        raise ConfigError("several processes without torchrun cannot agree on a run directory: "
                          "pass the same hydra.run.dir=PATH to every process")
    if int(os.environ.get("RANK", "0")) == 0 and not store.check([STORE_KEY]):  # a restarted group keeps its dir
        store.set(STORE_KEY, str(claim_new_dir(parent, name)))
    return store.get(STORE_KEY).decode()


def config_subdir(run_dir: str, resume) -> str:
    """``hydra.output_subdir`` of train.py: ``.hydra``, once the run may use ``run_dir``: rank 0 takes the lock
    (kept for the trainer) and :func:`refuse_without_resume` lets it in. Hydra reads this just before writing its
    config files, which would otherwise replace those of a finished or running run."""
    if os.environ.get("RANK", "0") == "0":
        RunDirLock(Path(run_dir).resolve())
    refuse_without_resume(Path(run_dir), resume not in (False, None, "false", "False"))
    return ".hydra"


def job_subdir(number, overrides, limit: int = 200) -> str:
    """A sweep job's folder name ``<number>_<overrides>`` that every file system accepts: ``/`` in override values
    (paths) becomes ``_`` (one folder per job, not a nested tree), and a name longer than ``limit`` bytes (file
    names stop at 255) is cut and ends with 8 hex digits of the full name's SHA-1, so that jobs stay distinct."""
    name = f"{number}_{overrides}".replace("/", "_") if str(overrides) else str(number)
    data = name.encode()
    if len(data) <= limit:
        return name
    digest = hashlib.sha1(data).hexdigest()[:8]
    return data[: limit - 9].decode(errors="ignore") + "_" + digest


def register_resolver() -> None:
    """Register ``${cmpc_run_dir:PARENT,NAME}`` (cached so that Hydra's repeated reads claim one directory),
    ``${cmpc_config_subdir:RUN_DIR,RESUME}`` and ``${cmpc_job_subdir:NUMBER,OVERRIDES}`` (:func:`job_subdir`).
    Their errors are one line (Hydra resolves them before main runs)."""
    if not OmegaConf.has_resolver("cmpc_run_dir"):
        resolve = friendly_errors(lambda parent, name: agreed_run_dir(str(parent), str(name)))
        OmegaConf.register_new_resolver("cmpc_run_dir", resolve, use_cache=True)
        OmegaConf.register_new_resolver("cmpc_config_subdir", friendly_errors(config_subdir))
        OmegaConf.register_new_resolver("cmpc_job_subdir", job_subdir)


class RunDirLock:
    """An exclusive ``flock`` on ``run_dir/.lock`` until :meth:`release` or the end of the process (the kernel
    releases it when the process dies, even by kill -9). A process may take the lock of a directory again
    (a training retried in the same process after an error)."""

    held: dict[Path, "RunDirLock"] = {}

    def __new__(cls, run_dir: Path):
        return cls.held.get(run_dir) or super().__new__(cls)

    def __init__(self, run_dir: Path):
        if run_dir in self.held:
            return
        self.run_dir = run_dir
        self.file = (run_dir / ".lock").open("a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            owner = self.file.read().strip() or "?"
            self.file.close()
            raise ConfigError(f"another trainer (pid {owner}) is writing to {run_dir}: wait for it, "
                              f"or give this run another hydra.run.dir") from None
        self.file.truncate(0)
        self.file.write(str(os.getpid()))
        self.file.flush()
        self.held[run_dir] = self

    def release(self) -> None:
        self.held.pop(self.run_dir, None)
        self.file.close()


def open_run_dir(run_dir: str | Path, resuming: bool, info: DistInfo) -> RunDirLock | None:
    """Make ``run_dir`` ready for this run; returns rank 0's lock (None on the other ranks).

    Raises:
        ConfigError: the ranks were given different directories; or ``run_dir`` already holds ``last.pt`` or
            ``best.pt`` and ``resuming`` is false; or another trainer holds the lock.
    """
    run_dir = Path(run_dir).resolve()
    paths = gather_objects(str(run_dir), info)
    if len(set(paths)) > 1:
        raise ConfigError(f"the {info.world_size} processes were given different run directories "
                          f"({', '.join(sorted(set(paths)))}): pass one hydra.run.dir=PATH to all of them")
    if not info.is_main:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunDirLock(run_dir)
    try:
        refuse_without_resume(run_dir, resuming)
    except ConfigError:
        lock.release()
        raise
    ckpt.remove_temporaries(run_dir)
    return lock


def refuse_without_resume(run_dir: Path, resuming: bool) -> None:
    """Raise ConfigError when ``run_dir`` holds ``last.pt`` or ``best.pt`` and the run does not resume, or when
    one of them is not a file."""
    held = [name for name in ("last.pt", "best.pt") if (run_dir / name).exists()]
    for name in held:
        if not (run_dir / name).is_file():
            raise ConfigError(f"{run_dir / name} is a directory, not a checkpoint: remove or rename it")
    if held and not resuming:
        raise ConfigError(f"{run_dir} already holds {' and '.join(held)} of an earlier run: continue it with "
                          f"resume=true, or leave hydra.run.dir unset to start a new run in a new directory")


def truncate_log(path: str | Path, step: int) -> None:
    """Keep the lines of a JSON-lines log whose ``step`` is at most ``step`` (drops lines a killed run wrote
    after its last checkpoint, and a torn last line)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
