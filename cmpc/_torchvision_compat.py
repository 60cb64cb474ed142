"""Import torchvision even when its C++ extension (``torchvision/_C.so``) cannot load.

Why: the only torchvision release that accepts a CPU build of recent torch may be a CUDA build. Its
``_C.so`` then fails to load, the ``torchvision::nms``/``qnms`` operator schemas are never defined,
and ``import torchvision`` dies in ``torchvision/_meta_registrations.py`` with
``RuntimeError: operator torchvision::nms does not exist``.

What: :func:`import_torchvision` first tries to load ``_C.so`` itself (as torchvision would). Only
if that fails does it define the two schemas torchvision's import needs (no kernels), then it
imports torchvision. The pure-Python parts then work (ResNet with dilation,
``IntermediateLayerGetter``, transforms v2); the C++ ops (nms, roi_align, deform_conv, ...) and
``torchvision.io`` still do not, so cmpc reads images with PIL/OpenCV.

When the real extension loads (a matching torch/torchvision pair, e.g. on a GPU machine) nothing is
defined and this is a plain ``import torchvision``. Calling it more than once is safe.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader, FileFinder
from types import ModuleType

import torch

__all__ = ["import_torchvision", "ensure_torchvision_ops"]

# Schemas that ``import torchvision`` registers fake kernels for unconditionally.
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
# Holds the Library object: if it were garbage collected its definitions would be removed.
_LIB: torch.library.Library | None = None


def _extension_loads() -> bool:
    """Try to load ``torchvision/_C.so`` without importing torchvision; True if it loaded."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: let the import raise its own ModuleNotFoundError
    for folder in spec.submodule_search_locations:
        ext = FileFinder(folder, (ExtensionFileLoader, EXTENSION_SUFFIXES)).find_spec("_C")
        if ext is None or ext.origin is None:
            continue
        try:
            torch.ops.load_library(ext.origin)
            return True
        except (OSError, ImportError, RuntimeError):
            return False
    return False


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def ensure_torchvision_ops() -> bool:
    """Define the schemas torchvision's import needs if its extension cannot load.

    Returns True when this call (or an earlier one) installed the stand-in schemas, False when the
    real extension provides them.
    """
    global _LIB
    if _LIB is not None:
        return True
    if "torchvision" in sys.modules or _extension_loads():
        return False
    missing = [s for s in _SCHEMAS if not _has_op(s.split("(", 1)[0])]
    if missing:
        lib = torch.library.Library("torchvision", "DEF")
        for schema in missing:
            lib.define(schema)
        _LIB = lib
    return _LIB is not None


def import_torchvision() -> ModuleType:
    """Return the ``torchvision`` module, installing the stand-in schemas first if needed."""
    ensure_torchvision_ops()
    import torchvision

    return torchvision
