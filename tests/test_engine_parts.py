"""Optimiser groups, learning-rate schedules, the step sampler, atomic checkpoints, deterministic kernels."""

import os
import shutil
import subprocess

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cmpc.engine.checkpoint import atomic_save, deterministic_kernels, load_checkpoint
from cmpc.engine.optim import build_optimizer, learning_rate, parameter_groups, set_learning_rate
from cmpc.engine.sampler import StepBatchSampler
from cmpc.errors import ConfigError

SCHEDULE = OmegaConf.create({"lr": 2.5e-4, "end_lr": 1e-5, "schedule": "poly", "poly_power": 0.9,
                             "decay_steps": 800, "steps": 700, "step_at": 0.8, "step_gamma": 0.1})


def test_poly_decay_matches_the_official_formula():
    assert learning_rate(0, SCHEDULE) == pytest.approx(2.5e-4)
    assert learning_rate(800, SCHEDULE) == pytest.approx(1e-5)
    assert learning_rate(5000, SCHEDULE) == pytest.approx(1e-5)
    assert learning_rate(400, SCHEDULE) == pytest.approx((2.5e-4 - 1e-5) * 0.5 ** 0.9 + 1e-5)


def test_step_schedule_divides_by_ten_at_eighty_percent():
    cfg = OmegaConf.merge(SCHEDULE, {"schedule": "step", "lr": 5e-4, "steps": 200})
    assert learning_rate(159, cfg) == pytest.approx(5e-4)
    assert learning_rate(160, cfg) == pytest.approx(5e-5)
    with pytest.raises(ConfigError):
        learning_rate(0, OmegaConf.merge(SCHEDULE, {"schedule": "cosine"}))


def test_weight_decay_only_on_trained_conv_and_linear_weights_and_biases_at_twice_the_rate():
    model = nn.ModuleDict({
        "conv": nn.Conv2d(3, 4, 1), "fc": nn.Linear(4, 2), "norm": nn.LayerNorm(4),
        "emb": nn.Embedding(5, 4), "lstm": nn.LSTM(4, 4), "frozen": nn.Linear(4, 4),
    })
    model["frozen"].requires_grad_(False)
    groups = parameter_groups(model, lr=1.0, weight_decay=5e-4, bias_lr_mult=2.0)
    decay, no_decay, biases = groups
    def ids(ps):
        return {id(p) for p in ps}
    assert ids(decay["params"]) == {id(model["conv"].weight), id(model["fc"].weight)}
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == biases["weight_decay"] == 0
    assert id(model["emb"].weight) in ids(no_decay["params"]) and id(model["norm"].weight) in ids(no_decay["params"])
    assert id(model["frozen"].weight) not in ids(decay["params"] + no_decay["params"] + biases["params"])
    assert biases["lr"] == 2.0
    cfg = OmegaConf.create({"optimizer": "adam", "lr": 1e-3, "weight_decay": 5e-4, "bias_lr_mult": 2.0})
    optimizer = build_optimizer(model, cfg)
    set_learning_rate(optimizer, 1e-4)
    assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx([1e-4, 1e-4, 2e-4])


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_the_fused_optimizer_makes_the_same_updates(name):
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Conv2d(3, 4, 1), nn.LayerNorm([4, 2, 2]), nn.Linear(2, 3)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    start = [p.detach().clone() for p in models[0].parameters()]
    cfg = {"optimizer": name, "lr": 1e-2, "weight_decay": 5e-4, "bias_lr_mult": 2.0}
    optimizers = [build_optimizer(m, OmegaConf.create({**cfg, "fused_optimizer": fused}))
                  for m, fused in zip(models, (False, True))]
    assert [o.defaults["fused"] for o in optimizers] == [None, True]
    x = torch.randn(5, 3, 2, 2)
    for step in range(3):
        for model, optimizer in zip(models, optimizers):
            set_learning_rate(optimizer, 1e-2 / (step + 1))
            optimizer.zero_grad()
            model(x).square().sum().backward()
            optimizer.step()
    for before, plain, fused in zip(start, models[0].parameters(), models[1].parameters()):
        assert (plain - before).abs().min() > 1e-4  # every parameter moved
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_step_sampler_covers_each_epoch_and_splits_the_global_batch_over_ranks():
    single = list(StepBatchSampler(10, 4, seed=3, steps=5))
    flat = [i for batch in single for i in batch]
    assert sorted(flat[:10]) == list(range(10))  # first epoch is a permutation
    assert all(len(b) == 4 for b in single)
    ranks = [list(StepBatchSampler(10, 4, seed=3, steps=5, rank=r, world_size=2)) for r in range(2)]
    for step, batch in enumerate(single):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)
    resumed = list(StepBatchSampler(10, 4, seed=3, start_step=2, steps=5))
    assert resumed == single[2:]
    # as a library function; train.py stops earlier with one ConfigError line (config_check.check_batch_splits)
    with pytest.raises(ValueError, match="global batch size 3 is not divisible by 2 processes"):
        StepBatchSampler(10, 3, world_size=2)


def test_atomic_save_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)
    atomic_save({"step": 2}, path)
    assert torch.load(path, weights_only=True)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_save({"bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["step"] == 2  # the old checkpoint survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_checkpoint(tmp_path / "broken.pt")


def test_sampler_order_is_a_function_of_seed_and_step_only():
    a = list(StepBatchSampler(7, 3, seed=0, steps=6))
    torch.manual_seed(123)  # global RNG state must not matter
    b = list(StepBatchSampler(7, 3, seed=0, steps=6))
    assert a == b and a != list(StepBatchSampler(7, 3, seed=1, steps=6))


def test_fast_image_recipe_is_the_official_one_batched_grouped_and_bf16_over_as_many_sentences():
    from conftest import CONFIG_DIR
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        official = compose("train", overrides=["dataset=unc"]).trainer
        fast = compose("train", overrides=["dataset=unc", "trainer=fast_image"]).trainer
    assert (fast.batch_size, fast.group_by_image, fast.amp) == (8, True, "bf16")
    assert fast.steps * fast.batch_size == official.steps * official.batch_size
    assert (fast.lr, fast.weight_decay, fast.loss) == (official.lr, official.weight_decay, official.loss)


def test_deterministic_kernels_switch_torch_and_cublas_and_back(monkeypatch):
    import torch.utils.deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    try:
        deterministic_kernels(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and not torch.backends.cudnn.benchmark
        assert not torch.utils.deterministic.fill_uninitialized_memory  # its NaN filling cost 6-9 % of a step
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # a user's own setting is kept
        deterministic_kernels(True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
        deterministic_kernels(False)
        assert not torch.are_deterministic_algorithms_enabled() and torch.utils.deterministic.fill_uninitialized_memory
    finally:
        deterministic_kernels(before)


def test_sweep_job_folders_fit_every_file_system():
    from cmpc.engine.rundir import job_subdir

    assert job_subdir(3, "seed=1,trainer.lr=0.001") == "3_seed=1,trainer.lr=0.001"
    assert job_subdir(0, "") == "0"
    assert job_subdir(1, "paths.data=/tmp/x/y") == "1_paths.data=_tmp_x_y"  # one folder, not a nested tree
    long_a, long_b = "model.x=" + "a" * 300 + ",seed=1", "model.x=" + "a" * 300 + ",seed=2"
    a, b = job_subdir(2, long_a), job_subdir(2, long_b)
    assert len(a.encode()) == 200 and a != b and a[:-9] == b[:-9]  # cut, told apart by the hash of the whole name
    assert len(job_subdir(5, "é" * 300).encode()) <= 200  # never cuts a character in half


def test_training_flushes_denormal_floats_and_restores_the_mode(monkeypatch):
    """Denormals made CPU training steps 2.4x slower after ~1500 steps of the main job: train() flushes them to zero
    while it runs and restores the caller's mode afterwards, also when it fails."""
    import cmpc.engine.trainer as trainer
    from cmpc.engine.precision import denormals_flushed

    seen = []

    def body(cfg, run_dir):
        seen.append(denormals_flushed())
        if cfg == "fail":
            raise RuntimeError("stopped")
        return {}

    monkeypatch.setattr(trainer, "_train", body)
    assert not denormals_flushed()
    assert trainer.train("ok", "run") == {} and seen == [True] and not denormals_flushed()
    with pytest.raises(RuntimeError):
        trainer.train("fail", "run")
    assert seen == [True, True] and not denormals_flushed()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_commit_marks_dirty_only_for_changes_outside_docs_and_benchmark_reports(tmp_path):
    """A run's recorded commit gets ``+dirty`` for an edited code or config file, not for an edited README, docs/
    page or benchmark report (benchmarks/main_job.py appends to its report, which marked its own next row dirty)."""
    from cmpc.engine.environment import git_commit

    files = {"cmpc/x.py": "a = 1\n", "configs/t.yaml": "a: 1\n", "README.md": "# r\n", "docs/d.txt": "d\n",
             "benchmarks/results/main_job.md": "| row |\n", "benchmarks/main_job.py": "b = 1\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "c"]):
        subprocess.run([*git, *args], cwd=tmp_path, check=True, capture_output=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    commit = git_commit.__wrapped__  # uncached
    assert commit(tmp_path) == sha
    for name in ("README.md", "docs/d.txt", "benchmarks/results/main_job.md"):
        (tmp_path / name).write_text("edited\n")
    (tmp_path / "notes.py").write_text("untracked = 1\n")
    assert commit(tmp_path) == sha
    for name in ("cmpc/x.py", "configs/t.yaml", "benchmarks/main_job.py"):
        (tmp_path / name).write_text("edited: 1\n")
        assert commit(tmp_path) == sha + "+dirty", name
        subprocess.run(["git", "checkout", "-q", "--", name], cwd=tmp_path, check=True)
    assert commit(tmp_path) == sha
