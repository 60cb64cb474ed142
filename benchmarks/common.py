"""Helpers shared by the benchmark scripts: the timing protocol, writing a report, reading a trained run."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def median_time(step, repeats: int, sync=lambda: None) -> float:
    """Seconds per ``step()``: one warm-up call (not timed), then the median of ``repeats`` timed calls;
    ``sync()`` runs after each call (e.g. ``torch.cuda.synchronize``)."""
    step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def publish(text: str, out: str | None) -> None:
    """Print the report and, with ``out``, also write it there."""
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def run_parser(doc: str) -> argparse.ArgumentParser:
    """Arguments of the scripts that evaluate a training checkpoint: checkpoint, split, device, threads."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="best.pt / last.pt of a run trained on the synthetic image benchmark")
    ap.add_argument("--split", default=None, help="default: the run's test split")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (as the configs' device)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return ap


def load_run(args):
    """``(model, config, vocab, device)`` of ``args.checkpoint`` (see :func:`run_parser`)."""
    import torch

    from cmpc.engine.builders import load_trained
    from cmpc.engine.distributed import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    return (*load_trained(args.checkpoint, device), device)
