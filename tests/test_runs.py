"""Runs that survive: checkpoints that cannot run code, run directories that never collide, logs that hold each
step once after kill -9, resume checks, disk full, workers that die with their trainer (issue 15)."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from test_training import _run, compose_cfg, tiny_overrides

from cmpc.engine import checkpoint as ckpt
from cmpc.engine.builders import load_trained
from cmpc.engine.distributed import DistInfo
from cmpc.engine.rundir import STORE_KEY, agreed_run_dir, claim_new_dir, open_run_dir, truncate_log
from cmpc.engine.trainer import train
from cmpc.errors import ConfigError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-step tiny run: ``(data folder, run folder)``."""
    base = tmp_path_factory.mktemp("trained")
    train(compose_cfg(tiny_overrides(base / "data", steps=2)), base / "run")
    return base / "data", base / "run"


class RunsCode:
    """A pickle payload: loading it would create the folder ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, trained):
    data, run = trained
    marker = tmp_path / "marker"
    state = torch.load(run / "last.pt", weights_only=True)
    state["history"] = [RunsCode(marker)]
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="pickled Python objects"):
        ckpt.load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="pickled Python objects"):  # resume reads it the same way
        train(compose_cfg(tiny_overrides(data, steps=2, extra=[f"resume={tmp_path / 'evil.pt'}"])), tmp_path / "r")
    evaluated = _run([sys.executable, "scripts/eval.py", f"checkpoint={tmp_path / 'evil.pt'}"])
    assert evaluated.returncode == 2 and len(evaluated.stderr.strip().splitlines()) == 1, evaluated.stderr[-2000:]
    assert "pickled Python objects" in evaluated.stderr
    assert not marker.exists()


def test_foreign_files_best_pt_and_directories_are_refused_with_one_line(tmp_path, trained):
    data, run = trained
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    for path, message in [(tmp_path / "foreign.pt", "not a cmpc training checkpoint"),
                          (run / "best.pt", "has no optimizer.*resume from the run's last.pt")]:
        with pytest.raises(ConfigError, match=message):
            train(compose_cfg(tiny_overrides(data, steps=2, extra=[f"resume={path}"])), tmp_path / path.stem)
    with pytest.raises(ConfigError, match="not a cmpc training checkpoint"):
        load_trained(tmp_path / "foreign.pt")
    (tmp_path / "dir_run" / "last.pt").mkdir(parents=True)
    with pytest.raises(ConfigError, match="is a directory"):  # before any training step
        train(compose_cfg(tiny_overrides(data, steps=2, extra=["resume=true"])), tmp_path / "dir_run")
    with pytest.raises(ConfigError, match="is a directory"):  # without resume too
        train(compose_cfg(tiny_overrides(data, steps=2)), tmp_path / "dir_run")
    with pytest.raises(ConfigError, match="is a directory"):
        ckpt.load_checkpoint(tmp_path / "dir_run" / "last.pt")
    edited = torch.load(run / "best.pt", weights_only=True)
    del edited["model"][next(iter(edited["model"]))]  # as if written by other code
    edited["model"]["head.extra"] = torch.zeros(1)
    torch.save(edited, tmp_path / "edited.pt")
    with pytest.raises(ConfigError, match="does not fit the model.*1 tensors missing.*1 unexpected \\(head.extra\\)"):
        load_trained(tmp_path / "edited.pt")
    future = torch.load(run / "best.pt", weights_only=True)
    future["meta"]["format"] = ckpt.FORMAT_VERSION + 1
    torch.save(future, tmp_path / "future.pt")
    with pytest.raises(ConfigError, match="newer cmpc.*update cmpc"):
        load_trained(tmp_path / "future.pt")


def test_best_pt_holds_what_evaluation_needs_and_last_pt_what_resuming_needs(trained):
    _, run = trained
    best, last = (torch.load(run / name, weights_only=True) for name in ("best.pt", "last.pt"))
    assert set(ckpt.RESUME_KEYS) <= set(last) and not {"optimizer", "rng", "history", "scaler"} & set(best)
    for state in (best, last):
        assert state["meta"]["format"] == ckpt.FORMAT_VERSION and state["meta"]["torch"] == torch.__version__
        assert state["meta"]["git"] is None or len(state["meta"]["git"]) >= 40
    env = [json.loads(line) for line in (run / "environment.jsonl").read_text().splitlines()]
    assert len(env) == 1 and env[0]["start_step"] == 0 and env[0]["cpu"] and env[0]["torch"] == torch.__version__


def test_a_checkpoint_written_before_a_config_key_existed_still_evaluates(tmp_path, trained):
    _, run = trained
    state = torch.load(run / "best.pt", weights_only=True)
    trained_with = state["config"]["model"].pop("routing_scale")  # as if written before the key existed
    torch.save(state, tmp_path / "old.pt")
    old, cfg, vocab = load_trained(tmp_path / "old.pt")
    new, _, _ = load_trained(run / "best.pt")
    assert cfg.model.routing_scale == trained_with == "peak"  # today's default of dataset=synthetic
    words = torch.as_tensor(vocab.encode("the red circle left of the blue square", 20))[None]
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(old(image, words)["logits"], new(image, words)["logits"])


def test_same_second_runs_get_their_own_directories_and_all_ranks_share_one(tmp_path, monkeypatch):
    first, second = claim_new_dir(tmp_path, "stamp_run"), claim_new_dir(tmp_path, "stamp_run")
    assert (first.name, second.name) == ("stamp_run", "stamp_run_1")
    # under torchrun: rank 0 claims, the others read its choice from the agent's store whatever their clock says
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(store.port))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    chosen = agreed_run_dir(str(tmp_path), "stamp_run")
    monkeypatch.setenv("RANK", "1")
    assert agreed_run_dir(str(tmp_path), "a_second_later") == chosen == str(tmp_path / "stamp_run_2")
    assert store.get(STORE_KEY).decode() == chosen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stamp_run", "stamp_run_1", "stamp_run_2"]
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE")
    with pytest.raises(ConfigError, match="hydra.run.dir"):  # several processes without torchrun
        agreed_run_dir(str(tmp_path), "stamp_run")


def test_two_train_py_in_the_same_second_write_two_directories(tmp_path, trained):
    runs, data = tmp_path / "runs", trained[0]
    same_second = f"hydra.run.dir=${{cmpc_run_dir:{runs},stamp_synthetic_cmpc_i}}"  # train.yaml's, clock fixed
    args = [sys.executable, "scripts/train.py", *tiny_overrides(data, steps=2), "dataset.test_split=null", same_second]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CMPC_RUNS_DIR": str(runs)}
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert all(p.wait(timeout=300) == 0 for p in procs), [p.stderr.read()[-2000:] for p in procs]
    dirs = sorted(runs.iterdir())
    assert [d.name for d in dirs] == ["stamp_synthetic_cmpc_i", "stamp_synthetic_cmpc_i_1"]
    assert all((d / "last.pt").is_file() for d in dirs)
    for d in dirs:
        assert [json.loads(line)["step"] for line in (d / "train_log.jsonl").read_text().splitlines()] == [1, 2]


def test_a_directory_with_checkpoints_continues_only_with_resume_and_only_one_trainer_at_a_time(tmp_path, trained):
    data, run = trained
    before = (run / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds last.pt and best.pt.*resume=true"):
        train(compose_cfg(tiny_overrides(data, steps=2)), run)
    assert (run / "last.pt").read_bytes() == before
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, sys, time
        f = open({str(tmp_path / '.lock')!r}, "a+"); fcntl.flock(f, fcntl.LOCK_EX); f.write("4242"); f.flush()
        print("locked", flush=True); time.sleep(60)""")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=r"another trainer \(pid 4242\)"):
            open_run_dir(tmp_path, resuming=False, info=DistInfo())
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / ".last.pt.abc123").write_bytes(b"half a checkpoint")
    open_run_dir(tmp_path, resuming=False, info=DistInfo()).release()  # free again; leftovers removed
    assert not (tmp_path / ".last.pt.abc123").exists()


def test_resume_checks_vocabulary_model_and_schedule(tmp_path, trained, caplog):
    data, run = trained
    state = torch.load(run / "last.pt", weights_only=True)
    words = state["vocab"]
    cases = {"size": (words + ["zebra"], "vocabulary has \\d+ words, this dataset builds \\d+"),
             "order": (words[:2] + [words[3], words[2]] + words[4:], "same words in another order \\(word 2")}
    for name, (vocab, message) in cases.items():
        torch.save({**state, "vocab": vocab}, tmp_path / f"{name}.pt")
        with pytest.raises(ConfigError, match=message):
            train(compose_cfg(tiny_overrides(data, steps=4, extra=[f"resume={tmp_path / name}.pt"])), tmp_path / name)
    with pytest.raises(ConfigError, match="model.dim 16 in the checkpoint, 8 now"):
        train(compose_cfg(tiny_overrides(data, steps=4, extra=[f"resume={run / 'last.pt'}", "model.dim=8"])),
              tmp_path / "width")
    result = train(compose_cfg(tiny_overrides(data, steps=3, extra=[f"resume={run / 'last.pt'}"])), tmp_path / "longer")
    assert "trainer.steps" in caplog.text and "learning-rate schedule from step 2" in caplog.text
    assert len(result["history"]) == 3


def test_disk_full_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.atomic_save({"step": 1}, path)

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(ConfigError) as err:
        ckpt.atomic_save({"step": 2}, path)
    assert str(path) in str(err.value) and "No space left on device" in str(err.value)
    assert "previous one is intact" in str(err.value) and "\n" not in str(err.value)
    assert torch.load(path, weights_only=True) == {"step": 1} and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    with pytest.raises(ConfigError, match="there was no earlier one"):
        ckpt.atomic_save({"step": 2}, tmp_path / "best.pt")


def test_resume_on_another_machine_shape(monkeypatch, caplog):
    # RNG states of 4 GPUs restored on a machine that shows 1: the shared ones, and a warning (was IndexError)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: restored.append((int(state[0]), index)))
    four_gpus = [torch.tensor([i], dtype=torch.uint8) for i in range(4)]
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: four_gpus)
    ckpt.set_rng_state(ckpt.rng_state())
    assert restored == [(0, 0)] and "RNG states of 4 GPUs, this machine shows 1" in caplog.text
    # switching to fp16 on resume: the disabled scaler saved nothing; the enabled one starts afresh
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    ckpt.load_scaler_state(scaler, torch.amp.GradScaler("cpu", enabled=False).state_dict())
    assert scaler.get_scale() == 65536.0
    # channels-last has no 5-D layout: I3D's Conv3d weights get one line
    from cmpc.engine.trainer import _to_channels_last

    with pytest.raises(ConfigError, match="trainer.channels_last=false"):
        _to_channels_last(torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.Conv2d(4, 4, 1)))


def test_log_truncation_keeps_each_step_once(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in [1, 2, 3, 4]) + '{"step": 5, "lo')
    truncate_log(log, 2)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'


KILL_DURING_SAVE = """
import os, signal, torch
_save, _calls = torch.save, [0]
def save(obj, f, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] == int(os.environ["KILL_AT_SAVE"]):  # write part of the file, then die mid-write
        f.write(b"PK\\x03\\x04 half a checkpoint"); f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *args, **kwargs)
torch.save = save
"""


def _tensorboard_losses(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("train/loss")]


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_then_resume_ends_bitwise_equal(tmp_path):
    data = tmp_path / "data"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_DURING_SAVE)
    common = [sys.executable, "scripts/train.py",
              *tiny_overrides(data, steps=6, extra=["trainer.checkpoint_every=2", "trainer.eval_every=3"])]
    full = _run(common + [f"hydra.run.dir={tmp_path / 'full'}"])
    assert full.returncode == 0, full.stderr[-3000:]
    run = tmp_path / "killed"
    env = {"PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "KILL_AT_SAVE": "3"}
    killed = _run(common + [f"hydra.run.dir={run}"], env=env)  # saves: last@2, best@3, last@4 <- killed
    assert killed.returncode == -signal.SIGKILL
    assert ckpt.load_checkpoint(run / "last.pt", need=ckpt.RESUME_KEYS)["step"] == 2
    assert list(run.glob(".last.pt.*")) and len((run / "train_log.jsonl").read_text().splitlines()) == 4  # flushed
    config = (run / ".hydra" / "config.yaml").read_text()
    refused = _run(common + [f"hydra.run.dir={run}", "seed=5"])  # without resume=true: nothing is touched
    assert refused.returncode == 2 and "resume=true" in refused.stderr.strip().splitlines()[-1]
    assert (run / ".hydra" / "config.yaml").read_text() == config
    resumed = _run(common + [f"hydra.run.dir={run}", "resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(run.glob(".*.pt.*")), "temporary checkpoint files are removed on start"
    assert (run / "train_log.jsonl").read_text() == (tmp_path / "full" / "train_log.jsonl").read_text()
    a, b = (torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("full", "killed"))
    assert a["history"] == b["history"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("full", "killed")]
    assert all(m.pop("timing")["total_s"] > 0 for m in metrics)  # wall times differ; everything else is equal
    assert metrics[0] == metrics[1]
    assert _tensorboard_losses(run) == _tensorboard_losses(tmp_path / "full")  # each step once
    assert [json.loads(line)["start_step"] for line in (run / "environment.jsonl").read_text().splitlines()] == [0, 2]


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_data_loader_workers_die_with_a_killed_trainer(tmp_path):
    data = tmp_path / "data"
    args = [sys.executable, "scripts/train.py", *tiny_overrides(data, steps=100000, extra=["trainer.num_workers=2"]),
            f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    trainer = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "run" / "train_log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and log.read_text().count("\n") >= 2):
        time.sleep(0.2)
    workers = _children(trainer.pid)
    assert len(workers) >= 2, "the trainer should be running with 2 data-loader workers"
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    deadline = time.time() + 5
    while time.time() < deadline and any(_running(w) for w in workers):
        time.sleep(0.1)
    alive = [w for w in workers if _running(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, f"data-loader workers {alive} outlived the killed trainer by 5 s"


DELAY_RANK_1 = """
import os, time
if os.environ.get("LOCAL_RANK") == "1":  # this process reads the clock seconds after rank 0
    time.sleep(2.5)
"""


@pytest.mark.slow
def test_torchrun_ranks_share_one_run_directory_whatever_their_clocks(tmp_path, trained):
    import socket

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(DELAY_RANK_1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = tmp_path / "runs"
    ddp = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                "scripts/train.py", *tiny_overrides(trained[0], steps=2), "dataset.test_split=null"],
               env={"CMPC_RUNS_DIR": str(runs), "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    (run,) = runs.iterdir()  # one directory, not one per second the ranks started in
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()
