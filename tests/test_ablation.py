"""Ablation sweeps end in the paper's table: scripts/report.py on a written sweep, scripts/ablate.py end to end."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmpc.ablation import collect, report
from cmpc.cli import failure_note
from cmpc.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_job(sweep, experiment, split="val", eval_split="val", **metrics):
    job = sweep / experiment
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(f"dataset:\n  name: unc\n  eval_split: {eval_split}\n")
    (job / "metrics.json").write_text(json.dumps({"step": 700000, split: {"metrics": {**metrics, "n": 10834},
                                                                          "by_kind": {}}}))
    return job


def fake_table8_sweep(sweep):
    sweep.mkdir()
    (sweep / "ablate.json").write_text(json.dumps({"table": 8, "dataset": "unc", "rows": None, "overrides": []}))
    write_job(sweep, "table8_n0", oIoU=0.5912, mIoU=0.6)
    write_job(sweep, "table8_n1", oIoU=0.6073)
    failed = sweep / "table8_n2"
    failed.mkdir()
    (failed / "error.txt").write_text("CUDA out of memory\n")
    unfinished = sweep / "table8_n3"  # started, killed: a log, no metrics
    unfinished.mkdir()
    (unfinished / "train_log.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n')
    return sweep


def test_report_of_a_sweep_is_the_papers_table_with_every_row(tmp_path):
    sweep = fake_table8_sweep(tmp_path / "sweep")
    text = report(sweep)
    assert text == """\
## Table 8: TGFE rounds n, UNC val (CMPC-I without CMF, Res3/4/5 + ConvLSTM, no GloVe)

Ours: dataset=unc (unc/val); paper: unc/val. Percent. Cells: ours / paper (ours - paper).

| row | TGFE | n | oIoU | oIoU - row CMPC-I only (ours / paper) | status |
|---|---|---|---:|---:|---|
| CMPC-I only |  |  | 59.12 / 59.85 (-0.73) | +0.00 / +0.00 | done |
| n = 1 | ✓ | 1 | 60.73 / 60.72 (+0.01) | +1.61 / +0.87 | done |
| n = 2 | ✓ | 2 | — / 61.07 | — / +1.22 | failed: CUDA out of memory |
| n = 3 | ✓ | 3 | — / 61.25 | — / +1.40 | unfinished: stopped at step 2 |
"""
    assert (sweep / "report.md").read_text() == text
    shutil.rmtree(sweep / "table8_n3")
    assert "| n = 3 | ✓ | 3 | — / 61.25 | — / +1.40 | missing: no job directory |" in report(sweep)


def test_report_of_a_dataset_the_paper_did_not_measure_shows_ours_and_kinds(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "ablate.json").write_text(json.dumps({"table": 10, "dataset": "synthetic", "rows": ["g = 0", "g = 1"],
                                                   "overrides": []}))
    for name, value in (("table10_g0", 0.25), ("table10_g1", 0.5)):
        job = write_job(sweep, name, split="test", oIoU=value)
        (job / ".hydra" / "config.yaml").write_text("dataset:\n  name: synthetic\n  test_split: test\n")
        results = json.loads((job / "metrics.json").read_text())
        results["test"]["by_kind"] = {"entity": {"oIoU": value}, "relation": {"oIoU": value / 2}}
        (job / "metrics.json").write_text(json.dumps(results))
    lines = report(sweep).splitlines()
    assert lines[2].startswith("Ours: dataset=synthetic (synthetic/test); paper: unc/val. Percent. The paper did not")
    assert lines[4:8] == [
        "| row | g | oIoU | paper oIoU (unc/val) | oIoU - row g = 0 (ours / paper) | status |",
        "|---|---|---:|---:|---:|---|",
        "| g = 0 | 0 | 25.00 | 49.06 | +0.00 / +0.00 | done |",
        "| g = 1 | 1 | 50.00 | 55.38 | +25.00 / +6.32 | done |",
    ]
    assert lines[-4:] == ["| row | entity | relation |", "|---|---:|---:|", "| g = 0 | 25.00 | 12.50 |",
                          "| g = 1 | 50.00 | 25.00 |"]


def test_report_script_says_what_to_do(tmp_path, capsys):
    main = load_script("report").main
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no ablate.json" in err and "ablate.py table=N" in err
    with pytest.raises(SystemExit):
        main([])


def test_failure_note_records_one_line_and_reraises(tmp_path):
    with pytest.raises(ConfigError):
        with failure_note(tmp_path / "a"):
            raise ConfigError("dataset.root does not exist: /x")
    assert (tmp_path / "a" / "error.txt").read_text() == "dataset.root does not exist: /x\n"
    with pytest.raises(RuntimeError):
        with failure_note(tmp_path / "b"):
            raise RuntimeError("CUDA out of memory\nmore lines")
    assert (tmp_path / "b" / "error.txt").read_text() == "RuntimeError: CUDA out of memory\n"
    with failure_note(tmp_path / "c"):
        pass
    assert not (tmp_path / "c").exists()


def test_ablate_arguments_are_checked_before_anything_runs(tmp_path):
    ablate = load_script("ablate")
    sweep = fake_table8_sweep(tmp_path / "sweep")
    with pytest.raises(ConfigError, match="holds table 8 on dataset=unc; table=5 needs another dir="):
        ablate.plan({"table": "5", "dir": str(sweep)}, [])
    with pytest.raises(ConfigError, match="table 5 has no row '16'"):
        ablate.plan({"table": "5", "rows": "1,16"}, [])
    with pytest.raises(ConfigError, match="say which table"):
        ablate.plan({}, [])
    path, manifest = ablate.plan({"dir": str(sweep)}, ["hydra/launcher=joblib"])  # resume: the stored table
    assert path == sweep.resolve() and manifest == {"table": 8, "dataset": "unc", "rows": None,
                                                    "overrides": ["hydra/launcher=joblib"]}
    assert ablate.pending(sweep, manifest) == ["table8_n3"]  # the failed row waits for a re-run of ablate.py
    path, manifest = ablate.plan({"table": "10", "dataset": "gref"}, [f"paths.runs={tmp_path / 'runs'}"])
    assert path.parent == (tmp_path / "runs" / "ablate").resolve() and path.name.endswith("_table10_gref")
    assert manifest["rows"] is None and manifest["overrides"] == [f"paths.runs={tmp_path / 'runs'}"]


TINY_RUN = [
    "device=cpu", "dataset.generate.splits={train: 6, val: 3, test: 3}", "trainer.steps=2", "trainer.batch_size=4",
    "trainer.num_workers=0", "trainer.eval_every=0", "trainer.eval_batch_size=8", "model.visual_dim=16",
    "model.word_dim=16", "model.dim=16", "model.out_dim=16", "model.word_classifier_dim=8",
    "model.convlstm_hidden=16", "backbone=small", "backbone.widths=[8,16,16,16]",
]


@pytest.mark.slow
def test_a_two_row_sweep_runs_reports_and_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    command = [sys.executable, str(ROOT / "scripts" / "ablate.py"), "table=5", "rows=1,2", "dataset=synthetic",
               f"dir={sweep}", f"paths.data={tmp_path / 'data'}", *TINY_RUN]
    env = {"OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    _, jobs = collect(sweep)
    assert [(j.row.row, j.status, j.where) for j in jobs] == [("1", "done", "synthetic/test"),
                                                              ("2", "done", "synthetic/test")]
    assert "| 2 | ✓ |" in first.stdout and "oIoU by expression kind" in first.stdout
    assert (sweep / "report.md").read_text() in first.stdout

    kept = (sweep / "table5_row1" / "metrics.json").stat().st_mtime_ns
    (sweep / "table5_row2" / "metrics.json").unlink()  # row 2 did not finish
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "ablate.py"), f"dir={sweep}"],
                           capture_output=True, text=True, env={**os.environ, **env}, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "experiment=table5_row2 " in again.stdout and "table5_row1," not in again.stdout
    assert "resumed from" in (sweep / "table5_row2" / "train.log").read_text()  # continued from row 2's last.pt
    assert (sweep / "table5_row1" / "metrics.json").stat().st_mtime_ns == kept
    assert [j.status for j in collect(sweep)[1]] == ["done", "done"]
