"""The training loop: read top to bottom.

build data -> build model -> (resume) -> for each step: forward, loss, backward, optimiser step,
log, checkpoint, evaluate on the validation split (best.pt by overall IoU) -> evaluate best.pt on
the test split -> predictions.png, word_types.png -> metrics.json (with the wall time of each part). DDP when
launched by torchrun; rank 0 logs and writes files.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from cmpc.data import collate, collate_grouped
from cmpc.data.base import UnreadableTally
from cmpc.engine import checkpoint as ckpt
from cmpc.engine.builders import build_datasets, build_model_for, check_pretrained
from cmpc.engine.config_check import check_train_config
from cmpc.engine.distributed import (
    DistInfo,
    any_rank,
    average_across_ranks,
    barrier,
    cleanup,
    data_parallel,
    fail_together,
    init_distributed,
    parameters_without_gradient,
    resolve_device,
)
from cmpc.engine.environment import record_environment
from cmpc.engine.evaluate import evaluate, model_inputs, uses_feature_cache
from cmpc.engine.optim import build_optimizer, learning_rate, set_learning_rate
from cmpc.engine.precision import autocast, flush_denormals, needs_grad_scaler
from cmpc.engine.report_pictures import log_predictions, write_report_pictures
from cmpc.engine.rundir import open_run_dir, truncate_log
from cmpc.engine.sampler import StepBatchSampler, group_indices
from cmpc.engine.workers import worker_init
from cmpc.errors import ConfigError, TrainingDiverged
from cmpc.metrics import format_table
from cmpc.models.feature_cache import FeatureCache, is_fixed
from cmpc.models.loss import referring_loss

log = logging.getLogger(__name__)


def with_shortcuts(test: dict, dataset) -> dict:
    """``test["by_kind"]`` with a last row ``shortcut prec@0.5`` under the kinds that have a shortcut answer (the
    synthetic benchmark's relation and location, :meth:`SyntheticImageDataset.shortcut_precision`; stored in
    ``test["shortcut"]``): the model is grounding those kinds only where it beats that row."""
    shortcut = getattr(dataset, "shortcut_precision", None)
    if shortcut is None:
        return test["by_kind"]
    test["shortcut"] = shortcut()
    return {kind: {**m, **({"shortcut prec@0.5": test["shortcut"][kind]} if kind in test["shortcut"] else {})}
            for kind, m in test["by_kind"].items()}


def _wants_resume(resume) -> bool:
    return resume not in (False, None, "false", "False")


def _resume_path(resume, run_dir: Path) -> Path | None:
    if not _wants_resume(resume):
        return None
    path = run_dir / "last.pt" if resume in (True, "true", "True") else Path(str(resume))
    if path.is_dir():
        raise ConfigError(f"resume={resume}: {path} is a directory, not a checkpoint; remove or rename it")
    if not path.is_file():
        if resume in (True, "true", "True"):
            log.info("resume=true but %s does not exist yet: starting from scratch", path)
            return None
        raise ConfigError(f"resume={resume}: no such checkpoint; pass resume=true or the path of a last.pt")
    return path


def _to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with 4-D weights in channels-last order; 5-D (Conv3d) weights have no such layout."""
    if any(p.dim() == 5 for p in model.parameters()):
        raise ConfigError("trainer.channels_last=true needs 2-D convolutions, but this backbone has 5-D Conv3d "
                          "weights (backbone=i3d): set trainer.channels_last=false")
    return model.to(memory_format=torch.channels_last)


def batch_loss(net, batch: dict, t, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward (under ``t.amp``, see :mod:`cmpc.engine.precision`) and the loss of a collated batch: the loss and
    its detached parts, all tensors on ``device`` (no host sync)."""
    inputs = model_inputs(batch, device, t.channels_last, keys=uses_feature_cache(net))
    if t.compile:  # the number of distinct images per batch varies with grouping: one graph for all of them
        torch._dynamo.maybe_mark_dynamic(inputs[0], 0)
    target = batch["target"].to(device, non_blocking=True)
    with autocast(device, t.amp):
        outputs = net(*inputs)
    return referring_loss(outputs, target, t.loss.final_weight, t.loss.aux_weight, t.loss.reduction)


def train_step(net, batch: dict, optimizer, scaler, t, device: torch.device) -> tuple[torch.Tensor, dict]:
    """One optimisation step on a collated batch: forward, loss, backward, update. Returns the detached loss and
    its parts as device tensors (a ``float()`` would wait for the GPU; the trainer converts them on logging steps
    only). Also used by ``benchmarks/run.py``."""
    loss, parts = batch_loss(net, batch, t, device)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if t.grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), t.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), parts


def compile_model(net):
    """``torch.compile(net)``, letting dynamo trace ``nn.LSTM`` (``allow_rnn``) so that the whole forward is one
    graph (benchmarks/compile_probe.py counts the graphs, breaks and recompiles)."""
    torch._dynamo.config.allow_rnn = True
    return torch.compile(net)


class LossLog:
    """Per-step losses kept on the device and converted to numbers only when :meth:`flush` is called (logging
    steps, before checkpoints and evaluations): one host sync per flush instead of several per step. Under DDP
    the logged values are averaged over the processes (each rank's loss is the mean over its equal share of
    the global batch, so the average is the global-batch loss). A NaN or infinite loss raises
    :class:`TrainingDiverged` naming the step, the loss parts and the last good checkpoint."""

    def __init__(self, info: DistInfo):
        self.info, self.pending = info, []

    def add(self, step: int, lr: float, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        self.pending.append((step, lr, torch.stack([loss.float(), *(v.float() for v in parts.values())]), list(parts)))

    def flush(self, last_good: str) -> list[dict]:
        """``[{"step", "loss", "lr", **parts}]`` of the steps since the last flush (every rank must call it)."""
        if not self.pending:
            return []
        values = average_across_ranks(torch.stack([v for _, _, v, _ in self.pending]), self.info).tolist()
        rows = []
        for (step, lr, _, names), (loss, *parts) in zip(self.pending, values):
            row = {"step": step, "loss": loss, "lr": lr, **dict(zip(names, parts))}
            if not all(math.isfinite(v) for v in (loss, *parts)):
                named = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("step", "lr"))
                raise TrainingDiverged(f"the loss is not finite at step {step} ({named}); last good checkpoint: "
                                       f"{last_good}. Lower trainer.lr, set trainer.grad_clip or trainer.amp=off, "
                                       f"and resume=PATH from that checkpoint")
            rows.append(row)
        self.pending.clear()
        return rows


def train(cfg, run_dir: str | Path) -> dict:
    """Train, evaluate and return ``{"val": ..., "test": ..., "history": [...], "timing": {...}}`` (see
    :func:`_train`), with denormal floats flushed to zero meanwhile (:func:`cmpc.engine.precision.flush_denormals`:
    on a CPU, denormals made the main job's steps 2.4 times slower after some 1500 steps)."""
    with flush_denormals():
        return _train(cfg, run_dir)


def _train(cfg, run_dir: str | Path) -> dict:
    """The body of :func:`train`.

    ``timing`` (also in metrics.json), wall seconds of this process (a resumed run counts from its resume):
    ``data_s`` building the datasets (generating the synthetic benchmark on first use, indexing, vocabulary,
    GloVe), ``train_s`` the training loop from the data loader's start to the last step (checkpoints included,
    validations not), ``validate_s`` every validation (also the final one), ``test_s`` the test evaluation of
    best.pt, ``pictures_s`` predictions.png and word_types.png, ``total_s`` all of :func:`train`; plus ``steps``
    (run by this process), ``sentences_per_s`` (trained sentences / ``train_s``) and, with
    ``trainer.feature_cache_mb``, ``feature_cache`` (images held, MiB, hits and misses)."""
    started = time.perf_counter()
    check_train_config(cfg)
    check_pretrained(cfg)
    run_dir = Path(run_dir)
    # resolved once: an interpolated key (decay_steps: ${trainer.steps}) is resolved anew on every read, which made
    # the per-step learning_rate() 8x slower (0.48 ms against 0.06)
    t = OmegaConf.create(OmegaConf.to_container(cfg.trainer, resolve=True))
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    if info.world_size > 1 and device.type == "cuda":
        device = torch.device(f"cuda:{info.local_rank}")
        torch.cuda.set_device(device)
    ckpt.seed_everything(cfg.seed)
    ckpt.deterministic_kernels(t.deterministic)
    run_lock = open_run_dir(run_dir, _wants_resume(cfg.resume), info)
    resume = _resume_path(cfg.resume, run_dir)

    clock = time.perf_counter()
    data = build_datasets(cfg, splits=("train", "eval", "test"))
    timing = {"data_s": time.perf_counter() - clock, "validate_s": 0.0}
    model = build_model_for(cfg, data.vocab, data.embeddings).to(device)
    if t.channels_last:
        model = _to_channels_last(model)
    if t.feature_cache_mb and is_fixed(model.backbone):  # a fixed backbone runs once per image
        if t.compile:  # dynamo would guard on the list of image keys and compile the forward again for every batch
            log.info("trainer.feature_cache_mb is not used with trainer.compile=true")
        else:
            model.feature_cache = FeatureCache(t.feature_cache_mb)
    optimizer = build_optimizer(model, t)
    scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(device, t.amp))
    step, best, history = 0, -1.0, []

    if resume is not None:
        state = ckpt.load_checkpoint(resume, need=ckpt.RESUME_KEYS)
        ckpt.check_resume(state, resume, cfg, data.vocab.words)
        ckpt.load_weights(model, state["model"], resume)
        optimizer.load_state_dict(state["optimizer"])
        ckpt.load_scaler_state(scaler, state["scaler"])
        step, best, history = state["step"], state["best"], state["history"]
        ckpt.set_rng_state(state["rng"])
        if info.is_main:
            log.info("resumed from %s at step %d", resume, step)
    if info.is_main:
        truncate_log(run_dir / "train_log.jsonl", step)  # lines a killed run wrote after its last checkpoint
        record_environment(run_dir, step)

    train_started, start_step = time.perf_counter(), step
    groups = group_indices(data.train) if t.group_by_image else len(data.train)
    sampler = StepBatchSampler(groups, t.batch_size, cfg.seed, step, info.rank, info.world_size, t.steps)
    loader = DataLoader(
        data.train, batch_sampler=sampler, num_workers=t.num_workers,
        collate_fn=collate_grouped if t.group_by_image else collate,
        pin_memory=device.type == "cuda", worker_init_fn=worker_init(),
    )
    batches = iter(loader)
    first = next(batches, None)
    net = model
    if info.world_size > 1 and first is not None:
        model.train()
        readable = "words" in first  # a batch of unreadable samples only has no words (UnreadableTally)
        unused = parameters_without_gradient(model, lambda: batch_loss(model, first, t, device)[0]) if readable else []
        net = data_parallel(model, info, device, unused)
    net = compile_model(net) if t.compile else net  # compile(DDP(model)): dynamo splits the graph at DDP's buckets
    # TensorBoard hides events a killed run logged after the checkpoint; the log file is flushed per line
    purge = step + 1 if _wants_resume(cfg.resume) else None
    writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge) if info.is_main else None
    log_file = (run_dir / "train_log.jsonl").open("a", buffering=1) if info.is_main else None
    meta = ckpt.provenance()

    def save(name: str) -> None:
        """best.pt: what eval/predict need (:data:`ckpt.EVAL_KEYS`); last.pt: also what resuming needs. Rank 0
        writes; a failed write (disk full) stops every rank (every rank must call it)."""
        with fail_together(info):
            if info.is_main:
                state = {"model": model.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True),
                         "vocab": data.vocab.words, "caffe_layout": getattr(model.backbone, "caffe_layout", None),
                         "meta": meta, "step": step, "best": best}
                if name == "last.pt":
                    state.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), history=history,
                                 rng=ckpt.rng_state())
                ckpt.atomic_save(state, run_dir / name)

    def validate() -> dict:
        nonlocal best
        clock = time.perf_counter()
        result = evaluate(model, data.eval, device=device, info=info, batch_size=t.eval_batch_size,
                          num_workers=t.num_workers, amp=t.amp, video=data.video, desc=f"val@{step}")
        score = result["metrics"]["oIoU"]
        with fail_together(info):
            if writer is not None:
                for key, value in result["metrics"].items():
                    writer.add_scalar(f"val/{key}", value, step)
                log_predictions(writer, model, data.eval, device, step)  # still in eval mode after evaluate()
                tqdm.write(f"val@{step}: oIoU {score:.4f}  mIoU {result['metrics']['mIoU']:.4f}  "
                           f"prec@0.5 {result['metrics']['prec@0.5']:.4f}")
        if score > best:
            best = score
            save("best.pt")
        model.train()
        timing["validate_s"] += time.perf_counter() - clock
        return result

    stop = t.steps if t.stop_at_step is None else min(t.steps, t.stop_at_step)
    model.train()
    bar = tqdm(total=t.steps, initial=step, desc="train", disable=not info.is_main, dynamic_ncols=True)
    tick, seen, losses = time.perf_counter(), 0, LossLog(info)
    unreadable = UnreadableTally()
    last_good = str(resume) if resume is not None else "none (no checkpoint written yet)"

    def flush_losses() -> None:
        rows = losses.flush(last_good)
        history.extend(row["loss"] for row in rows)
        if not rows:
            return
        with fail_together(info):  # a log write that fails on rank 0 (disk full) stops every rank
            if info.is_main:
                rate = seen / max(time.perf_counter() - tick, 1e-9)
                bar.set_postfix(loss=f"{history[-1]:.4f}", sent_per_s=f"{rate:.1f}")
                for row in rows:
                    log_file.write(json.dumps(row) + "\n")
                writer.add_scalar("train/loss", rows[-1]["loss"], step)
                writer.add_scalar("train/lr", rows[-1]["lr"], step)
                writer.add_scalar("train/sentences_per_s", rate, step)
                for key, value in rows[-1].items():
                    if key.startswith("loss/"):
                        writer.add_scalar(f"train/{key}", value, step)

    for batch in itertools.chain([first] if first is not None else [], batches):
        if step >= stop:
            break
        lr = learning_rate(step, t)
        set_learning_rate(optimizer, lr)
        # nothing in the batch could be read (on any DDP rank, which must step together): the step trains nothing
        empty = any_rank(unreadable.add(batch), info, device)
        step += 1
        if not empty:
            loss, parts = train_step(net, batch, optimizer, scaler, t, device)
            seen += len(batch["words"]) * info.world_size
            losses.add(step, lr, loss, parts)
        bar.update(1)
        evaluate_now = t.eval_every and step % t.eval_every == 0 and step < t.steps
        checkpoint_now = step % t.checkpoint_every == 0 or step == stop
        if step % t.log_every == 0 or evaluate_now or checkpoint_now:
            flush_losses()  # before anything is written: a diverged step stops the run first
        if evaluate_now:
            validate()
        if checkpoint_now:
            save("last.pt")
            last_good = f"{run_dir / 'last.pt'} (step {step})"
    flush_losses()
    bar.close()
    if log_file is not None:
        log_file.close()
    timing["train_s"] = time.perf_counter() - train_started - timing["validate_s"]
    timing["steps"] = step - start_step
    timing["sentences_per_s"] = seen / max(timing["train_s"], 1e-9)

    results: dict = {"step": step, "history": history, "unreadable_train_samples": len(unreadable)}
    for line in unreadable.report("the training split") if info.is_main else ():
        log.warning(line)
    if step >= t.steps:
        results["val"] = validate()
        barrier(info)
        best_state = ckpt.load_checkpoint(run_dir / "best.pt") if (run_dir / "best.pt").is_file() else None
        if best_state is not None:
            model.load_state_dict(best_state["model"])
        pictures = {}
        if data.test is not None:
            clock = time.perf_counter()
            test = evaluate(model, data.test, device=device, info=info, batch_size=t.eval_batch_size,
                            num_workers=t.num_workers, amp=t.amp, video=data.video, desc="test", per_sample=True)
            timing["test_s"] = time.perf_counter() - clock
            samples = test.pop("samples")
            results["test"] = test
            if info.is_main:
                split = cfg.dataset.test_split
                title = f"{cfg.dataset.name} {split} ({cfg.model.name}, best.pt)"
                print(format_table(test["metrics"], title=title))
                if test["by_kind"]:
                    print(format_table(with_shortcuts(test, data.test), title="by expression kind"))
                for key, value in test["metrics"].items():
                    writer.add_scalar(f"test/{key}", value, step)
                clock = time.perf_counter()
                pictures = write_report_pictures(model, data.test, samples, run_dir, device, amp=t.amp,
                                                 writer=writer, step=step, title=title)
                timing["pictures_s"] = time.perf_counter() - clock
        if info.is_main:
            timing["total_s"] = time.perf_counter() - started
            if model.feature_cache is not None:
                cache = model.feature_cache
                timing["feature_cache"] = {"images": len(cache), "mib": round(cache.bytes / 2**20, 1),
                                           "hits": cache.hits, "misses": cache.misses}
            results["timing"] = timing
            summary = {k: v for k, v in results.items() if k != "history"}
            (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
            for name, path in pictures.items():
                print(f"{name.replace('_', ' ')}: {path.resolve()}")
    if writer is not None:
        writer.close()
    if run_lock is not None:
        run_lock.release()
    cleanup(info)
    return results
