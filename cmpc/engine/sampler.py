"""A batch sampler whose order is a pure function of (seed, step): exact resume and DDP equivalence.

The dataset is a list of groups of sample indices (one group per image when sentences are grouped so
that the backbone runs once per image; one index per group otherwise). Epoch ``e`` visits the groups in
the permutation drawn from ``seed + e``; a global batch takes whole groups in that order while they fit
in ``batch_size`` sentences (groups larger than a batch are split), continuing across epochs. With
``world_size`` ranks each rank takes every ``world_size``-th group of the same global batch, so a DDP
run sees exactly the samples of the single-process run. Resuming at step ``s`` continues with the very
next batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[int]]):
    def __init__(self, groups: int | Sequence[Sequence[int]], batch_size: int, seed: int = 0, start_step: int = 0,
                 rank: int = 0, world_size: int = 1, steps: int | None = None):
        if batch_size % world_size:
            raise ValueError(f"global batch size {batch_size} is not divisible by {world_size} processes")
        if isinstance(groups, int):
            groups = [[i] for i in range(groups)]
        self.groups = [list(g[i : i + batch_size]) for g in groups for i in range(0, len(g), batch_size)]
        if not self.groups:
            raise ValueError("cannot sample batches from an empty dataset")
        self.batch_size, self.seed = batch_size, seed
        self.start_step, self.rank, self.world_size, self.steps = start_step, rank, world_size, steps

    def _global_batches(self):
        epoch, order, pos = 0, None, 0
        pending = None
        while True:
            batch, count = [], 0
            while True:
                if pending is None:
                    if order is None or pos == len(order):
                        order = torch.randperm(len(self.groups), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
                        epoch, pos = epoch + 1, 0
                    pending, pos = self.groups[order[pos]], pos + 1
                if batch and count + len(pending) > self.batch_size:
                    break
                batch.append(pending)
                count += len(pending)
                pending = None
                if count == self.batch_size:
                    break
            yield batch

    def __iter__(self):
        step = 0
        for groups in self._global_batches():
            if self.steps is not None and step >= self.steps:
                return
            if step >= self.start_step:
                yield [i for group in groups[self.rank :: self.world_size] for i in group]
            step += 1

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless StepBatchSampler has no length")
        return max(self.steps - self.start_step, 0)
