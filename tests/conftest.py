"""Shared test helpers: the config folder and the tests folder on sys.path (fixture builders live there)."""

import os
import socket
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CONFIG_DIR = str(ROOT / "configs")
sys.path.insert(0, str(TESTS))
os.environ.setdefault("CMPC_RUNS_DIR", str(ROOT / ".pytest_runs"))


def free_port() -> int:
    """A TCP port nobody listens on right now (for torchrun's rendezvous; others may run DDP on this machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


MALLOC_DEBUG = "/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"


def heap_checks() -> dict[str, str]:
    """Environment for a child process that runs under glibc's heap checks (each free and malloc verifies the
    chunk it touches, so an out-of-bounds write aborts near its cause), where the machine has them."""
    return {"LD_PRELOAD": MALLOC_DEBUG, "MALLOC_CHECK_": "3"} if os.path.exists(MALLOC_DEBUG) else {}
