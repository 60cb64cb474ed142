"""Process-group helpers for DDP runs launched by ``torchrun`` (one process per GPU, or gloo on CPU)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cmpc.cli import one_line_reason
from cmpc.engine.config_check import process_count
from cmpc.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local GPU when there is one, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but CUDA is not available; use device=cpu or device=auto")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    return torch.device(name)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); otherwise a single process."""
    world_size = process_count()
    if world_size == 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (a list of one item in a single process)."""
    if info.world_size == 1:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on at least one (a single process returns ``flag``)."""
    if info.world_size == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@contextlib.contextmanager
def fail_together(info: DistInfo) -> Iterator[None]:
    """Every rank enters the block (whose work is often rank 0's alone: writing a checkpoint or a log); when it
    raises on any rank, it raises on every rank, so that no rank waits forever at the next collective for a rank
    that stopped (a full disk on rank 0 used to leave the others hanging in the next gradient all-reduce).

    The failing rank raises its own exception; the others raise :class:`ConfigError` ``process R stopped the run:
    <its one-line reason>``. One small all-gather per use under DDP; nothing in a single process. The block must not
    itself call collectives (a rank that raised would skip them)."""
    error = None
    try:
        yield
    except Exception as err:  # noqa: BLE001 - shared with the other ranks, then re-raised unchanged
        if info.world_size == 1:
            raise
        error = err
    reasons = gather_objects(None if error is None else one_line_reason(error), info)
    if error is not None:
        raise error
    failed = next(((rank, reason) for rank, reason in enumerate(reasons) if reason is not None), None)
    if failed is not None:
        raise ConfigError(f"process {failed[0]} stopped the run: {failed[1]}")


def average_across_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``values`` over the ranks (every rank must call it; ``values`` itself when single-process)."""
    if info.world_size == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / info.world_size


def parameters_without_gradient(model: torch.nn.Module, loss: Callable[[], torch.Tensor]) -> list[str]:
    """Names of the trainable parameters of ``model`` that a backward of ``loss()`` leaves without a gradient.

    A probe: random generators, buffers (BatchNorm statistics) and gradients are restored afterwards, so the
    training run continues as if it had not happened."""
    buffers = [b.detach().clone() for b in model.buffers()]
    devices = [d for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    with torch.random.fork_rng(devices=devices):
        loss().backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for buffer, saved in zip(model.buffers(), buffers):
            buffer.copy_(saved)
    return unused


def data_parallel(model: torch.nn.Module, info: DistInfo, device: torch.device, unused: list[str]):
    """``model`` wrapped in DistributedDataParallel. ``unused`` (this rank's :func:`parameters_without_gradient`)
    decides ``find_unused_parameters``: on when any rank has a trainable parameter that gets no gradient (e.g. a
    module that is built but whose output is not used), off otherwise, since it costs a graph traversal per step."""
    find_unused = any_rank(bool(unused), info, device)
    if find_unused and info.is_main:
        log.info("DDP with find_unused_parameters: %d parameters get no gradient (%s)", len(unused),
                 ", ".join(unused[:4]) + (", ..." if len(unused) > 4 else ""))
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=find_unused)


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
