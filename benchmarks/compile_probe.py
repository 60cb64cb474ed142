"""What ``torch.compile`` and the host see of a training step: graphs, graph breaks, recompiles, host syncs.

    python benchmarks/compile_probe.py [--device auto|cpu|cuda[:N]] [--steps 24] [--out benchmarks/results/compile.md]

Tiny widths (the counts do not depend on the widths), 64x64 inputs, batch 8 grouped by image with 1-12
sentences per image (``cmpc.engine.sampler.StepBatchSampler``), so that the number of distinct images per
batch varies from step to step as in a grouped run:

- graphs and graph breaks: ``torch._dynamo.explain`` of a training forward of CMPC-I and CMPC-V, with the
  break reasons;
- recompiles: training steps through ``torch.compile`` (backend ``eager``: dynamo alone, no code generation),
  counting the graphs dynamo compiled, with the trainer's dynamic image count and with static shapes;
- host syncs per step: calls that make the host wait for a GPU (``item``, ``bool``, ``float``, ``int``, ``tolist``,
  ``cpu``, ``numpy``) made by cmpc code (not the optimiser's CPU step counters) during eager training steps
  with losses logged every ``--log-every`` steps (``cmpc.engine.trainer.LossLog``), grouped by the cmpc line
  that made them. Counted by a torch function mode,
  so also on a CPU; a CPU-only check (the empty-sentence test of ``check_nonempty``) is listed separately
  because on a GPU it is an asynchronous device assert.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import sys
import traceback
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish  # noqa: E402

TINY = ["backbone=small", "model.visual_dim=16", "model.word_dim=16", "model.embed_dim=8", "model.dim=16",
        "model.out_dim=8", "model.word_classifier_dim=8", "model.convlstm_hidden=8", "backbone.widths=[8,8,16,16]",
        "trainer.batch_size=8", "trainer.group_by_image=true"]
SIZE, VOCAB, WORDS = 64, 50, 20
SYNCS = {"item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy"}


def compose(video: bool):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = TINY + (["model=cmpc_v", "dataset=synthetic_video", "dataset.num_frames=3"] if video else [])
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def grouped_batches(steps: int, frames: int, seed: int = 0):
    """Collated batches of 8 sentences from images with 1-12 sentences each, in the sampler's order."""
    from cmpc.engine.sampler import StepBatchSampler

    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 13, (40,), generator=g).tolist()
    owner = [image for image, n in enumerate(sizes) for _ in range(n)]
    groups, start = [], 0
    for n in sizes:
        groups.append(list(range(start, start + n)))
        start += n
    for indices in StepBatchSampler(groups, 8, seed=seed, steps=steps):
        images = list(dict.fromkeys(owner[i] for i in indices))
        shape = (len(images), frames, 3, SIZE, SIZE) if frames > 1 else (len(images), 3, SIZE, SIZE)
        words = torch.zeros(len(indices), WORDS, dtype=torch.long)
        for row in range(len(indices)):
            n = int(torch.randint(3, 12, (1,), generator=g))
            words[row, WORDS - n:] = torch.randint(2, VOCAB, (n,), generator=g)
        yield {"clip" if frames > 1 else "image": torch.randn(shape, generator=g), "words": words,
               "target": (torch.rand(len(indices), SIZE, SIZE, generator=g) > 0.5).float(),
               "image_index": torch.tensor([images.index(owner[i]) for i in indices])}


def build(video: bool, device):
    from cmpc.engine.optim import build_optimizer
    from cmpc.models import build_model

    torch.manual_seed(0)
    cfg = compose(video)
    model = build_model(cfg.model, cfg.backbone, VOCAB).to(device).train()
    return model, cfg.trainer, build_optimizer(model, cfg.trainer), (3 if video else 1)


def explain(video: bool, device) -> dict:
    model, t, _, frames = build(video, device)
    torch._dynamo.config.allow_rnn = True  # as cmpc.engine.trainer.compile_model
    batch = next(grouped_batches(1, frames))
    from cmpc.engine.evaluate import model_inputs

    result = torch._dynamo.explain(model)(*model_inputs(batch, device))
    reasons = sorted({str(b.reason).splitlines()[0][:120] for b in result.break_reasons})
    return {"graphs": result.graph_count, "breaks": result.graph_break_count, "reasons": reasons}


def recompiles(video: bool, device, steps: int, dynamic: bool) -> dict:
    from cmpc.engine.trainer import train_step

    torch._dynamo.reset()
    torch._dynamo.config.allow_rnn = True
    model, t, optimizer, frames = build(video, device)
    t.compile = dynamic  # batch_loss marks the image count dynamic only for compiled runs
    net = torch.compile(model, backend="eager")
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    counts = set()
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for batch in grouped_batches(steps, frames):
        counts.add(len(batch["clip" if frames > 1 else "image"]))
        train_step(net, batch, optimizer, scaler, t, device)
    return {"graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"] - before, "image_counts": len(counts)}


class SyncCounter(TorchFunctionMode):
    """Counts host-sync calls on tensors by the cmpc source line that made them."""

    def __init__(self):
        super().__init__()
        self.sites = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCS:
            stack = traceback.extract_stack()[:-1]
            frames = [f for f in stack if "/cmpc/" in f.filename]
            # the optimiser's step counters live on the CPU whatever the device: not a sync
            if frames and not any("/torch/optim/" in f.filename for f in stack):
                where = f"{Path(frames[-1].filename).relative_to(ROOT)}:{frames[-1].lineno}"
                self.sites[(name, where, frames[-1].name)] += 1
        return func(*args, **(kwargs or {}))


def syncs(video: bool, device, steps: int, log_every: int) -> dict:
    from cmpc.engine.distributed import DistInfo
    from cmpc.engine.trainer import LossLog, train_step

    model, t, optimizer, frames = build(video, device)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    log, counter = LossLog(DistInfo()), SyncCounter()
    batches = list(grouped_batches(steps, frames))  # the data pipeline runs on the host anyway: not counted
    with counter:
        for step, batch in enumerate(batches, start=1):
            loss, parts = train_step(model, batch, optimizer, scaler, t, device)
            log.add(step, 0.0, loss, parts)
            if step % log_every == 0:
                log.flush("none")
    return {"steps": steps, "sites": dict(counter.sites)}


def report(args, device) -> str:
    lines = [f"# torch.compile and host syncs of a training step ({datetime.date.today()})", "",
             f"`python benchmarks/compile_probe.py {' '.join(sys.argv[1:])}`", "",
             f"device {device}, torch {torch.__version__}; tiny widths, {SIZE}x{SIZE}, batch 8 grouped by image "
             f"(1-12 sentences per image), {args.steps} steps", ""]
    lines += ["| model | graphs | graph breaks | break reasons | graphs compiled over the steps: dynamic image count "
              "/ static shapes | distinct image counts |", "|---|---:|---:|---|---|---:|"]
    for video in (False, True):
        ex = explain(video, device)
        dyn, static = (recompiles(video, device, args.steps, d) for d in (True, False))
        lines.append(f"| {'CMPC-V' if video else 'CMPC-I'} | {ex['graphs']} | {ex['breaks']} | "
                     f"{'; '.join(ex['reasons']) or '-'} | {dyn['graphs']} / {static['graphs']} | "
                     f"{dyn['image_counts']} |")
    lines += ["", f"Host syncs (CMPC-I, eager, losses logged every {args.log_every} steps):", "",
              "| call | where | calls | per step |", "|---|---|---:|---:|"]
    counted = syncs(False, device, args.steps, args.log_every)
    for (name, where, function), n in sorted(counted["sites"].items(), key=lambda kv: -kv[1]):
        note = " (CPU only; a device assert on a GPU)" if function == "check_nonempty" else ""
        lines.append(f"| `{name}` | `{where}` ({function}){note} | {n} | {n / counted['steps']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--log-every", type=int, default=20, help="trainer.log_every of the sync count")
    parser.add_argument("--out", default=None, help="also write the markdown report here")
    args = parser.parse_args()
    from cmpc.engine.distributed import resolve_device

    device = resolve_device(args.device)
    publish(report(args, device), args.out)


if __name__ == "__main__":
    main()
