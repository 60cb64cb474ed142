"""DenseCRF refinement of a foreground-probability map, the official CMPC protocol (docs/reference.md 1.4).

The official test code (``trainval_model.py:test``) refines the sigmoid map of the 320 x 320 padded input
with ``pydensecrf``: two labels, unary energies ``[-log(1 - p), -log(p)]`` (background, foreground),
``addPairwiseGaussian(sxy=3, compat=3)``, ``addPairwiseBilateral(sxy=20, srgb=3, rgbim=image, compat=10)``,
5 mean-field iterations, argmax.  The one deliberate difference: probabilities are clamped to
``[eps, 1 - eps]`` before the log (the official code takes ``log(0)`` for saturated pixels).

:class:`CRFPool` runs many refinements in worker processes (spawn start method, one thread per worker).

This module imports nothing from ``cmpc``; ``pydensecrf`` (``pip install pydensecrf2``) is imported on first use.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, Iterable

import numpy as np

__all__ = ["CRF_DEFAULTS", "CRFPool", "dense_crf", "unary_energy"]

#: The official CMPC DenseCRF parameters.
CRF_DEFAULTS: dict[str, float] = {
    "gauss_sxy": 3,
    "gauss_compat": 3,
    "bilateral_sxy": 20,
    "bilateral_srgb": 3,
    "bilateral_compat": 10,
    "iterations": 5,
    "eps": 1e-5,
}

_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _densecrf_module():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "DenseCRF needs the pydensecrf module: pip install pydensecrf2 (import name `pydensecrf`)"
        ) from e
    return dcrf


def unary_energy(prob: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """``[-log(1 - p), -log(p)]`` (background, foreground) as float32 ``2 x H x W``, ``p`` clamped to [eps, 1-eps]."""
    p = np.clip(np.asarray(prob, dtype=np.float64), eps, 1.0 - eps)
    return np.ascontiguousarray(np.stack([-np.log1p(-p), -np.log(p)]), dtype=np.float32)


def dense_crf(
    image: np.ndarray,
    prob: np.ndarray,
    *,
    gauss_sxy: float = 3,
    gauss_compat: float = 3,
    bilateral_sxy: float = 20,
    bilateral_srgb: float = 3,
    bilateral_compat: float = 10,
    iterations: int = 5,
    eps: float = 1e-5,
) -> np.ndarray:
    """Refine ``prob`` (H x W foreground probability) with the RGB ``image`` (H x W x 3 uint8); bool H x W."""
    img = np.asarray(image)
    p = np.asarray(prob, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3 RGB, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if p.shape != img.shape[:2]:
        raise ValueError(f"prob shape {p.shape} does not match image size {img.shape[:2]}")
    if not np.all(np.isfinite(p)):
        raise ValueError("prob contains NaN or infinite values")
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
    dcrf = _densecrf_module()
    h, w = p.shape
    unary = unary_energy(p, eps).reshape(2, -1)
    crf = dcrf.DenseCRF2D(w, h, 2)  # (width, height, labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(img),
                             compat=bilateral_compat)
    q = np.asarray(crf.inference(int(iterations)), dtype=np.float32).reshape(2, h, w)
    return q[1] > q[0]


# ---------------------------------------------------------------------- process pool
def _worker_init() -> None:
    """Keep every worker single-threaded so N workers use N cores, not N x cores."""
    for var in _THREAD_ENV:
        os.environ[var] = "1"
    import sys

    torch = sys.modules.get("torch")  # only if the parent's __main__ pulled it in
    if torch is not None:
        torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


def _crf_task(args: tuple[np.ndarray, np.ndarray, dict[str, Any]]) -> np.ndarray:
    image, prob, params = args
    return dense_crf(image, prob, **params)


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class CRFPool:
    """Refine many (image, prob) pairs in parallel worker processes, results in input order.

    ``workers=None`` uses the CPUs this process may run on (``os.sched_getaffinity``, else
    ``os.cpu_count()``); ``workers`` 0 or 1 runs serially in this process.  ``params`` override
    :data:`CRF_DEFAULTS`.  Use as a context manager (or call :meth:`close`); the worker processes start
    on the first :meth:`map` and are reused afterwards.
    """

    def __init__(self, workers: int | None = None, mp_context: str = "spawn", **params: Any) -> None:
        unknown = set(params) - set(CRF_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown DenseCRF parameters: {sorted(unknown)}")
        self.workers = _default_workers() if workers is None else int(workers)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.params = {**CRF_DEFAULTS, **params}
        self.mp_context = mp_context
        self._executor: Executor | None = None

    @property
    def parallel(self) -> bool:
        return self.workers > 1

    def _pool(self) -> Executor:
        if self._executor is None:
            import multiprocessing

            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context(self.mp_context),
                initializer=_worker_init,
            )
        return self._executor

    def map(self, images: Iterable[np.ndarray], probs: Iterable[np.ndarray]) -> list[np.ndarray]:
        """``[dense_crf(image, prob, **params) ...]`` in input order."""
        images, probs = list(images), list(probs)
        if len(images) != len(probs):
            raise ValueError(f"got {len(images)} images but {len(probs)} probability maps")
        if not self.parallel or len(images) < 2:
            return [dense_crf(i, p, **self.params) for i, p in zip(images, probs)]
        chunk = max(1, len(images) // (8 * self.workers))  # small chunks: balance over heavy tasks
        tasks = [(i, p, self.params) for i, p in zip(images, probs)]
        return list(self._pool().map(_crf_task, tasks, chunksize=chunk))

    def warmup(self) -> None:
        """Start the worker processes now (otherwise the first :meth:`map` pays for it)."""
        if self.parallel:
            img = np.zeros((8, 8, 3), np.uint8)
            prob = np.full((8, 8), 0.5)
            list(self._pool().map(_crf_task, [(img, prob, self.params)] * self.workers))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> "CRFPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
