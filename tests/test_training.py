"""The engine end to end on tiny synthetic sets: learning, exact resume, DDP equivalence, scripts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, ROOT, free_port
from hydra import compose, initialize_config_dir

from cmpc.engine.builders import load_trained
from cmpc.engine.checkpoint import load_checkpoint
from cmpc.engine.trainer import train

TINY_MODEL = [
    "model.visual_dim=16", "model.word_dim=16", "model.dim=16", "model.out_dim=16",
    "model.word_classifier_dim=8", "model.convlstm_hidden=16", "model.tgfe_rounds=1",
    "backbone=small", "backbone.widths=[8,16,16,16]",
]


def tiny_overrides(data, steps=6, images=6, extra=()):
    return [
        f"paths.data={data}", "device=cpu",
        f"dataset.generate.splits={{train: {images}, val: 3, test: 3}}",
        f"trainer.steps={steps}", "trainer.batch_size=4", "trainer.num_workers=0", "trainer.eval_every=0",
        "trainer.eval_batch_size=8", "trainer.log_every=1", "trainer.checkpoint_every=1000",
        *TINY_MODEL, *extra,
    ]


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def test_a_tiny_model_overfits_a_few_synthetic_samples(tmp_path):
    # output stride 4 so that the mask resolution does not cap the IoU of the small objects
    overrides = tiny_overrides(tmp_path / "data", steps=300, images=2, extra=[
        "dataset.eval_split=train", "dataset.test_split=train", "trainer.lr=3e-3", "trainer.batch_size=2",
        "trainer.schedule=constant",
        "dataset.generate.expressions_per_image=[1,1]", "backbone.output_stride=4",
    ])
    result = train(compose_cfg(overrides), tmp_path / "run")
    assert result["history"][-1] < 0.2 * result["history"][0]
    assert result["test"]["metrics"]["oIoU"] > 0.9, result["test"]["metrics"]


@pytest.mark.parametrize("grouped, cached", [(False, False), (True, False), (False, True)])
def test_resume_reproduces_the_uninterrupted_loss_sequence(tmp_path, grouped, cached):
    """Also with the feature cache of a fixed backbone, which starts empty in the resumed process."""
    data = tmp_path / "data"
    group = [f"trainer.group_by_image={grouped}", "dataset.generate.expressions_per_image=[1,3]"]
    if cached:
        group += ["backbone.frozen=true", "backbone.frozen_bn=true", "trainer.feature_cache_mb=64"]
    full = train(compose_cfg(tiny_overrides(data, steps=6, extra=group)), tmp_path / "full")
    run = tmp_path / "interrupted"
    first = train(compose_cfg(tiny_overrides(data, steps=6, extra=group + ["trainer.stop_at_step=3"])), run)
    assert len(first["history"]) == 3 and "test" not in first
    assert load_checkpoint(run / "last.pt")["step"] == 3
    resumed = train(compose_cfg(tiny_overrides(data, steps=6, extra=group + ["resume=true"])), run)
    assert resumed["history"] == full["history"]  # bit-exact on CPU
    assert resumed["test"]["metrics"] == full["test"]["metrics"]
    assert not list(run.glob(".last.pt.*")), "no temporary checkpoint files may remain"


def test_a_frozen_backbone_loads_from_a_training_checkpoint(tmp_path, caplog):
    data = tmp_path / "data"
    train(compose_cfg(tiny_overrides(data, steps=2, extra=["dataset=synthetic_entities"])), tmp_path / "pretrain")
    kinds = json.loads((data / "synthetic_entities" / "synthetic" / "kinds.json").read_text())
    assert set(kinds.values()) == {"entity", "attribute"}  # nothing relational to learn in pretraining
    source = torch.load(tmp_path / "pretrain" / "last.pt", weights_only=True)["model"]  # no pickled objects
    frozen = ["backbone=small_frozen", f"backbone.weights={tmp_path / 'pretrain' / 'last.pt'}"]
    train(compose_cfg(tiny_overrides(data, steps=2, extra=frozen)), tmp_path / "frozen")
    state = load_checkpoint(tmp_path / "frozen" / "last.pt")["model"]
    backbone = [k for k in source if k.startswith("backbone.")]
    assert backbone and all(torch.equal(state[k], source[k]) for k in backbone)  # loaded, then never changed
    head = [k for k in source if not k.startswith("backbone.") and source[k].is_floating_point()]
    assert any(not torch.equal(state[k], source[k]) for k in head)
    caplog.clear()
    model, _, _ = load_trained(tmp_path / "frozen" / "best.pt")  # as eval.py, predict.py and the benchmarks
    assert "randomly initialised" not in caplog.text  # the weights come from the checkpoint: no false alarm
    assert all(torch.equal(model.state_dict()[k], source[k]) for k in backbone)


def _run(args, cwd=ROOT, env=None, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_a_single_process(tmp_path):
    """Grouped batches of 4 sentences from images of 1-6 sentences: 1 process x 4 versus 2 processes x 2. No rank
    gets an empty batch (an image of 4+ sentences used to fill the whole global batch), the logged loss is the
    global-batch loss averaged over the ranks, and the weights stay those of the single process."""
    data = tmp_path / "data"
    common = tiny_overrides(data, steps=4) + ["backbone.frozen_bn=true", "trainer.group_by_image=true",
                                              "dataset.generate.expressions_per_image=[1,6]"]
    single = _run([sys.executable, "scripts/train.py", *common, f"hydra.run.dir={tmp_path / 'single'}"])
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                "scripts/train.py", *common, f"hydra.run.dir={tmp_path / 'ddp'}"])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    logs = [[json.loads(line) for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
            for name in ("single", "ddp")]
    assert [row["step"] for row in logs[0]] == [row["step"] for row in logs[1]] == [1, 2, 3, 4]
    for one, two in zip(*logs):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
        assert two["loss/final"] == pytest.approx(one["loss/final"], rel=1e-4)
    a = load_checkpoint(tmp_path / "single" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "ddp" / "last.pt")["model"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-4), key


@pytest.mark.slow
def test_train_eval_predict_scripts_end_to_end(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    env = {"CMPC_RUNS_DIR": str(runs)}
    trained = _run([sys.executable, "scripts/train.py", *tiny_overrides(data, steps=4)], env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "oIoU" in trained.stdout and "by expression kind" in trained.stdout
    run_dir = next(runs.glob("*_synthetic_cmpc_i"))
    for name in ("best.pt", "last.pt", "metrics.json", "train_log.jsonl", ".hydra/config.yaml"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    # device=cpu: the training ran on the CPU, and bit-equal metrics hold only on the same device (a GPU's TF32)
    evaluated = _run([sys.executable, "scripts/eval.py", f"paths.data={data}", "split=test", "crf=true",
                      "crf_workers=2", "num_workers=0", "device=cpu"], env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "evaluating the newest checkpoint" in evaluated.stdout and "DenseCRF" in evaluated.stdout
    metrics = json.loads(next((runs / "eval").glob("*/metrics.json")).read_text())
    assert metrics["split"] == "test" and metrics["metrics"]["n"] == metrics["crf"]["n"] > 0
    trained_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["metrics"] == trained_metrics["test"]["metrics"]

    split = _run([sys.executable, "benchmarks/synthetic_relations.py", str(run_dir / "best.pt"), "--device", "cpu"],
                 env=env)
    assert split.returncode == 0, split.stderr[-3000:]
    table = json.loads(split.stdout.strip().splitlines()[-1])
    assert table["all"]["n"] == trained_metrics["test"]["metrics"]["n"]
    assert abs(table["all"]["oIoU"] - 100 * trained_metrics["test"]["metrics"]["oIoU"]) < 0.01
    assert sum(v["n"] for k, v in table.items() if k != "all") == table["all"]["n"]
    attention = _run([sys.executable, "benchmarks/rar_attention.py", str(run_dir / "best.pt"), "--subkind", "all",
                      "--device", "cpu"], env=env)
    assert attention.returncode == 0, attention.stderr[-3000:]
    report = json.loads(attention.stdout.strip().splitlines()[-1])
    relations = sum(v["n"] for k, v in table.items() if k.startswith("relation:"))
    assert report["expressions"] == relations > 0 and 0 <= report["target_above_twins"] <= 1
    for level in ("res3", "res4", "res5"):  # every level has RAR; an edge mass lies between 0 and every edge
        assert 0 <= report[f"{level}:target->landmark"] <= report[f"{level}:ceiling"]

    image = next((data / "synthetic" / "images" / "synthetic").glob("*.jpg"))
    out = tmp_path / "pred"
    predicted = _run([sys.executable, "scripts/predict.py", f"checkpoint={run_dir / 'best.pt'}", f"image={image}",
                      "text=the red circle", f"out={out}"], env=env)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    from PIL import Image

    with Image.open(f"{out}_mask.png") as mask, Image.open(image) as img:
        assert mask.size == img.size
    assert os.path.getsize(f"{out}_overlay.png") > 0


def test_people_get_one_line_errors(tmp_path):
    missing = _run([sys.executable, "scripts/eval.py", f"checkpoint={tmp_path / 'nope.pt'}"])
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: checkpoint")
    empty = _run([sys.executable, "scripts/eval.py", f"paths.runs={tmp_path}"])
    assert empty.returncode == 2 and "train first" in empty.stderr
    bad_key = _run([sys.executable, "scripts/train.py", "trainer.no_such_key=1"])
    assert bad_key.returncode != 0 and "no_such_key" in bad_key.stderr


def test_grouped_backbone_gives_the_same_gradients_as_one_pass_per_sentence(tmp_path):
    from cmpc.data import collate, collate_grouped
    from cmpc.engine.builders import build_datasets, build_model_for
    from cmpc.engine.sampler import group_indices
    from cmpc.models.loss import referring_loss

    cfg = compose_cfg(tiny_overrides(tmp_path / "data", images=3, extra=[
        "dataset.generate.expressions_per_image=[2,3]", "backbone.frozen=true", "backbone.frozen_bn=true"]))
    data = build_datasets(cfg, splits=("train",))
    groups = group_indices(data.train)
    assert any(len(g) > 1 for g in groups) and sorted(i for g in groups for i in g) == list(range(len(data.train)))
    samples = [data.train[i] for g in groups for i in g]
    torch.manual_seed(0)
    model = build_model_for(cfg, data.vocab).train()

    def gradients(batch):
        model.zero_grad()
        out = model(batch["image"], batch["words"], batch.get("image_index"))
        referring_loss(out, batch["target"], reduction="sum")[0].backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    grouped_batch = collate_grouped(samples)
    assert grouped_batch["image"].shape[0] == len(groups) < len(samples)
    plain, grouped = gradients(collate(samples)), gradients(grouped_batch)
    assert plain.keys() == grouped.keys()
    for name in plain:
        assert torch.allclose(plain[name], grouped[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
def test_video_train_eval_predict_end_to_end(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    env = {"CMPC_RUNS_DIR": str(runs)}
    overrides = [o for o in tiny_overrides(data, steps=2) if not o.startswith("dataset.generate.splits")]
    overrides += ["dataset=synthetic_video", "dataset.generate.splits={train: 3, valid: 2}", "trainer.batch_size=2"]
    trained = _run([sys.executable, "scripts/train.py", *overrides], env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "mAP" in trained.stdout  # video metrics: Prec@0.50:0.05:0.95 and their mean
    run_dir = next(runs.glob("*_synthetic_video_cmpc_v"))
    for name in ("predictions.png", "word_types.png"):  # pictures of the centre frames; 5 word types
        assert f"{(run_dir / name).resolve()}" in trained.stdout and (run_dir / name).is_file()
    evaluated = _run([sys.executable, "scripts/eval.py", f"paths.data={data}", "num_workers=0"], env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "J&F over whole videos" in evaluated.stdout
    result = json.loads(next((runs / "eval").glob("*/metrics.json")).read_text())
    assert result["videos"]["expressions"] > 0 and 0 <= result["videos"]["jf"]["JF"] <= 1

    frames = sorted((data / "synthetic_video" / "valid" / "JPEGImages").iterdir())[0]
    out = tmp_path / "pred"
    predicted = _run([sys.executable, "scripts/predict.py", f"video={frames}", "text=the red ball moving left",
                      f"out={out}"], env=env)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert len(list(Path(f"{out}_masks").glob("*.png"))) == len(list(frames.glob("*.jpg")))
    assert Path(f"{out}_overlay.gif").stat().st_size > 0


@pytest.mark.slow
def test_the_same_command_twice_prints_the_same_table_and_trains_the_same_weights(tmp_path):
    """scripts/train.py twice with one seed (each process with its own hash seed; data-loader workers on, so their
    seeding counts; the first run generates the data, the second reads it): the same printed table, losses, test
    metrics and final weights, bit for bit. Another seed trains other weights. The run ends naming its pictures."""
    data = tmp_path / "data"
    common = [o for o in tiny_overrides(data, steps=4) if not o.startswith("trainer.num_workers")]
    common += ["trainer.num_workers=2", "trainer.eval_every=2"]
    out = {}
    for name in ("a", "b"):
        done = _run([sys.executable, "scripts/train.py", *common, f"hydra.run.dir={tmp_path / name}"])
        assert done.returncode == 0, done.stderr[-3000:]
        out[name] = done.stdout[done.stdout.index("**synthetic test"):]  # the tables to the end (no log lines)
    train(compose_cfg(common + ["seed=1"]), tmp_path / "other")
    lines = out["a"].strip().splitlines()
    assert lines[-2:] == [f"predictions: {(tmp_path / 'a' / 'predictions.png').resolve()}",
                          f"word types: {(tmp_path / 'a' / 'word_types.png').resolve()}"]
    assert (tmp_path / "a" / "predictions.png").is_file() and (tmp_path / "a" / "word_types.png").is_file()
    assert "oIoU" in out["a"] and out["a"].replace("/a/", "/b/") == out["b"]  # the same tables, pictures named
    shortcut = json.loads((tmp_path / "a" / "metrics.json").read_text())["test"]["shortcut"]
    row = next(line for line in lines if line.startswith("| shortcut prec@0.5 |"))  # beside the kinds it concerns
    header = next(line for line in lines if line.startswith("| metric | attribute"))
    cells = dict(zip(header.strip("|").split("|")[1:], row.strip("|").split("|")[1:]))
    assert {k.strip(): v.strip() for k, v in cells.items() if v.strip()} == {k: f"{100 * v:.2f}" for k, v in
                                                                             shortcut.items()}
    assert set(shortcut) <= {"relation", "location"}

    def run(name):
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        log = (tmp_path / name / "train_log.jsonl").read_text()
        return metrics, log, load_checkpoint(tmp_path / name / "last.pt")["model"]

    (metrics_a, log_a, weights_a), (metrics_b, log_b, weights_b), (_, _, weights_other) = map(run, ("a", "b", "other"))
    assert metrics_a["test"] == metrics_b["test"] and metrics_a["val"] == metrics_b["val"] and log_a == log_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert not all(torch.equal(weights_a[k], weights_other[k]) for k in weights_a)

    timing = metrics_a["timing"]
    parts = [timing[k] for k in ("data_s", "train_s", "validate_s", "test_s", "pictures_s")]
    assert all(p >= 0 for p in parts) and sum(parts) <= timing["total_s"] and timing["steps"] == 4

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "a" / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"test/predictions", "test/word_types"} <= set(events.Tags()["images"])
