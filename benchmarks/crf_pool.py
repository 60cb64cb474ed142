"""Serial vs pooled DenseCRF time (cmpc.crf.CRFPool) on synthetic images.

    python benchmarks/crf_pool.py --n 32 --size 320 [--workers N]

Prints the serial time, the pooled time including the start of the worker processes (cold) and with
warm workers, and the speed-ups (best of --repeats; the machine may be shared, so compare on a quiet one).
Results are checked to be identical.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from cmpc.crf import CRFPool


def synthetic(n: int, size: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Noisy images of a bright disk and a coarse probability map of it (a box-blurred, shifted disk)."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, probs = [], []
    for _ in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        r = rng.uniform(0.15, 0.3) * size
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img = np.where(disk[..., None], rng.uniform(150, 230, 3), rng.uniform(20, 90, 3))
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        shifted = np.roll(disk, int(rng.integers(-8, 9)), axis=1).astype(np.float32)
        probs.append(np.clip(cv2.blur(shifted, (31, 31)) * 0.9 + 0.05, 0, 1))
        images.append(img)
    return images, probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="number of images")
    ap.add_argument("--size", type=int, default=320, help="square image side")
    ap.add_argument("--workers", type=int, default=None, help="pool size (default: usable CPUs)")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many timings (serial and warm pool alternate)")
    args = ap.parse_args()
    images, probs = synthetic(args.n, args.size)

    serial_pool = CRFPool(workers=0)
    pool = CRFPool(workers=args.workers)
    t = time.perf_counter()
    ref = serial_pool.map(images, probs)
    serial_times = [time.perf_counter() - t]
    t = time.perf_counter()
    cold = pool.map(images, probs)  # starts the worker processes
    t_cold = time.perf_counter() - t
    warm_times, warm = [], cold
    for r in range(args.repeats):  # alternate, so that load from other programs hits both alike
        t = time.perf_counter()
        warm = pool.map(images, probs)
        warm_times.append(time.perf_counter() - t)
        if r + 1 < args.repeats:
            t = time.perf_counter()
            serial_pool.map(images, probs)
            serial_times.append(time.perf_counter() - t)
    pool.close()
    t_serial, t_warm = min(serial_times), min(warm_times)

    same = all(np.array_equal(a, b) for a, b in zip(ref, cold)) and all(np.array_equal(a, b) for a, b in zip(ref, warm))
    print(f"{args.n} images of {args.size}x{args.size}, cpus usable={len(os.sched_getaffinity(0))}, "
          f"workers={pool.workers}")
    print(f"serial          : {t_serial:7.3f} s  ({1000 * t_serial / args.n:.1f} ms/image)")
    print(f"pool (cold)     : {t_cold:7.3f} s  speed-up {t_serial / t_cold:.2f}x  (includes starting the workers)")
    print(f"pool (warm)     : {t_warm:7.3f} s  speed-up {t_serial / t_warm:.2f}x")
    print(f"identical results: {same}")


if __name__ == "__main__":
    main()
