"""Mixed precision chosen by what the device computes natively (``trainer.amp``, ``amp=`` in eval.py).

``amp`` asks for ``off`` (float32), ``bf16`` or ``fp16`` autocast. A requested dtype the device would only
emulate is replaced, with one warning per device and dtype, because emulation is slower than float32:

* CPU: bf16 is native with AVX-512-BF16 or AMX-BF16 instructions that oneDNN may use
  (``ONEDNN_MAX_CPU_ISA`` can forbid them); fp16 with AVX-512-FP16 or AMX-FP16. Otherwise float32.
  Measured on an AVX-512 CPU without BF16 instructions: a 3x3 convolution runs 3x slower in bf16 than in
  float32, and 9x slower with ``ONEDNN_MAX_CPU_ISA=AVX2`` (docs/performance.md).
* CUDA: fp16 is native on every GPU torch supports; bf16 needs compute capability >= 8.0 (Ampere); on older
  GPUs (V100, T4) a bf16 request runs fp16 (with the GradScaler that fp16 needs, see :func:`needs_grad_scaler`).

The LSTM of :class:`cmpc.models.language.WordEncoder` always runs in float32.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import torch

from cmpc.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_flag(name: str) -> bool:
    probe = getattr(torch.cpu, f"_is_{name}_supported", None)  # private helpers of torch.cpu (torch >= 2.3)
    return bool(probe()) if probe is not None else False


def native(device: torch.device, amp: str) -> bool:
    """Whether ``device`` computes ``amp`` (bf16 | fp16) in hardware rather than emulating it."""
    device = torch.device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):  # the question is about this GPU, not the current one
            return amp == "fp16" or torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        if amp == "bf16":
            hardware = _cpu_flag("avx512_bf16") or _cpu_flag("amx_tile")
            return hardware and torch.ops.mkldnn._is_mkldnn_bf16_supported()  # False under ONEDNN_MAX_CPU_ISA=AVX2
        capabilities = getattr(torch.cpu, "get_capabilities", dict)()  # torch >= 2.8
        hardware = _cpu_flag("amx_fp16") or bool(capabilities.get("avx512_fp16", False))
        return hardware and torch.ops.mkldnn._is_mkldnn_fp16_supported()
    return False


@functools.lru_cache(maxsize=None)
def _resolve(device: torch.device, amp: str) -> str:
    if amp == "off" or native(device, amp):
        return amp
    fallback = "fp16" if device.type == "cuda" else "off"
    log.warning("amp=%s would be emulated on %s (no native %s arithmetic): using %s instead; set amp=%s to "
                "choose this yourself", amp, _describe(device), amp,
                "fp16 autocast" if fallback == "fp16" else "float32", fallback)
    return fallback


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "this CPU" if device.type == "cpu" else str(device)


def resolve_amp(device: torch.device | str, amp: str) -> str:
    """The precision ``amp`` (off | bf16 | fp16) actually runs in on ``device`` (see the module docstring).

    Raises ConfigError for another value. Warns once per (device, amp) when the request is replaced."""
    if amp not in ("off", *DTYPES):
        raise ConfigError(f"amp must be off, bf16 or fp16, got {amp!r}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _resolve(device, amp)


def needs_grad_scaler(device: torch.device | str, amp: str) -> bool:
    """fp16 gradients need loss scaling (``torch.amp.GradScaler``); bf16 and float32 do not."""
    return resolve_amp(device, amp) == "fp16"


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` in the precision :func:`resolve_amp` chooses for ``amp`` on ``device``."""
    dtype = DTYPES.get(resolve_amp(device, amp))
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def denormals_flushed() -> bool:
    """Whether this thread's CPU flushes denormal floats to zero (a denormal times 1 gives 0)."""
    return (torch.tensor([1e-40], dtype=torch.float32) * 1.0).item() == 0.0


@contextlib.contextmanager
def flush_denormals():
    """Flush denormal floats to zero on the CPU (``torch.set_flush_denormal``, x86 FTZ/DAZ) inside the block, then
    restore the previous mode. Training on a CPU needs it: once the small CMPC-I of the main job has trained some
    1500 steps, denormal values in its backward pass made every step 2.4 times slower (10 -> 4.2 steps/s on 2
    AVX-512 cores; docs/performance.md). Values below 1.2e-38 become 0: no effect on what a float32 model learns."""
    before = denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
