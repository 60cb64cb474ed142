"""Relation-Aware Reasoning alone: the fast path (A M = B1 (B2 M), never N x N) against the explicit
adjacency, at the paper's width C = 1000 and T = 20 words, for 320, 480 and 640 pixel inputs
(N = 40^2, 60^2, 80^2 positions). Forward + backward, batch 1.

Each measurement runs in a fresh process so that peak memory is its own: on CUDA the allocator's peak,
on CPU the growth of the process's peak resident set over the state after building the inputs
(the first, warm-up, step is included in the memory peak and excluded from the timings).

    python benchmarks/rar.py [--device cpu|cuda] [--repeats 3] [--out benchmarks/results/rar.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure(size: int, path: str, device: str, repeats: int) -> dict:
    import torch

    from cmpc.models.relation import RelationAwareReasoning

    torch.manual_seed(0)
    side = size // 8
    rar = RelationAwareReasoning(dim=1000, word_dim=1000, layers=1, path=path).to(device)
    m = torch.randn(1, 1000, side, side, device=device, requires_grad=True)
    words = torch.randn(1, 20, 1000, device=device)
    mask = torch.ones(1, 20, dtype=torch.bool, device=device)

    def step():
        rar(m, words, mask).square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step()  # warm-up: counts for memory, not for time
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"size": size, "n": side * side, "path": path, "ms": 1000 * statistics.median(times), "peak_mb": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 480, 640])
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: SIZE PATH in a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], args.device, args.repeats)))
        return
    rows = []
    for size in args.sizes:
        for path in ("fast", "explicit"):
            child = subprocess.run([sys.executable, __file__, "--one", str(size), path, "--device", args.device,
                                    "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    lines = [f"RAR block, C=1000, T=20, batch 1, forward+backward, median of {args.repeats} after warm-up; "
             f"device {args.device} ({platform.processor() or platform.machine()})", "",
             "| input | N | path | time (ms) | peak extra memory (MiB) |", "|---|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['n']} | {r['path']} | {r['ms']:.1f} | {r['peak_mb']:.1f} |")
    for size in args.sizes:
        fast, explicit = (next(r for r in rows if r["size"] == size and r["path"] == p) for p in ("fast", "explicit"))
        lines.append(f"\n{size}: fast path {explicit['ms'] / fast['ms']:.1f}x faster, "
                     f"{fast['peak_mb'] / max(explicit['peak_mb'], 1e-9):.3f} of the explicit peak memory")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
