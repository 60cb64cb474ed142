"""Helpers shared by the benchmark scripts: the timing protocol and writing a report."""

from __future__ import annotations

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
