"""scripts/make_synthetic.py: Hydra ``key=value`` overrides of configs/make_synthetic.yaml; the former ``--flags``
still work, print one deprecation line with the equivalent command, and that command writes the same bytes."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cmpc.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_synthetic.py"


def _run(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True)


def _digests(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_old_flags_print_the_new_command_which_writes_the_same_bytes(tmp_path):
    old = _run(["--root", "old dir", "--train", "2", "--val", "1", "--test", "0", "--kinds", '{"relation": 1}',
                "--relation-gap", "0.2", "0.35", "--negative", "0.5", "--quiet", "--stats"], tmp_path)
    assert old.returncode == 0, old.stderr
    lines = old.stderr.strip().splitlines()
    assert len(lines) == 1 and "deprecated" in lines[0], old.stderr
    assert "| relation |" in old.stdout  # --stats still prints the table
    command = shlex.split(lines[0].split("run: ", 1)[1])
    assert command[:2] == ["python", "scripts/make_synthetic.py"]
    overrides = [a if not a.startswith("root=") else "root=new" for a in command[2:]]
    assert "root='old dir'" in command[2:] and "splits={train: 2, val: 1, test: 0}" in overrides
    new = _run(overrides, tmp_path)
    assert new.returncode == 0 and not new.stderr.strip(), new.stderr
    old_files, new_files = _digests(tmp_path / "old dir"), _digests(tmp_path / "new")
    assert len(old_files) == 3 + 6 and old_files == new_files  # 3 images, 4 files, stamp, marker


def _script():
    spec = importlib.util.spec_from_file_location("make_synthetic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_input_is_one_line_and_status_2(tmp_path):
    r = _run([], tmp_path)
    assert r.returncode == 2 and r.stderr == "error: make_synthetic: root is not set; pass the output folder, " \
        "e.g. root=data/synthetic\n", r.stderr
    ms = _script()
    base = {"root": str(tmp_path / "x"), "video": False, "force": False, "stats": False, "grid": None,
            "progress": False}
    with pytest.raises(ConfigError, match=re.escape("unknown parameter(s) ['num_frames']")):
        ms.make({**base, "num_frames": 4})
    with pytest.raises(ConfigError, match="--test is not a split of the video benchmark"):
        ms.legacy_overrides(["--root", "x", "--video", "--test", "3"])
    with pytest.raises(ConfigError, match="is not JSON"):
        ms.legacy_overrides(["--root", "x", "--kinds", "{entity: 1}"])
    assert not (tmp_path / "x").exists()
    assert ms.is_legacy(["--root=x"]) and not ms.is_legacy(["root=--root", "--cfg", "job"])
