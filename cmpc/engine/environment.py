"""What a run ran on: versions, git commit, CPU and GPU kinds, command line (``environment.jsonl`` in the run
directory, one line per start or resume, so a run resumed on another machine shows both)."""

from __future__ import annotations

import functools
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]


# what does not change a run: documentation and the benchmark reports that runs append to (git pathspecs)
NOT_CODE = (":(exclude,glob)**/*.md", ":(exclude)docs", ":(exclude)benchmarks/results")


@functools.lru_cache(maxsize=4)
def git_commit(root: Path = ROOT) -> str | None:
    """The commit of the cmpc checkout at ``root``: ``<sha>``, or ``<sha>+dirty`` when tracked files other than
    documentation and benchmark reports (:data:`NOT_CODE`: ``*.md``, ``docs/``, ``benchmarks/results/``) have
    uncommitted changes; None outside a git checkout or without git."""
    if not (root / ".git").exists():  # an installed package: not the commit of whatever repository encloses it
        return None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("+dirty" if dirty else "")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(step: int) -> dict:
    """One record of the machine and software a run (re)starts on at ``step``."""
    from cmpc import __version__

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "start_step": step, "host": socket.gethostname(),
        "command": [sys.executable, *sys.argv], "cwd": os.getcwd(),
        "cmpc": __version__, "git": git_commit(), "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "cuda": torch.version.cuda, "platform": platform.platform(),
        "cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "gpus": gpus,
        "env": {k: v for k, v in os.environ.items() if k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                                                              "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                                                              "CUBLAS_WORKSPACE_CONFIG", "WORLD_SIZE")},
    }


def record_environment(run_dir: str | Path, step: int) -> None:
    """Append :func:`environment` to ``run_dir/environment.jsonl``."""
    with (Path(run_dir) / "environment.jsonl").open("a") as f:
        f.write(json.dumps(environment(step)) + "\n")
