"""A batch sampler whose order is a pure function of (seed, step): exact resume and DDP equivalence.

Epoch ``e`` visits the dataset in the permutation drawn from ``seed + e``; step ``s`` takes the global
batch at positions ``[s * B, (s + 1) * B)`` of the concatenated epochs. With ``world_size`` ranks each
rank takes every ``world_size``-th element of the same global batch, so a DDP run sees exactly the
samples of the single-process run. Resuming at step ``s`` continues with the very next batch.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[int]]):
    def __init__(self, size: int, batch_size: int, seed: int = 0, start_step: int = 0, rank: int = 0, world_size: int = 1, steps: int | None = None):
        if batch_size % world_size:
            raise ValueError(f"global batch size {batch_size} is not divisible by {world_size} processes")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start_step, self.rank, self.world_size, self.steps = start_step, rank, world_size, steps

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self):
        position = self.start_step * self.batch_size
        epoch, offset = divmod(position, self.size)
        perm = self._permutation(epoch)
        step = self.start_step
        while self.steps is None or step < self.steps:
            batch = []
            while len(batch) < self.batch_size:
                take = perm[offset : offset + self.batch_size - len(batch)]
                batch.extend(take.tolist())
                offset += len(take)
                if offset >= self.size:
                    epoch, offset = epoch + 1, 0
                    perm = self._permutation(epoch)
            yield batch[self.rank :: self.world_size]
            step += 1

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless StepBatchSampler has no length")
        return max(self.steps - self.start_step, 0)
