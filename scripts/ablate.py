"""Run one of the paper's ablation tables as a Hydra sweep and print it beside the paper's numbers.

``python scripts/ablate.py table=5 [dataset=unc] [rows=1,7,15] [dir=SWEEP_DIR] [train overrides ...]``

- ``table``: 5-10 (cmpc/paper_tables.yaml); ``dataset``: any dataset config (default: the table's first, e.g.
  ``unc``; ``synthetic`` for the CPU benchmark); ``rows``: a subset of the table's rows (default: all).
- Every other argument goes to ``scripts/train.py -m`` unchanged: trainer settings, ``backbone.weights=...``,
  ``dataset.glove=...``, ``hydra/launcher=joblib`` (or submitit for SLURM; any Hydra launcher installed).
- ``dir`` (default ``${paths.runs}/ablate/<time>_table<N>_<dataset>``) gets ``ablate.json`` and one job directory per
  row, named after its experiment. Re-running with the same ``dir=`` resumes: rows with a ``metrics.json`` are kept,
  the others (unfinished, failed or never started) run again, continuing from their ``last.pt``. The table,
  dataset and rows come from ``ablate.json`` unless given again; overrides given again replace the stored ones.
- At the end the report (``scripts/report.py``) is printed and written to ``<dir>/report.md``.

A job that fails leaves ``error.txt`` in its directory and the sweep goes on with the other rows; the report shows it.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cmpc.ablation import ERROR_FILE, MANIFEST, collect, read_manifest, report, selected_rows
from cmpc.cli import friendly_errors
from cmpc.errors import ConfigError
from cmpc.paper_tables import table as paper_table

ROOT = Path(__file__).resolve().parents[1]
OWN = ("table", "dataset", "rows", "dir")


def parse(argv: list[str]) -> tuple[dict, list[str]]:
    """``(own arguments, overrides for train.py)``."""
    own, rest = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in OWN:
            own[key] = value
        else:
            rest.append(arg)
    if "-m" in rest or "--multirun" in rest:
        raise ConfigError("ablate.py runs the sweep itself: drop -m/--multirun")
    return own, rest


def plan(own: dict, overrides: list[str]) -> tuple[Path, dict]:
    """The sweep directory and its manifest (stored ``ablate.json`` merged with what was given now)."""
    stored = {}
    if "dir" in own and (Path(own["dir"]) / MANIFEST).is_file():
        stored = read_manifest(Path(own["dir"]))
        for key in ("table", "dataset"):
            if key in own and str(own[key]) != str(stored[key]):
                raise ConfigError(f"{own['dir']} holds table {stored['table']} on dataset={stored['dataset']}; "
                                  f"{key}={own[key]} needs another dir=")
    if "table" not in own and not stored:
        raise ConfigError("say which table: python scripts/ablate.py table=5 [dataset=unc] (tables 5-10)")
    tbl = paper_table(own.get("table", stored.get("table")))
    dataset = own.get("dataset", stored.get("dataset", tbl.datasets[0]))
    rows = own["rows"].split(",") if own.get("rows") else stored.get("rows")
    selected_rows(tbl, rows)  # unknown rows fail here, before anything runs
    given = [o.partition("=")[2] for o in overrides if o.startswith("paths.runs=")]
    runs = Path(given[-1] if given else os.environ.get("CMPC_RUNS_DIR", "runs"))  # train.yaml's paths.runs
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    sweep = Path(own["dir"]) if "dir" in own else runs / "ablate" / f"{stamp}_table{tbl.number}_{dataset}"
    manifest = {"table": tbl.number, "dataset": dataset, "rows": rows,
                "overrides": overrides if overrides else stored.get("overrides", [])}
    return sweep.resolve(), manifest


def pending(sweep: Path, manifest: dict) -> list[str]:
    """Experiments of the rows that have no metrics.json and did not fail in this invocation."""
    _, jobs = collect(sweep, manifest)
    return [j.row.experiment for j in jobs if j.status in ("missing", "unfinished")]


def run_sweep(sweep: Path, manifest: dict, experiments: list[str]) -> int:
    command = [
        sys.executable, str(ROOT / "scripts" / "train.py"), "-m",
        f"experiment={','.join(experiments)}", f"dataset={manifest['dataset']}",
        f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra:runtime.choices.experiment}", "resume=true",
        *manifest["overrides"],
    ]
    print("running:", " ".join(command[1:]), flush=True)
    return subprocess.run(command, cwd=ROOT).returncode


@friendly_errors
def main(argv: list[str]) -> None:
    own, overrides = parse(argv)
    sweep, manifest = plan(own, overrides)
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _, jobs = collect(sweep, manifest)
    for job in jobs:  # a re-run retries the failed rows
        if job.status == "failed":
            (sweep / job.row.experiment / ERROR_FILE).unlink(missing_ok=True)
    todo = pending(sweep, manifest)
    while todo:
        code = run_sweep(sweep, manifest, todo)
        left = pending(sweep, manifest)
        if left == todo:  # no job finished or failed: the sweep itself cannot start (its message is above)
            print(report(sweep), end="")
            raise ConfigError(f"the sweep stopped (exit status {code}) without finishing a row; see the messages above")
        todo = left  # a failed job stops Hydra's basic launcher: start the rows after it
    print(report(sweep), end="")
    print(f"report: {sweep / 'report.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
