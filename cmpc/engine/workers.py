"""Set-up of data-loader worker processes: one OpenCV thread each, and no life after the trainer's."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys

import cv2

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _init_worker(_: int, parent: int) -> None:
    cv2.setNumThreads(0)  # the workers already parallelise
    if sys.platform.startswith("linux"):
        # the kernel kills this worker when the trainer dies, even by kill -9 (torch's own watchdog notices
        # only between batches, and a worker blocked on a full result queue never exits)
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the trainer died before prctl took effect
            os._exit(1)


def worker_init() -> functools.partial:
    """A ``worker_init_fn`` for :class:`torch.utils.data.DataLoader`, made in the process that owns the loader."""
    return functools.partial(_init_worker, parent=os.getpid())
