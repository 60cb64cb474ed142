"""A paper table run as a sweep, read back and laid out as the paper's table (scripts/ablate.py, scripts/report.py).

Sweep directory layout (written by ``scripts/ablate.py``): ``ablate.json`` (table, dataset, rows, overrides) and
one job directory per row named after its experiment (``<sweep>/table5_row1/``) holding what ``train.py`` writes:
``.hydra/config.yaml``, ``train_log.jsonl``, ``last.pt``, ``metrics.json`` when the job finished, ``error.txt``
when it failed. A row is ``done`` (metrics.json), ``failed`` (error.txt), ``unfinished`` (started, neither file)
or ``missing`` (no job directory); :func:`render` gives every row a line, so no row silently disappears.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from cmpc.errors import ConfigError
from cmpc.paper_tables import PaperRow, PaperTable
from cmpc.paper_tables import table as paper_table

MANIFEST = "ablate.json"
ERROR_FILE = "error.txt"
COLUMN_NAMES = {"ep": "EP", "rar": "RAR", "tgfe": "TGFE", "convlstm": "CLSTM", "glove": "GloVe", "cmf": "CMF",
                "nw": "NW", "aar": "AAR", "g": "g", "n": "n", "adjacency": "adjacency"}
CHECK = "✓"


@dataclass
class Job:
    """What one row's job left behind. ``metrics``: fractions of :mod:`cmpc.metrics`; ``where``: "dataset/split"."""

    row: PaperRow
    status: str  # done | failed | unfinished | missing
    detail: str = ""
    metrics: dict | None = None
    by_kind: dict | None = None
    where: str = ""


def read_manifest(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{sweep_dir} is not an ablation sweep (no {MANIFEST}); run scripts/ablate.py table=N first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); delete it and re-run ablate.py") \
            from None


def selected_rows(tbl: PaperTable, rows: list[str] | None) -> list[PaperRow]:
    """The table's rows, or the named subset in table order (ConfigError naming the table's rows otherwise)."""
    if not rows:
        return list(tbl.rows)
    wanted = [tbl.row(name) for name in rows]  # raises for an unknown row
    return [r for r in tbl.rows if r in wanted]


def _last_step(job_dir: Path) -> str:
    log = job_dir / "train_log.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    try:
        return f"stopped at step {json.loads(lines[-1])['step']}" if lines else "no training step logged"
    except (json.JSONDecodeError, KeyError):
        return "training log unreadable"


def collect(sweep_dir: Path, manifest: dict | None = None) -> tuple[PaperTable, list[Job]]:
    """Every selected row of the sweep's table with its job's status and metrics."""
    sweep_dir = Path(sweep_dir)
    manifest = manifest or read_manifest(sweep_dir)
    tbl = paper_table(manifest["table"])
    jobs = []
    for row in selected_rows(tbl, manifest.get("rows")):
        job_dir = sweep_dir / row.experiment
        if not job_dir.is_dir():
            jobs.append(Job(row, "missing", "no job directory"))
            continue
        if (job_dir / "metrics.json").is_file():
            jobs.append(_finished(row, job_dir, manifest["dataset"]))
        elif (job_dir / ERROR_FILE).is_file():
            lines = (job_dir / ERROR_FILE).read_text().strip().splitlines()
            jobs.append(Job(row, "failed", lines[0] if lines else "no message"))
        else:
            jobs.append(Job(row, "unfinished", _last_step(job_dir)))
    return tbl, jobs


def _finished(row: PaperRow, job_dir: Path, dataset: str) -> Job:
    path = job_dir / "metrics.json"
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return Job(row, "failed", f"{path.name} unreadable ({e.msg})")
    split_key = "test" if "test" in results else "val"
    if split_key not in results:
        return Job(row, "failed", f"{path.name} holds no val/test results")
    cfg_path = job_dir / ".hydra" / "config.yaml"
    split = split_key
    if cfg_path.is_file():
        ds = OmegaConf.load(cfg_path).dataset
        split = ds.get("test_split") if split_key == "test" else ds.get("eval_split")
    part = results[split_key]
    return Job(row, "done", f"step {results.get('step', '?')}", part.get("metrics", {}), part.get("by_kind") or None,
               f"{dataset}/{split}")


def _switch(row: PaperRow, column: str) -> str:
    value = row.switches.get(column)
    if isinstance(value, bool):
        return CHECK if value else ""
    if column == "adjacency":
        return str(value).upper() if value and row.switches.get("aar") else ""
    return "" if value is None else str(value)


def _metric_title(name: str) -> str:
    return "Prec@" + name.split("@")[1] if name.startswith("prec@") else name


def _pct(value) -> str:
    return "—" if value is None else f"{100 * float(value):.2f}"


def render(tbl: PaperTable, jobs: list[Job], dataset: str) -> str:
    """The markdown table: switches with check marks, ours beside the paper's, a row per job whatever its status."""
    wheres = {j.where for j in jobs if j.status == "done"}
    where = wheres.pop() if len(wheres) == 1 else f"{dataset}/?"
    measured = list(tbl.rows[0].paper)
    compare = where in measured  # the paper measured this dataset and split: show differences
    ref = where if compare else next((k for k in measured if k.startswith(f"{dataset}/")), measured[0])
    main = "mAP" if "mAP" in tbl.metrics else "oIoU"
    first = next((j for j in jobs if j.row is tbl.rows[0]), None)

    head = ["row", *(COLUMN_NAMES[c] for c in tbl.columns), *(_metric_title(m) for m in tbl.metrics)]
    if not compare:
        head.append(f"paper {main} ({ref})")
    head += [f"{main} - row {tbl.rows[0].row} (ours / paper)", "status"]
    lines = [f"## Table {tbl.number}: {tbl.title}", "",
             f"Ours: dataset={dataset} ({where}); paper: {ref}. Percent. "
             + ("Cells: ours / paper (ours - paper)." if compare else
                "The paper did not measure this dataset: ours only, the paper's numbers for reference."), "",
             "| " + " | ".join(head) + " |",
             "|" + "---|" * (len(tbl.columns) + 1) + "---:|" * (len(head) - len(tbl.columns) - 2) + "---|"]
    for job in jobs:
        row = job.row
        paper = row.paper.get(ref, {})
        cells = [row.row, *(_switch(row, c) for c in tbl.columns)]
        for m in tbl.metrics:
            ours = job.metrics.get(m) if job.metrics else None
            cell = _pct(ours)
            if compare and m in paper:
                cell += f" / {paper[m]:.2f}" + (f" ({100 * ours - paper[m]:+.2f})" if ours is not None else "")
            cells.append(cell)
        if not compare:
            cells.append(f"{paper[main]:.2f}" if main in paper else "—")
        cells.append(_gain(job, first, tbl.rows[0].paper.get(ref, {}), paper, main))
        cells.append(job.status if job.status == "done" else f"{job.status}: {job.detail}")
        lines.append("| " + " | ".join(cells) + " |")
    kinds = _by_kind(jobs, main)
    return "\n".join(lines + kinds) + "\n"


def _gain(job: Job, first: Job | None, paper_first: dict, paper: dict, main: str) -> str:
    ours = "—"
    if job.metrics and first is not None and first.metrics and main in job.metrics and main in first.metrics:
        ours = f"{100 * (job.metrics[main] - first.metrics[main]):+.2f}"
    theirs = f"{paper[main] - paper_first[main]:+.2f}" if main in paper and main in paper_first else "—"
    return f"{ours} / {theirs}"


def _by_kind(jobs: list[Job], main: str) -> list[str]:
    """Per expression kind (synthetic benchmarks): the main metric of every finished row."""
    kinds: list[str] = []
    for job in jobs:
        for kind in job.by_kind or {}:
            if kind not in kinds:
                kinds.append(kind)
    if not kinds:
        return []
    lines = ["", f"{main} by expression kind (percent):", "",
             "| row | " + " | ".join(map(str, kinds)) + " |", "|---|" + "---:|" * len(kinds)]
    for job in jobs:
        by_kind = job.by_kind or {}
        lines.append(f"| {job.row.row} | " + " | ".join(_pct(by_kind.get(k, {}).get(main)) for k in kinds) + " |")
    return lines


def report(sweep_dir: Path) -> str:
    """The markdown report of a sweep directory (also written to ``<sweep>/report.md``)."""
    manifest = read_manifest(sweep_dir)
    tbl, jobs = collect(sweep_dir, manifest)
    text = render(tbl, jobs, manifest["dataset"])
    (Path(sweep_dir) / "report.md").write_text(text)
    return text


__all__ = ["Job", "collect", "render", "report", "read_manifest", "selected_rows"]
