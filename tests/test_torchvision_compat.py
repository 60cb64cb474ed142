"""Tests of cmpc._torchvision_compat: torchvision's pure-Python models import without its C++ ops."""

import subprocess
import sys
import textwrap

import cmpc._torchvision_compat as compat

FRESH_INTERPRETER = textwrap.dedent(
    """
    import torch
    import cmpc._torchvision_compat as c

    # When the real extension loads, the shim must define nothing.
    real_loader = c._extension_loads
    c._extension_loads = lambda: True
    assert c.ensure_torchvision_ops() is False and c._LIB is None
    c._extension_loads = real_loader

    tv = c.import_torchvision()
    lib = c._LIB
    assert c.import_torchvision() is tv and c._LIB is lib  # idempotent
    assert hasattr(torch.ops.torchvision, "nms")
    import torchvision  # a plain import now works too
    from torchvision.models._utils import IntermediateLayerGetter

    net = tv.models.resnet101(weights=None, replace_stride_with_dilation=[False, True, True]).eval()
    body = IntermediateLayerGetter(net, {"layer2": "c3", "layer4": "c5"})
    with torch.no_grad():
        feats = body(torch.randn(1, 3, 64, 64))
    assert tuple(feats["c3"].shape) == (1, 512, 8, 8), feats["c3"].shape
    assert tuple(feats["c5"].shape) == (1, 2048, 8, 8), feats["c5"].shape
    print("OK", lib is not None)
    """
)


def test_fresh_interpreter_imports_torchvision_and_builds_dilated_resnet101():
    result = subprocess.run([sys.executable, "-c", FRESH_INTERPRETER], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("OK")


def test_import_torchvision_twice_in_process():
    tv = compat.import_torchvision()
    lib = compat._LIB
    assert compat.import_torchvision() is tv
    assert compat._LIB is lib
    assert compat.ensure_torchvision_ops() == (lib is not None)
