"""Relation-Aware Reasoning alone: the fast path (A M = B1 (B2 M), never N x N) against the explicit
adjacency, at the paper's width C = 1000 and T = 20 words, for 320, 480 and 640 pixel inputs
(N = 40^2, 60^2, 80^2 positions). Forward + backward, batch 1. Two parts are measured: the whole RAR
block (eqs. 5-10, whose linear layers, LayerNorm and L2 norm keep O(N C) activations on both paths) and
the graph propagation ``A M~`` of eqs. 9-10 alone, the only computation in which the paths differ.

Each measurement runs in a fresh process so that peak memory is its own: on CUDA the allocator's peak,
on CPU the growth of the process's peak resident set over the state after building the inputs
(the first, warm-up, step is included in the memory peak and excluded from the timings).

    python benchmarks/rar.py [--device cpu|cuda] [--repeats 3] [--out benchmarks/results/rar.md]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from common import median_time, publish

PARTS = ("block", "propagation")


def measure(size: int, path: str, device: str, repeats: int, part: str = "block") -> dict:
    import torch

    from cmpc.models.relation import RelationAwareReasoning

    torch.manual_seed(0)
    side = size // 8
    n, c, t = side * side, 1000, 20
    if part == "block":
        rar = RelationAwareReasoning(dim=c, word_dim=c, layers=1, path=path).to(device)
        m = torch.randn(1, c, side, side, device=device, requires_grad=True)
        words = torch.randn(1, t, c, device=device)
        mask = torch.ones(1, t, dtype=torch.bool, device=device)

        def forward():
            return rar(m, words, mask)
    else:
        b1 = torch.softmax(torch.randn(1, n, t, device=device), dim=2).requires_grad_()  # eq. 7
        b2 = torch.softmax(torch.randn(1, t, n, device=device), dim=2).requires_grad_()  # eq. 8
        x = torch.randn(1, n, c, device=device, requires_grad=True)

        def forward():
            return (b1 @ b2) @ x if path == "explicit" else b1 @ (b2 @ x)  # A M~, eqs. 9-10

    def step():
        forward().square().mean().backward()

    cuda = torch.device(device).type == "cuda"  # any CUDA device, cuda:N included
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds = median_time(step, repeats, (lambda: torch.cuda.synchronize(device)) if cuda else lambda: None)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"size": size, "n": n, "part": part, "path": path, "ms": 1000 * seconds,
            "peak_mb": peak / 2**20}


def run_rows(sizes, device: str, repeats: int) -> list[dict]:
    """Every (part, size, path) measured in its own process, so that each peak memory is its own."""
    rows = []
    for part in PARTS:
        for size in sizes:
            for path in ("fast", "explicit"):
                child = subprocess.run([sys.executable, __file__, "--one", str(size), path, part, "--device", device,
                                        "--repeats", str(repeats)], capture_output=True, text=True, check=True)
                rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    return rows


def table(rows: list[dict], device: str, repeats: int) -> str:
    lines = [f"RAR, C=1000, T=20, batch 1, forward+backward, median of {repeats} after warm-up; device {device}; "
             "peak = growth of the process's peak memory (CPU: resident set; CUDA: allocator) over the inputs", "",
             "| part | input | N | path | time (ms) | peak extra memory (MiB) | fast vs explicit |",
             "|---|---|---:|---|---:|---:|---|"]
    for r in rows:
        note = ""
        if r["path"] == "fast":
            ex = next(e for e in rows if (e["part"], e["size"], e["path"]) == (r["part"], r["size"], "explicit"))
            note = f"{ex['ms'] / r['ms']:.1f}x faster, {r['peak_mb'] / max(ex['peak_mb'], 1e-9):.3f} of the memory"
        lines.append(f"| {r['part']} | {r['size']} | {r['n']} | {r['path']} | {r['ms']:.1f} | {r['peak_mb']:.1f} "
                     f"| {note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 480, 640])
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: SIZE PATH PART in a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], args.device, args.repeats, args.one[2])))
        return
    publish(table(run_rows(args.sizes, args.device, args.repeats), args.device, args.repeats), args.out)


if __name__ == "__main__":
    main()
