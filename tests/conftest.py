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
