"""Shared test helpers: the config folder and the tests folder on sys.path (fixture builders live there)."""

import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CONFIG_DIR = str(ROOT / "configs")
sys.path.insert(0, str(TESTS))
os.environ.setdefault("CMPC_RUNS_DIR", str(ROOT / ".pytest_runs"))
