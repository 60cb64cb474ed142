"""Every device and process count: grouped batches over ranks, evaluation shards, DDP over every experiment config,
mixed precision by capability (emulated AVX2 CPU), a graph-break-free forward and a guarded training step."""

import json
import os
import re
import subprocess
import sys
import tempfile

import pytest
import torch
from conftest import ROOT, free_port, heap_checks
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cmpc.engine.sampler import StepBatchSampler, shard_groups
from cmpc.models.language import WordEncoder


def image_groups(count: int, low: int, high: int, seed: int = 0) -> list[list[int]]:
    """``count`` images with ``low``-``high`` sentences each, as consecutive sample indices."""
    sizes = torch.randint(low, high + 1, (count,), generator=torch.Generator().manual_seed(seed)).tolist()
    starts = [sum(sizes[:i]) for i in range(count)]
    return [list(range(start, start + n)) for start, n in zip(starts, sizes)]


def test_grouped_batches_give_every_rank_an_equal_share():
    """1-12 sentences per image, batch 8 over 4 ranks, 500 steps: the old sampler left ranks 1-3 empty in most steps."""
    groups = image_groups(300, 1, 12)
    owner = {i: g for g, group in enumerate(groups) for i in group}
    ranks = [list(StepBatchSampler(groups, 8, seed=1, rank=r, world_size=4, steps=500)) for r in range(4)]
    single = list(StepBatchSampler(groups, 8, seed=1, steps=500))
    images_per_batch = []
    for step, batch in enumerate(single):
        shares = [ranks[r][step] for r in range(4)]
        assert [len(s) for s in shares] == [2, 2, 2, 2] and sum(shares, []) == batch
        # whole groups, sentences of a group side by side; a group is split only when it does not fit
        images = [owner[i] for i in batch]
        runs = [g for k, g in enumerate(images) if k == 0 or images[k - 1] != g]
        assert len(runs) == len(set(runs)), f"step {step}: an image's sentences are not contiguous"
        partial = [g for g in set(images) if images.count(g) < len(groups[g])]
        assert len(partial) <= 2, f"step {step}: more than the batch's first and last image split"
        images_per_batch.append(len(runs))
    seen = [i for batch in single for i in batch]
    assert len(set(seen[:1200])) > 0.95 * 1200  # ~ one epoch (1,950 sentences) without repeats in the first 1,200
    assert sum(images_per_batch) / len(images_per_batch) < 2.5  # groups kept: ~6.5 sentences per image on average


def test_sampler_splits_a_group_only_when_no_whole_group_fits():
    # order of seed 0 for 4 groups: the look-ahead fills the room with a later group that fits
    groups = [[0, 1, 2], [3, 4, 5], [6], [7, 8, 9, 10, 11]]
    batches = list(StepBatchSampler(groups, 4, seed=0, steps=6))
    assert all(len(b) == 4 for b in batches)
    for batch in batches[:3]:  # the first epoch's 12 sentences: exactly 3 batches, each index once
        assert len(set(batch)) == 4
    assert sorted(sum(batches[:3], [])) == list(range(12))


def test_evaluation_shards_hold_whole_images_and_balance_sentences():
    groups = image_groups(50, 1, 12, seed=2)
    shards = [shard_groups(groups, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(sum(len(g) for g in groups)))
    for group in groups:
        assert sum(set(group) <= set(shard) for shard in shards) == 1  # every image on exactly one rank
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 12
    lone = [shard_groups([[0, 1]], r, 2) for r in range(2)]
    assert sorted(lone) == [[], [0, 1]]  # fewer images than ranks: a rank may evaluate nothing


@pytest.mark.slow
def test_every_experiment_config_trains_under_two_process_ddp(tmp_path):
    out = tmp_path / "ddp.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         "tests/ddp_experiments.py", str(out)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["experiment"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert rows.pop("spare_module")["find_unused"]  # a parameter without gradient switches it on
    assert len(rows) == len(list((ROOT / "configs" / "experiment").glob("*.yaml"))) >= 32
    for name, row in rows.items():
        assert all(torch.isfinite(torch.tensor(row["losses"]))), name
        assert row["rank_spread"] < 1e-6, name  # DDP kept the ranks' weights equal
        assert row["find_unused"] == (row["unused"] > 0), name  # on only where a parameter gets no gradient
    assert not rows["table9_full"]["find_unused"]


def test_word_encoder_equals_the_packed_lstm_and_stays_float32_under_autocast():
    torch.manual_seed(0)
    enc = WordEncoder(20, 6, 8)
    tokens = torch.tensor([[0, 0, 0, 4, 5, 6], [7, 8, 9, 10, 11, 12], [0, 0, 0, 0, 0, 3]])
    words = enc(tokens)
    lengths = (tokens != 0).sum(1)
    right = torch.stack([torch.cat([t[t != 0], t[t == 0]]) for t in tokens])
    packed = pack_padded_sequence(enc.embedding(right), lengths, batch_first=True, enforce_sorted=False)
    out, (h_n, _) = enc.lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=6)
    for b, n in enumerate(lengths.tolist()):
        expected = torch.nn.functional.normalize(out[b, :n], dim=-1)
        assert torch.allclose(words.features[b, 6 - n:], expected, atol=1e-6)
        assert torch.allclose(words.sentence[b], torch.nn.functional.normalize(h_n[0, b], dim=-1), atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert enc(tokens).features.dtype == torch.float32


AVX2_PROBE = """
import logging, torch
from cmpc.engine.precision import resolve_amp
from cmpc.models.language import WordEncoder
logging.basicConfig(level=logging.WARNING)
first, again = resolve_amp("cpu", "bf16"), resolve_amp("cpu", "bf16")
with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 forced: the LSTM used to crash in oneDNN here
    words = WordEncoder(20, 8, 8)(torch.tensor([[0, 3, 4], [5, 6, 7]]))
print(first, again, resolve_amp("cpu", "off"), words.features.dtype)
"""


def test_bf16_is_replaced_by_float32_on_a_cpu_without_native_bf16():
    done = subprocess.run([sys.executable, "-c", AVX2_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["off", "off", "off", "torch.float32"]
    assert done.stderr.count("amp=bf16 would be emulated") == 1  # one warning, not one per step


def test_training_forward_compiles_to_one_graph():
    from test_model import IMAGES, WORDS, tiny_model

    torch._dynamo.config.allow_rnn = True  # as cmpc.engine.trainer.compile_model
    model = tiny_model().train()
    explained = torch._dynamo.explain(model)(IMAGES, WORDS, torch.tensor([0, 1]))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


COMPILED_GROUPED = """
import json, sys
import torch
from test_training import compose_cfg, tiny_overrides
from cmpc.engine.trainer import train

data, out = sys.argv[1:3]
histories = {}
for compiled in (False, True):
    extra = [f"trainer.compile={compiled}", "trainer.group_by_image=true",
             "dataset.generate.expressions_per_image=[1,3]"]
    cfg = compose_cfg(tiny_overrides(data, steps=5, extra=extra))
    histories[compiled] = train(cfg, f"{out}/{compiled}")["history"]
print(json.dumps({"eager": histories[False], "compiled": histories[True],
                  "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"]}))
"""
TESTS_PATH = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}  # the helpers of test_training
# inductor's cache, one per ATen CPU capability: under AVX2 emulation on an AVX-512 machine, kernels cached by an
# AVX-512 run are rebuilt for AVX2 with their 16-lane loops and write out of bounds (SIGBUS; docs/performance.md)
INDUCTOR_CACHE = {"TORCHINDUCTOR_CACHE_DIR": os.path.join(tempfile.gettempdir(), "torchinductor_cmpc_tests_"
                                                          + torch.backends.cpu.get_cpu_capability().lower())}


@pytest.mark.slow
def test_compiled_grouped_training_matches_eager_under_heap_checks(tmp_path):
    """trainer.compile with grouped batches (images of 1-3 sentences in batches of 4: 2 to 4 images a step, the
    graph with a dynamic image count), under glibc's heap checks where the machine has them. This combination
    aborted with heap corruption on 2026-11-29 and in CI on 2026-11-30: oneDNN's strided 1x1 weight gradient in
    channels-last layout at odd image counts (tests/test_backbone.py tests the cause directly). Costs ~35 s with a
    warm inductor cache; when it compiles (first run on a machine or CPU kind) 2-3.5 min on this 2-core machine."""
    done = subprocess.run([sys.executable, "-c", COMPILED_GROUPED, str(tmp_path / "data"), str(tmp_path)], cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **heap_checks(), **TESTS_PATH, **INDUCTOR_CACHE},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["graphs"] == 1, result  # one graph for every image count
    assert result["compiled"] == pytest.approx(result["eager"], rel=1e-4)


def test_a_non_finite_loss_stops_with_the_step_parts_and_last_good_checkpoint(tmp_path, monkeypatch):
    from test_training import compose_cfg, tiny_overrides

    import cmpc.engine.trainer as trainer
    from cmpc.engine.checkpoint import load_checkpoint
    from cmpc.errors import TrainingDiverged

    calls = []

    def poisoned(outputs, target, *args):
        loss, parts = original(outputs, target, *args)
        calls.append(1)
        return (loss * float("nan"), parts) if len(calls) == 2 else (loss, parts)

    original = trainer.referring_loss
    monkeypatch.setattr(trainer, "referring_loss", poisoned)
    cfg = compose_cfg(tiny_overrides(tmp_path / "data", steps=4, images=2, extra=[
        "trainer.checkpoint_every=1", "trainer.log_every=3", "trainer.batch_size=2"]))
    with pytest.raises(TrainingDiverged) as err:
        trainer.train(cfg, tmp_path / "run")
    message = str(err.value)
    assert "at step 2 (loss nan, loss/final" in message and f"{tmp_path / 'run' / 'last.pt'} (step 1)" in message
    assert "\n" not in message  # one line
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 1  # the diverged weights were never saved


FULL_DISK_RANK0 = """
import errno, os, sys
from cmpc.cli import friendly_errors
from cmpc.engine import checkpoint
from cmpc.engine.trainer import train
from test_training import compose_cfg, tiny_overrides

def full_disk(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

if os.environ["RANK"] == "0":
    checkpoint.os.fsync = full_disk  # rank 0's disk is full: its first last.pt cannot be written
friendly_errors(train)(compose_cfg(tiny_overrides(sys.argv[1], steps=4, extra=sys.argv[3:])), sys.argv[2])
"""


@pytest.mark.slow
def test_a_checkpoint_rank_0_cannot_write_stops_every_rank_with_one_line(tmp_path):
    """2 gloo processes started the way a cluster's launcher starts them (no torchrun agent to kill the survivors):
    rank 0's disk is full at the step-2 checkpoint. Both stop with one line; the other rank used to wait in the next
    step's collective for a rank that had gone (a hang under NCCL, a gloo traceback here)."""
    from test_training import compose_cfg, tiny_overrides

    from cmpc.engine.builders import build_datasets

    extra = ["trainer.checkpoint_every=2", "trainer.batch_size=2", "model.glove=false"]
    build_datasets(compose_cfg(tiny_overrides(tmp_path / "data", steps=4, extra=extra)), splits=("train",))
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK_RANK0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": "2", **TESTS_PATH}
    ranks = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "data"), str(tmp_path / "run"), *extra],
                              cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        outputs = [p.communicate(timeout=240) for p in ranks]
    finally:
        for p in ranks:
            p.kill()
    reason = f"could not write checkpoint {tmp_path / 'run' / 'last.pt'} (No space left on device)"
    for r, (p, (_, err)) in enumerate(zip(ranks, outputs)):
        lines = re.findall(r"(?:error: |Traceback)[^\r\n]*", err)  # tqdm ends its lines with \r
        assert p.returncode == 2 and len(lines) == 1, f"rank {r}: {err[-3000:]}"
        assert lines[0].startswith("error: " + ("" if r == 0 else "process 0 stopped the run: ") + reason), lines
    assert not (tmp_path / "run" / "last.pt").exists()
