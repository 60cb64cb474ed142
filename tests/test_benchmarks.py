"""The benchmark suite runs end to end (tiny widths); its figures are reported, not asserted."""

import re
import shlex
import subprocess
import sys

import pytest
from conftest import ROOT


def test_benchmark_suite_writes_a_table_for_every_row(tmp_path):
    out = tmp_path / "bench.md"
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--tiny", "--size", "64", "--repeats", "1", "--batch", "4",
         "--per-image", "2", "--sections", "train", "infer", "video", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    for title in ("CMPC-I training", "CMPC-I inference", "CMPC-V training, K=5", "CMPC-V inference, K=5"):
        assert f"## {title}" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| configuration")]
    assert len(rows) == 15  # 5 train, 3 inference, 2 DenseCRF, 3 video train, 2 video inference
    for row in rows:
        ms, rate = (float(x) for x in re.split(r"\s*\|\s*", row)[3:5])
        assert ms > 0 and rate > 0
    assert "+ grouped backbone (4 sentences, 2 images)" in text and "DenseCRF of 4 maps, process pool" in text


def test_interleaved_rounds_report_each_rows_median_and_every_round():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import over_rounds

    runs = [{"name": "A", "batch": 8, "s": s, "sentences_per_s": 8 / s, "peak_mb": mb, "load": load}
            for s, mb, load in ((2.0, 100, 1.5), (8.0, 300, 6.0), (4.0, 200, 3.0))]
    row = over_rounds(runs)
    assert (row["s"], row["sentences_per_s"], row["peak_mb"]) == (4.0, 2.0, 300)
    assert row["rounds"] == [(4.0, 1.5), (1.0, 6.0), (2.0, 3.0)]  # in the order measured, with their loads
    done = subprocess.run([sys.executable, "benchmarks/run.py", "--sections", "train", "--rows", "6"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--rows: these sections have rows 1-5" in done.stderr


def test_rar_toy_scenes_need_the_landmark():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import numpy as np
    from rar_toy import DIRECTIONS, WORDS, axes, toy_scene

    rng, decoys = np.random.default_rng(0), 0
    for _ in range(300):
        board, tokens, target, twin, landmark, decoy = toy_scene(rng, 12)
        words = [WORDS[t] for t in tokens]
        kind, relation, landmark_kind = int(words[1][4:]), words[2], int(words[5][4:])
        assert board[kind, target[1], target[0]] == board[kind, twin[1], twin[0]] == 1  # identical twins
        assert board[landmark_kind, landmark[1], landmark[0]] == 1 and board[kind].sum() == 2
        direction = DIRECTIONS[relation]
        t_along, t_across = axes(np.subtract(target, landmark), direction)
        w_along, w_across = axes(np.subtract(twin, landmark), direction)
        assert t_along >= 2 and t_across <= 1  # the relation holds for the target ...
        assert not (w_along >= 1 and w_across <= 1)  # ... and clearly fails for its twin
        if decoy:  # "the leftmost <kind>" would name the twin
            decoys += 1
            assert w_along > t_along and w_across >= 3
    assert 100 < decoys < 200


def test_edge_mass_is_one_for_a_uniform_graph_and_the_ceiling_on_the_landmark():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from rar_attention import edge_mass

    n = 16
    source, sink = torch.zeros(n), torch.zeros(n)
    source[[0, 1]] = 1.0
    sink[[5, 6]] = torch.tensor([1.0, 0.5])  # landmark cover of two cells
    assert abs(edge_mass(torch.full((n, n), 1 / n), source, sink) - 1.0) < 1e-6
    onto = torch.zeros(n, n)
    onto[:, 5] = 1.0  # every edge lands on the fully covered landmark cell
    assert abs(edge_mass(onto, source, sink) - n / 1.5) < 1e-5
    away = torch.zeros(n, n)
    away[:, 9] = 1.0
    assert edge_mass(away, source, sink) == 0.0


@pytest.mark.slow
def test_rar_carries_a_routed_landmark_to_its_target():
    """Given the routing (every word's B2 row on the landmark), the CMPC-I level learns to tell identical twins
    apart by their landmark: the graph (eqs. 9-10) delivers the landmark's position to the target's position.
    Without the landmark the decoys stay near the position prior (about 0.65, docs/synthetic.md)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from rar_toy import run

    result = run("oracle", seed=0, steps=800, grid=12, lr=3e-3)
    assert result["decoy"] > 0.9 and result["other"] > 0.9


def test_main_job_benchmark_appends_a_row_whose_parts_add_up(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from main_job import HEADER
    from test_training import TINY_MODEL

    out = tmp_path / "main_job.md"
    earlier = "| 2026-01-01 00:00 | `abc` | `python scripts/train.py` | some CPU | 2 |" + " 1 |" * 12
    out.write_text(f"# an earlier table\n\n{HEADER}\n{earlier}\n")
    tiny = ["device=cpu", "dataset.generate.splits={train: 4, val: 2, test: 2}", "trainer.steps=3",
            "trainer.batch_size=4", "trainer.num_workers=0", "trainer.eval_every=2", *TINY_MODEL]
    done = subprocess.run([sys.executable, "benchmarks/main_job.py", "--out", str(out), *tiny], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert lines[:5] == ["# an earlier table", "", *HEADER.splitlines(), earlier] and len(lines) == 6
    assert lines[-1] in done.stdout.splitlines()
    names = [c.strip() for c in lines[2].strip("|").split("|")]
    row = dict(zip(names, (c.strip() for c in lines[-1].strip("|").split("|"))))
    assert row["command"] == f"`python scripts/train.py {' '.join(map(shlex.quote, tiny))} (fresh data)`"
    assert re.fullmatch(r"`([0-9a-f]{10}(\+dirty)?|unknown)`", row["commit"]) and row["threads"].isdigit()
    assert row["CPU"].endswith(")") and row["steps"] == "3" and float(row["sentences/s"]) > 0
    seconds = {k: float(row[k]) for k in ("total s", "start-up s", "data s", "train s", "validation s", "test s",
                                          "pictures s", "other s")}
    parts = [v for k, v in seconds.items() if k != "total s"]
    assert all(v >= 0 for v in parts) and seconds["data s"] > 0 and seconds["train s"] > 0
    assert abs(sum(parts) - seconds["total s"]) <= 0.05 * len(parts) + 1e-9  # each rounded to 0.1 s
