"""The main job as a benchmark: ``python scripts/train.py`` timed part by part, one markdown row per run.

    python benchmarks/main_job.py [--keep-data] [--run-dir DIR] [--out benchmarks/results/main_job.md] [OVERRIDE ...]

Runs ``scripts/train.py`` with the Hydra overrides given (none: the main job) in a process of its own, by default
on a fresh temporary data folder, so that generating the synthetic benchmark is part of the time
(``--keep-data``: the configured data folder, ``paths.data``, generated there only if missing). The run
directory is a temporary one, removed afterwards, unless ``--run-dir`` names one to keep (predictions.png, ...).

The split comes from the ``timing`` the trainer writes into ``metrics.json`` (:func:`cmpc.engine.trainer.train`):
data (generation on first use, indexing, vocabulary, GloVe), training (steps, checkpoints; sentences/s), the
validation evaluations, the test evaluation, the pictures; "other" is the rest of the trainer (model building,
data-loader start); start-up is the process's wall time outside the trainer (interpreter, imports, Hydra). The
parts add up to the total wall time. The CPU kind (torch's ``get_cpu_capability()``, ``ONEDNN_MAX_CPU_ISA`` /
``ATEN_CPU_CAPABILITY``) and thread count are those the run recorded in ``environment.jsonl``.

Appends one row (UTC date, git commit, command, machine, figures) to ``--out``, writing the table's header when
the file is new, and prints the header and the row. Exit status: the training's when it fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("data_s", "train_s", "validate_s", "test_s", "pictures_s")
HEADER = ("| date (UTC) | commit | command | CPU | threads | total s | start-up s | data s | train s | steps | "
          "sentences/s | validation s | test s | pictures s | other s | test oIoU % | prec@0.5 % |\n"
          "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides passed to scripts/train.py")
    ap.add_argument("--keep-data", action="store_true", help="use the configured data folder (no fresh generation)")
    ap.add_argument("--run-dir", default=None, help="keep the run directory here (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "main_job.md"),
                    help="markdown file the row is appended to")
    return ap.parse_args(argv)


def cpu_kind(env: dict) -> str:
    """``<model name> (<torch capability>[, ONEDNN_MAX_CPU_ISA=...][, ATEN_CPU_CAPABILITY=...])`` of one
    ``environment.jsonl`` record."""
    limits = [f"{k}={env['env'][k]}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if env["env"].get(k)]
    return f"{env['cpu']} ({', '.join([env['cpu_capability'], *limits])})"


def split_times(wall: float, timing: dict) -> dict:
    """The row's seconds: ``total`` (``wall``), ``startup`` (outside the trainer), each of :data:`PARTS` (0 when the
    run had no such part) and ``other`` (the trainer's rest); they add up to ``total``."""
    parts = {k: float(timing.get(k, 0.0)) for k in PARTS}
    return {"total": wall, "startup": wall - timing["total_s"], **parts,
            "other": timing["total_s"] - sum(parts.values())}


def row(date: str, commit: str, command: str, env: dict, times: dict, timing: dict, test: dict) -> str:
    """One markdown table row under :data:`HEADER`."""
    metric = (lambda k: f"{100 * test[k]:.2f}") if test else (lambda k: "-")
    cells = [date, f"`{commit}`", f"`{command}`", cpu_kind(env), str(env["torch_threads"]),
             *(f"{times[k]:.1f}" for k in ("total", "startup", "data_s", "train_s")), str(timing.get("steps", 0)),
             f"{timing.get('sentences_per_s', 0.0):.1f}",
             *(f"{times[k]:.1f}" for k in ("validate_s", "test_s", "pictures_s", "other")),
             metric("oIoU"), metric("prec@0.5")]
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="cmpc_main_job_"))
    run_dir = Path(args.run_dir).resolve() if args.run_dir else scratch / "run"
    internal = ([] if args.keep_data else [f"paths.data={scratch / 'data'}"]) + [f"hydra.run.dir={run_dir}"]
    shown = " ".join(["python scripts/train.py", *map(shlex.quote, args.overrides)])
    shown += " (existing data)" if args.keep_data else " (fresh data)"
    try:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *args.overrides, *internal],
                              cwd=ROOT)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(f"error: scripts/train.py failed (exit status {done.returncode}); no row written", file=sys.stderr)
            return done.returncode
        if not (run_dir / "metrics.json").is_file():
            print(f"error: {run_dir} has no metrics.json (the run stopped before its end: trainer.stop_at_step?); "
                  f"no row written", file=sys.stderr)
            return 1
        metrics = json.loads((run_dir / "metrics.json").read_text())
        env = json.loads((run_dir / "environment.jsonl").read_text().splitlines()[-1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    timing = metrics["timing"]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    commit = env.get("git") or "unknown"
    commit = commit.split("+")[0][:10] + ("+dirty" if commit.endswith("+dirty") else "")
    line = row(date, commit, shown, env, split_times(wall, timing), timing,
               (metrics.get("test") or {}).get("metrics"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.is_file() or not out.read_text().strip()
    with out.open("a") as f:
        if new:
            f.write("# The main job, timed (benchmarks/main_job.py)\n\n"
                    "Wall seconds of `scripts/train.py`, split as benchmarks/main_job.py's docstring says.\n\n"
                    f"{HEADER}\n")
        f.write(line + "\n")
    print(f"\n{HEADER}\n{line}\n(appended to {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
