"""The benchmark suite runs end to end (tiny widths); its figures are reported, not asserted."""

import re
import subprocess
import sys

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
