"""The cmpc benchmark suite: one run, one markdown table (docs/performance.md explains the rows).

    python benchmarks/run.py [--device auto|cpu|cuda] [--amp bf16|fp16] [--size 320] [--batch 8]
                             [--per-image 4] [--frames 5] [--repeats 3] [--sections train infer rar data video]
                             [--compile] [--out benchmarks/results/cpu.md] [--tiny] [--rows N ...] [--rounds R]

Sections (paper-size models: DeepLab-ResNet101, widths of paper 4.1.3, random weights):
- train: CMPC-I training steps (forward, loss, backward, Adam) in sentences/s and peak memory for the
  official style (batch 1, one backbone pass per sentence) and each speed-up added in turn: batching,
  the grouped backbone (``--per-image`` sentences share one image, as ``trainer.group_by_image``), AMP,
  channels-last, ``torch.compile`` (``--compile``);
- infer: evaluation latency (batch 1) and throughput (grouped batches, AMP); then DenseCRF alone on the
  predicted maps, serial vs the process pool (``cmpc.crf.CRFPool``);
- rar: benchmarks/rar.py (RAR block and graph propagation, fast vs explicit, at 320/480/640);
- data: the training data loader (synthetic benchmark in the refer layout, letterboxed to ``--size``)
  against the model's consumption rate;
- video: CMPC-V with K = ``--frames``: training steps official-style vs batched vs AMP, inference latency.

Every row runs in its own process (peak memory is its own: CUDA allocator peak, or the CPU process's peak
resident set), takes one warm-up step, then reports the median of ``--repeats`` timed steps, so that the
ratios between rows of one run hold on a noisy machine. ``--tiny`` uses tiny widths (a smoke test).
On a machine shared with other jobs, ``--rounds R`` runs the rows in turn R times (A, B, A, B, ...) so that every
row meets the same changes of load, reports each row's median over the rounds and, per round, its figure and the
1-minute load average when it started; ``--rows`` picks rows by their number in the full report (1 = first).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_time, publish  # noqa: E402

VOCAB = 10000
TINY = ["backbone=small", "model.visual_dim=32", "model.word_dim=32", "model.embed_dim=16", "model.dim=32",
        "model.out_dim=16", "model.word_classifier_dim=16", "model.convlstm_hidden=16"]


def compose(video: bool, args):
    """The paper-size configuration: UNC recipe (CMPC-I) or A2D recipe (CMPC-V, K = ``--frames``) at ``--size``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = [f"dataset={'a2d' if video else 'unc'}", f"dataset.input_size={args.size}"]
    overrides += [f"dataset.num_frames={args.frames}"] if video else []
    overrides += TINY if args.tiny else []
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def fake_batch(sentences: int, per_image: int, size: int, frames: int, max_words: int) -> dict:
    """Random images (or clips), left-padded sentences of 5-15 words and box targets, in the collated layout;
    ``per_image > 1`` shares each image among that many sentences (``image_index``, as collate_grouped)."""
    g = torch.Generator().manual_seed(0)
    images = sentences // per_image
    shape = (images, frames, 3, size, size) if frames > 1 else (images, 3, size, size)
    words = torch.zeros(sentences, max_words, dtype=torch.long)
    target = torch.zeros(sentences, size, size)
    for i in range(sentences):
        n = int(torch.randint(5, 16, (1,), generator=g))
        words[i, max_words - n:] = torch.randint(2, VOCAB, (n,), generator=g)
        y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
        target[i, y:y + size // 3, x:x + size // 3] = 1
    batch = {"clip" if frames > 1 else "image": torch.randn(shape, generator=g), "words": words, "target": target}
    if per_image > 1:
        batch["image_index"] = torch.arange(images).repeat_interleave(per_image)
    return batch


def peak_memory(device: torch.device) -> float:
    """MiB: the CUDA allocator's peak, or the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(step, device: torch.device, repeats: int) -> dict:
    """Seconds per step (benchmarks/common.py protocol) and the peak memory."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    return {"s": median_time(step, repeats, sync), "peak_mb": peak_memory(device)}


def measure_row(row: dict, args) -> dict:
    """Build the model of ``row`` and time its train step or inference (runs in a child process)."""
    from cmpc.engine.distributed import resolve_device
    from cmpc.engine.evaluate import predict_logits
    from cmpc.engine.optim import build_optimizer
    from cmpc.engine.trainer import compile_model, train_step
    from cmpc.models import build_model

    torch.manual_seed(0)
    device = resolve_device(args.device)
    video = row["section"] == "video"
    cfg = compose(video, args)
    frames = args.frames if video else 1
    model = build_model(cfg.model, cfg.backbone, VOCAB).to(device)
    t = cfg.trainer
    t.amp, t.channels_last = row.get("amp", "off"), row.get("channels_last", False)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = compile_model(model) if row.get("compile") else model
    batch = fake_batch(row["batch"], row.get("per_image", 1), args.size, frames, cfg.dataset.max_words)
    if row["mode"] == "train":
        model.train()
        optimizer = build_optimizer(model, t)
        scaler = torch.amp.GradScaler(device.type, enabled=t.amp == "fp16")
        result = timed(lambda: train_step(net, batch, optimizer, scaler, t, device), device, args.repeats)
    else:
        model.eval()
        if row["mode"] == "infer":
            result = timed(lambda: predict_logits(net, batch, device, t.amp, t.channels_last), device, args.repeats)
        else:  # DenseCRF alone, on this model's probability maps
            from crf_pool import synthetic

            from cmpc.crf import CRFPool

            probs = [torch.sigmoid(s).numpy() for s in predict_logits(net, batch, device, t.amp, t.channels_last)]
            images = synthetic(len(probs), args.size)[0]
            with CRFPool(0 if row["crf"] == "serial" else None) as pool:
                pool.warmup()
                result = timed(lambda: pool.map(images, probs), device, args.repeats)
    return {**row, **result, "sentences_per_s": row["batch"] / result["s"]}


def data_row(args) -> dict:
    """Sentences/s of the training data loader (trainer defaults: grouped sampler, workers) on the synthetic
    benchmark letterboxed to ``--size``; the first batch (worker start-up) is not timed."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from torch.utils.data import DataLoader

    from cmpc.data import collate_grouped
    from cmpc.engine.builders import build_datasets
    from cmpc.engine.sampler import StepBatchSampler, group_indices

    overrides = ["dataset=synthetic", f"dataset.input_size={args.size}", "trainer=paper_image"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides)
    data = build_datasets(cfg, splits=("train",))
    batches = 4 if args.tiny else 40
    sampler = StepBatchSampler(group_indices(data.train), args.batch, steps=batches + 1)
    loader = DataLoader(data.train, batch_sampler=sampler, num_workers=cfg.trainer.num_workers,
                        collate_fn=collate_grouped)
    it = iter(loader)
    next(it)
    start, sentences = time.perf_counter(), 0
    for batch in it:
        sentences += len(batch["words"])
    seconds = time.perf_counter() - start
    return {"section": "data", "sentences_per_s": sentences / seconds,
            "name": f"training data loader ({cfg.trainer.num_workers} workers, batch {args.batch}, grouped)"}


def amp_label(args, device: str) -> str:
    """``bf16``, or ``bf16 (runs float32: not native here)`` when cmpc.engine.precision replaces the request."""
    from cmpc.engine.precision import resolve_amp

    runs = resolve_amp(device, args.amp)
    if runs == args.amp:
        return args.amp
    return f"{args.amp} (runs {'float32' if runs == 'off' else runs}: not native here)"


def rows_to_run(args, device: str) -> list[dict]:
    b, p, amp = args.batch, args.per_image, args.amp
    label = amp_label(args, device)
    rows = []
    if "train" in args.sections:
        rows += [
            {"name": "official style: batch 1, backbone per sentence", "batch": 1},
            {"name": f"batched ({b} sentences, {b} images)", "batch": b},
            {"name": f"+ grouped backbone ({b} sentences, {b // p} images)", "batch": b, "per_image": p},
            {"name": f"+ AMP {label}", "batch": b, "per_image": p, "amp": amp},
            {"name": "+ channels-last", "batch": b, "per_image": p, "amp": amp, "channels_last": True},
        ]
        if args.compile:
            rows.append({"name": "+ torch.compile", "batch": b, "per_image": p, "amp": amp, "channels_last": True,
                         "compile": True})
        rows = [{"section": "train", "mode": "train", **r} for r in rows]
    if "infer" in args.sections:
        rows += [{"section": "infer", "mode": "infer", **r} for r in (
            {"name": "batch 1 (latency)", "batch": 1},
            {"name": f"grouped batch ({b} sentences, {b // p} images)", "batch": b, "per_image": p},
            {"name": f"+ AMP {label}", "batch": b, "per_image": p, "amp": amp},
        )]
        rows += [{"section": "crf", "mode": "crf", "batch": b, "per_image": p, "amp": amp, **r} for r in (
            {"name": f"DenseCRF of {b} maps, serial", "crf": "serial"},
            {"name": f"DenseCRF of {b} maps, process pool (one worker per core)", "crf": "pool"},
        )]
    if "video" in args.sections:
        vb = max(b // 2, 1)
        rows += [{"section": "video", **r} for r in (
            {"name": f"train, official style: batch 1, K={args.frames}", "mode": "train", "batch": 1},
            {"name": f"train, batched ({vb} clips)", "mode": "train", "batch": vb},
            {"name": f"train, + AMP {label}", "mode": "train", "batch": vb, "amp": amp},
            {"name": "inference, batch 1 (latency)", "mode": "infer", "batch": 1},
            {"name": f"inference, batched ({vb} clips) + AMP {label}", "mode": "infer", "batch": vb, "amp": amp},
        )]
    return rows


def child(payload: dict, args) -> dict:
    """Run one measurement in a fresh process (its own peak memory); ``load`` is the 1-minute load average of the
    machine when it started."""
    command = [sys.executable, __file__, "--child", json.dumps(payload), *args.argv]
    load = os.getloadavg()[0]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"benchmark row {payload.get('name', payload)} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "load": load}


def over_rounds(runs: list[dict]) -> dict:
    """One row measured in several rounds: the median step time (and the rate from it), the largest peak memory,
    and ``rounds``: each round's sentences/s and the load average when it started."""
    s = statistics.median(r["s"] for r in runs)
    return {**runs[0], "s": s, "sentences_per_s": runs[0]["batch"] / s, "peak_mb": max(r["peak_mb"] for r in runs),
            "rounds": [(r["sentences_per_s"], r["load"]) for r in runs]}


def report(rows: list[dict], rar_rows: list[dict], args, device: str) -> str:
    cpu = platform.processor() or platform.machine()
    if device.startswith("cuda"):
        cpu = torch.cuda.get_device_name(torch.device(device))
    lines = [f"# cmpc benchmarks ({datetime.date.today()})", "",
             f"`python benchmarks/run.py {' '.join(args.argv)}`", "",
             f"device {device} ({cpu}, ATen {torch.backends.cpu.get_cpu_capability()}, oneDNN ISA limit "
             f"{os.environ.get('ONEDNN_MAX_CPU_ISA', 'none')}), torch {torch.__version__}, "
             f"{torch.get_num_threads()} CPU threads, input {args.size}x{args.size}, median of {args.repeats} steps "
             f"after one warm-up step" + (f", median of {args.rounds} interleaved rounds" if args.rounds > 1 else "")
             + (" (TINY widths: smoke test, not the paper model)" if args.tiny else ""), ""]
    per_round = args.rounds > 1
    titles = {("train", "train"): "CMPC-I training", ("infer", "infer"): "CMPC-I inference",
              ("crf", "crf"): f"DenseCRF refinement at {args.size}x{args.size} (official parameters)",
              ("video", "train"): f"CMPC-V training, K={args.frames}",
              ("video", "infer"): f"CMPC-V inference, K={args.frames}"}
    for (section, mode), title in titles.items():
        part = [r for r in rows if (r["section"], r.get("mode")) == (section, mode)]
        if not part:
            continue
        first = part[0]["sentences_per_s"]
        lines += [f"## {title}", "",
                  "| configuration | batch | ms / step | sentences/s | vs first row | peak memory (MiB) |"
                  + (" sentences/s per round (1-min load at its start) |" if per_round else ""),
                  "|---|---:|---:|---:|---:|---:|" + ("---|" if per_round else "")]
        for r in part:
            rounds = ", ".join(f"{rate:.2f} ({load:.1f})" for rate, load in r.get("rounds", []))
            lines.append(f"| {r['name']} | {r['batch']} | {1000 * r['s']:.0f} | {r['sentences_per_s']:.2f} | "
                         f"{r['sentences_per_s'] / first:.2f}x | {r['peak_mb']:.0f} |" + (f" {rounds} |" if per_round
                                                                                         else ""))
        lines.append("")
    data = next((r for r in rows if r["section"] == "data"), None)
    train = [r for r in rows if r["section"] == "train"]
    if data:
        lines += ["## Data loading", "", f"{data['name']}: {data['sentences_per_s']:.1f} sentences/s"
                  + (f", {data['sentences_per_s'] / max(r['sentences_per_s'] for r in train):.1f}x what the fastest "
                     "CMPC-I training row consumes." if train else "."), ""]
    if rar_rows:
        from rar import table

        lines += ["## RAR block and graph propagation (benchmarks/rar.py)", "", table(rar_rows, device, args.repeats),
                  ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--amp", default="bf16", choices=["bf16", "fp16"], help="mixed precision of the AMP rows")
    parser.add_argument("--size", type=int, default=320, help="input size (paper: 320)")
    parser.add_argument("--batch", type=int, default=8, help="sentences per batched step")
    parser.add_argument("--per-image", type=int, default=4, help="sentences per image in grouped rows (UNC: ~7)")
    parser.add_argument("--frames", type=int, default=5, help="K for CMPC-V")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", nargs="+", default=["train", "infer", "rar", "data", "video"],
                        choices=["train", "infer", "rar", "data", "video"])
    parser.add_argument("--compile", action="store_true", help="add a torch.compile training row")
    parser.add_argument("--tiny", action="store_true", help="tiny widths and sizes: check that the suite runs")
    parser.add_argument("--rows", type=int, nargs="+", help="only these rows, by number in the full report (1 = first)")
    parser.add_argument("--rounds", type=int, default=1, help="run the rows in turn this many times (A, B, A, B)")
    parser.add_argument("--out", default=None, help="also write the markdown report here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.argv = sys.argv[1:]  # forwarded to the child processes
    if args.child:
        payload = json.loads(args.child)
        print(json.dumps(data_row(args) if payload.get("section") == "data" else measure_row(payload, args)))
        return
    if args.batch % args.per_image:
        parser.error(f"--batch {args.batch} must be a multiple of --per-image {args.per_image}")
    from cmpc.engine.distributed import resolve_device

    device = str(resolve_device(args.device))
    plan = rows_to_run(args, device)
    if args.rows:
        if not all(1 <= n <= len(plan) for n in args.rows):
            parser.error(f"--rows: these sections have rows 1-{len(plan)}")
        plan = [plan[n - 1] for n in args.rows]
    runs = [[] for _ in plan]
    for round_ in range(args.rounds):
        for row, measured in zip(plan, runs):
            measured.append(child(row, args))
            print(f"{row['section']:6s} {row['name']} (round {round_ + 1}, load {measured[-1]['load']:.1f}): "
                  f"{measured[-1]['sentences_per_s']:.2f} sentences/s", flush=True)
    rows = [over_rounds(measured) for measured in runs]
    if "data" in args.sections:
        rows.append(child({"section": "data"}, args))
    rar_rows = []
    if "rar" in args.sections:
        from rar import run_rows

        rar_rows = run_rows([64, 96] if args.tiny else [320, 480, 640], device, args.repeats)
    publish(report(rows, rar_rows, args, device), args.out)


if __name__ == "__main__":
    main()
