"""A batch sampler whose order is a pure function of (seed, step): exact resume and DDP equivalence.

The dataset is a list of groups of sample indices (one group per image when sentences are grouped so
that the backbone runs once per image; one index per group otherwise). Epoch ``e`` visits the groups in
the permutation drawn from ``seed + e``; a batch may hold the end of one epoch and the start of the next.

Every global batch holds exactly ``batch_size`` sentences. It starts with the oldest waiting group and is
filled with whole groups, each time the first of the epoch's next ``LOOKAHEAD`` waiting groups that fits
the remaining room; when none fits, the oldest waiting group is split and its rest waits for the next
batch (a group larger than a batch is always split). Sentences of one group stay next to each other.

With ``world_size`` ranks, rank ``r`` takes the ``r``-th of ``world_size`` equal contiguous slices of the
global batch: every rank gets ``batch_size / world_size`` sentences (never an empty batch, whatever the
group sizes), so the mean over ranks of each rank's mean loss, which DDP's gradient averaging computes,
is the mean over the global batch, and a DDP run sees exactly the samples of the single-process run. A
group cut by a slice boundary has its image on both ranks. Resuming at step ``s`` continues with the very
next batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

LOOKAHEAD = 16  # groups searched for one that fits the room left in a batch


def group_indices(dataset) -> list[list[int]]:
    """Sample indices grouped by image (``dataset.group_key``), in dataset order; one group per sample for a
    dataset without ``group_key`` (e.g. a wrapper)."""
    key = getattr(dataset, "group_key", str)
    groups: dict[str, list[int]] = {}
    for i in range(len(dataset)):
        groups.setdefault(key(i), []).append(i)
    return list(groups.values())


def shard_groups(groups: Sequence[Sequence[int]], rank: int, world_size: int) -> list[int]:
    """The indices of the whole groups that ``rank`` evaluates: groups in order, rank ``r`` taking those whose middle
    lies in the ``r``-th of ``world_size`` equal parts of the sentence count (shard sizes differ by at most the
    largest group)."""
    total = sum(len(g) for g in groups)
    mine, start = [], 0
    for group in groups:
        if (2 * start + len(group)) * world_size // max(2 * total, 1) == rank:
            mine.extend(group)
        start += len(group)
    return mine


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's sample indices for each step from ``start_step`` to ``steps`` (endless with None).

    ``groups``: a number of samples (one group each) or lists of indices. Raises ValueError when the dataset is
    empty or ``batch_size`` is not a multiple of ``world_size``."""

    def __init__(self, groups: int | Sequence[Sequence[int]], batch_size: int, seed: int = 0, start_step: int = 0,
                 rank: int = 0, world_size: int = 1, steps: int | None = None):
        if batch_size % world_size:
            raise ValueError(f"global batch size {batch_size} is not divisible by {world_size} processes")
        if isinstance(groups, int):
            groups = [[i] for i in range(groups)]
        self.groups = [list(g) for g in groups if len(g)]
        if not self.groups:
            raise ValueError("cannot sample batches from an empty dataset")
        self.batch_size, self.seed = batch_size, seed
        self.start_step, self.rank, self.world_size, self.steps = start_step, rank, world_size, steps

    def global_batches(self) -> Iterator[list[int]]:
        """Every rank's sentences of each step, ``batch_size`` indices per step (see the module docstring)."""
        epoch, waiting = 0, deque()  # the groups of the current epoch not used yet, in epoch order
        batch, room = [], self.batch_size
        while True:
            if not waiting:
                order = torch.randperm(len(self.groups), generator=torch.Generator().manual_seed(self.seed + epoch))
                waiting, epoch = deque(self.groups[i] for i in order.tolist()), epoch + 1
            fits = next((k for k in range(min(LOOKAHEAD, len(waiting))) if len(waiting[k]) <= room), None)
            if fits is None or (room == self.batch_size and fits != 0):  # split the oldest group
                batch += waiting[0][:room]
                waiting[0] = waiting[0][room:]
                room = 0
            else:
                batch += waiting[fits]
                room -= len(waiting[fits])
                del waiting[fits]
            if room == 0:
                yield batch
                batch, room = [], self.batch_size

    def __iter__(self):
        share = self.batch_size // self.world_size
        for step, batch in enumerate(self.global_batches()):
            if self.steps is not None and step >= self.steps:
                return
            if step >= self.start_step:
                yield batch[self.rank * share : (self.rank + 1) * share]

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless StepBatchSampler has no length")
        return max(self.steps - self.start_step, 0)
