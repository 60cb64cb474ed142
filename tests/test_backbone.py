"""Tests of cmpc.models.backbone: level shapes, freezing, checkpoint loading and the factory."""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, heap_checks
from omegaconf import OmegaConf

from cmpc.errors import ConfigError
from cmpc.models.backbone import (
    I3D,
    DeepLabResNet,
    SmallResNet,
    SubsampledPointwiseConv,
    build_backbone,
    caffe_to_torchvision_key,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "backbone"


def _randomised(state: dict) -> dict:
    """Every floating tensor replaced by fresh random values (positive for variances)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, v in state.items():
        if v.is_floating_point():
            if k.endswith("running_var"):
                v = torch.rand(v.shape, generator=g) + 0.5
            else:
                v = torch.randn(v.shape, generator=g)
        out[k] = v.clone()
    return out


def _bn_stats(module):
    return [t.clone() for n, t in module.state_dict().items() if "running_" in n]


def _assert_loaded(model, reference: dict):
    state = model.state_dict()
    for k, v in reference.items():
        if k.startswith("fc.") or k.startswith("logits."):
            continue
        assert torch.equal(state[k], v), k


# ---------------------------------------------------------------------------------------- DeepLab


def test_deeplab_resnet50_levels_and_random_init_log(caplog):
    with caplog.at_level(logging.WARNING, logger="cmpc.models.backbone"):
        net = DeepLabResNet(depth=50, weights=None)
    assert [r.getMessage() for r in caplog.records if "randomly initialised" in r.getMessage()] != []
    assert len(caplog.records) == 1
    assert net.out_channels == (512, 1024, 2048) and net.stride == 8 and net.spatial_strides == (8, 8, 8)
    assert not net.temporal and net.input_norm == "imagenet" and not net.caffe_layout
    with torch.no_grad():
        feats = net(torch.randn(2, 3, 64, 80))
    assert [tuple(f.shape) for f in feats] == [(2, 512, 8, 10), (2, 1024, 8, 10), (2, 2048, 8, 10)]


def test_deeplab_resnet101_from_config_has_101_layers():
    net = build_backbone(OmegaConf.load(CONFIGS / "deeplab_resnet101.yaml"))
    assert isinstance(net, DeepLabResNet) and net.depth == 101
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    assert net.layer4[1].conv2.dilation == (4, 4) and net.layer3[1].conv2.dilation == (2, 2)
    assert not any(p.requires_grad for p in net.parameters())


def test_frozen_backbone_keeps_bn_statistics_in_train_mode():
    net = DeepLabResNet(depth=50, frozen=True, frozen_bn=True).train()
    assert not any(p.requires_grad for p in net.parameters())
    assert not any(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = _bn_stats(net)
    net(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(net)))


def test_unfrozen_bn_updates_statistics():
    net = DeepLabResNet(depth=50, frozen=True, frozen_bn=False).train()
    before = _bn_stats(net)
    net(torch.randn(2, 3, 64, 64))
    assert not all(torch.equal(a, b) for a, b in zip(before, _bn_stats(net)))


def test_torchvision_state_dict_loads_exactly(tmp_path):
    from cmpc._torchvision_compat import import_torchvision

    reference = _randomised(import_torchvision().models.resnet50(weights=None).state_dict())  # includes fc.*
    path = tmp_path / "resnet50-random.pth"
    torch.save(reference, path)
    net = DeepLabResNet(depth=50, weights=str(path))
    _assert_loaded(net, reference)
    assert net.input_norm == "imagenet" and not net.caffe_layout


# Inverse of the key map, written independently of cmpc.models.backbone.
def _caffe_name(tv_key: str, tf_style: bool) -> str:
    *module, param = tv_key.split(".")
    bn_params = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
    if module == ["conv1"]:
        layer, is_bn = "conv1", False
    elif module == ["bn1"]:
        layer, is_bn = "bn_conv1", True
    else:
        stage = int(module[0][len("layer") :]) + 1
        block = int(module[1])
        name = "a" if block == 0 else (f"b{block}" if stage in (3, 4) else chr(ord("a") + block))
        if module[2] == "downsample":
            branch, is_bn = "1", module[3] == "1"
        else:
            branch, is_bn = "2" + "abc"[int(module[2][-1]) - 1], module[2].startswith("bn")
        layer = f"{'bn' if is_bn else 'res'}{stage}{name}_branch{branch}"
    if not tf_style:
        return f"{layer}.{param}"
    return f"{layer}/{bn_params[param] if is_bn else 'weights'}"


@pytest.mark.parametrize("tf_style", [False, True])
def test_deeplab_caffe_named_state_dict_loads(tmp_path, tf_style):
    reference = _randomised(DeepLabResNet(depth=50).state_dict())
    renamed = {}
    for k, v in reference.items():
        if k.endswith("num_batches_tracked"):
            continue
        if tf_style and v.dim() == 4:
            v = v.permute(2, 3, 1, 0).contiguous()  # TensorFlow HWIO kernels
        renamed[_caffe_name(k, tf_style)] = v
    renamed["fc1_voc12_c0.weight"] = torch.randn(21, 2048, 3, 3)  # DeepLab ASPP head: ignored
    path = tmp_path / "deeplab_init.pth"
    torch.save({"state_dict": renamed}, path)
    net = DeepLabResNet(depth=50, weights=str(path))
    _assert_loaded(net, {k: v for k, v in reference.items() if not k.endswith("num_batches_tracked")})
    assert net.input_norm == "caffe" and net.caffe_layout
    assert net.layer2[0].conv1.stride == (2, 2) and net.layer2[0].conv2.stride == (1, 1)
    assert net.layer3[0].conv2.dilation == (2, 2) and net.layer4[0].conv2.dilation == (4, 4)
    with torch.no_grad():
        assert [f.shape[-2:] for f in net(torch.randn(1, 3, 64, 64))] == [(8, 8)] * 3


@pytest.mark.parametrize(
    "key, expected",
    [
        ("res4b22_branch2c.weight", "layer3.22.conv3.weight"),
        ("res4b22_branch2c/weights", "layer3.22.conv3.weight"),
        ("bn3b3_branch2b/beta", "layer2.3.bn2.bias"),
        ("bn2a_branch1.running_mean", "layer1.0.downsample.1.running_mean"),
        ("res2a_branch1/weights", "layer1.0.downsample.0.weight"),
        ("scale5c_branch2a.weight", "layer4.2.bn1.weight"),
        ("bn5b_branch2b/moving_variance", "layer4.1.bn2.running_var"),
        ("bn4f_branch2a/mean", "layer3.5.bn1.running_mean"),
        ("bn_conv1/offset", "bn1.bias"),
        ("conv1.weight", "conv1.weight"),
        ("Scale.layer1.0.downsample.0.weight", "layer1.0.downsample.0.weight"),
        ("module.Scale.bn1.running_var", "bn1.running_var"),
        ("module.res3a_branch2a.weight", "layer2.0.conv1.weight"),
        ("Scale.layer5.conv2d_list.0.weight", None),
        ("fc.weight", None),
        ("res4a1_branch2a.weight", None),
    ],
)
def test_caffe_key_map(key, expected):
    assert caffe_to_torchvision_key(key) == expected


def test_checkpoint_with_wrong_keys_names_the_file(tmp_path):
    path = tmp_path / "not_a_resnet.pth"
    torch.save(SmallResNet().state_dict(), path)
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        DeepLabResNet(depth=50, weights=str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        DeepLabResNet(depth=50, weights=str(tmp_path / "missing.pth"))


def test_partial_checkpoint_loads_with_warning(tmp_path, caplog):
    reference = _randomised(DeepLabResNet(depth=50).state_dict())
    del reference["layer4.2.bn3.running_var"]
    path = tmp_path / "partial.pth"
    torch.save(reference, path)
    with caplog.at_level(logging.WARNING, logger="cmpc.models.backbone"):
        net = DeepLabResNet(depth=50, weights=str(path))
    assert any("layer4.2.bn3.running_var" in r.getMessage() for r in caplog.records)
    _assert_loaded(net, reference)


def test_imagenet_weights_without_network_raise_config_error(monkeypatch):
    from torchvision.models._api import WeightsEnum

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(ConfigError, match=r"download https://.*resnet50.*backbone\.weights"):
        DeepLabResNet(depth=50, weights="imagenet")


# ---------------------------------------------------------------------------------------- Small


def test_small_resnet_shapes_and_gradients():
    net = SmallResNet(widths=(8, 16, 24, 32), blocks=(1, 2, 1, 2)).train()
    assert net.out_channels == (16, 24, 32) and net.spatial_strides == (8, 8, 8)
    feats = net(torch.randn(2, 3, 64, 48))
    assert [tuple(f.shape) for f in feats] == [(2, 16, 8, 6), (2, 24, 8, 6), (2, 32, 8, 6)]
    sum(f.square().mean() for f in feats).backward()
    for name, p in net.named_parameters():
        assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name


STRIDED_POINTWISE_PROBE = """
import torch
from cmpc.models.backbone import SmallResNet
torch.manual_seed(0)
net = SmallResNet(widths=(4, 8, 8, 8)).train()
reference = SmallResNet(widths=(4, 8, 8, 8)).train().double()
reference.load_state_dict(net.state_dict())
net = net.to(memory_format=torch.channels_last)
worst = 0.0
for step in range(20):
    images = torch.randn(3, 3, 64, 64)  # 3 images: an odd count, as in grouped batches
    for model, x in ((net, images.contiguous(memory_format=torch.channels_last)), (reference, images.double())):
        model.zero_grad()
        sum(f.square().mean() for f in model(x)).backward()
    for (name, p), q in zip(net.named_parameters(), reference.parameters()):
        worst = max(worst, ((p.grad - q.grad).abs().max() / q.grad.abs().max()).item())
print(worst)
"""


def test_the_strided_pointwise_convolution_keeps_the_heap_and_its_gradients_in_channels_last():
    """The small backbone's downsampling (a stride-2 1x1 convolution from 4 channels) in channels-last layout, a
    batch of 3 images, 2 threads, under glibc's heap checks: oneDNN's own kernel for it writes past its workspace
    (abort, or wrong weight gradients; oneDNN #6035), so the backbone computes it as subsample + 1x1 convolution.
    Every weight gradient must equal the float64 channels-first one. In a child process: a corrupted heap would
    take pytest down with it."""
    done = subprocess.run([sys.executable, "-c", STRIDED_POINTWISE_PROBE], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2", **heap_checks()}, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert float(done.stdout.split()[-1]) < 1e-4


@pytest.mark.parametrize("size", [(32, 32), (33, 31), (1, 2)])
def test_subsampled_pointwise_convolution_equals_the_strided_one(size):
    conv = torch.nn.Conv2d(6, 5, 1, 2).double()
    fast = SubsampledPointwiseConv(6, 5, 1, 2).double()
    fast.load_state_dict(conv.state_dict())  # the same keys: checkpoints load either way
    x = torch.randn(2, 6, *size, dtype=torch.double)
    assert torch.allclose(fast(x), conv(x), atol=1e-12)


def test_small_resnet_frozen():
    net = SmallResNet(widths=(8, 8, 8, 8), frozen=True, frozen_bn=True).train()
    assert not any(p.requires_grad for p in net.parameters())
    before = _bn_stats(net)
    net(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(net)))


def test_small_resnet_missing_weights_say_how_to_make_them(tmp_path):
    with pytest.raises(ConfigError, match="scripts/export_backbone.py"):
        SmallResNet(weights=str(tmp_path / "missing.pt"), frozen=True)


def test_the_shipped_synthetic_backbone_fits_todays_configs_and_says_how_it_was_made():
    """backbone.weights=synthetic: every tensor of the default small backbone, finite, pretrained (not the random
    init), and made from today's pretraining set (dataset=synthetic_entities, same generator version): a change of
    either makes the shipped file stale, and this test says to regenerate it."""
    from hydra import compose, initialize_config_dir

    from cmpc.data.synthetic import GENERATOR_VERSION
    from cmpc.models.backbone import SYNTHETIC_WEIGHTS

    with initialize_config_dir(config_dir=str(CONFIGS.parent), version_base="1.3"):
        main_job = compose("train")
        pretraining = compose("train", overrides=["dataset=synthetic_entities"])
    assert main_job.backbone.weights == "synthetic" and main_job.backbone.frozen and main_job.backbone.frozen_bn
    shipped = torch.load(SYNTHETIC_WEIGHTS, weights_only=True)
    meta, weights = shipped["meta"], shipped["model"]
    widths = tuple(main_job.backbone.widths)
    random_init = SmallResNet(widths=widths).state_dict()
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in random_init.items()}
    assert all(torch.isfinite(v.float()).all() for v in weights.values())
    assert all((v > 0).all() for k, v in weights.items() if k.endswith("running_var"))
    assert not torch.equal(weights["stem.1.running_mean"], random_init["stem.1.running_mean"])  # trained BN stats
    stale = "stale: regenerate it with the two commands in scripts/export_backbone.py"
    assert "dataset=synthetic_entities" in meta["overrides"], stale
    assert meta["backbone"]["widths"] == list(widths) and meta["backbone"]["name"] == "small", stale
    assert meta["generator_version"] == GENERATOR_VERSION, stale
    assert meta["dataset"]["generate"] == OmegaConf.to_container(pretraining.dataset.generate), stale
    assert meta["dataset"]["input_size"] == main_job.dataset.input_size, stale
    assert meta["test"]["by_kind"]["entity"]["oIoU"] > 0.6  # what the pretraining reached on its own test split
    loaded = SmallResNet(widths=widths, weights="synthetic", frozen=True, frozen_bn=True).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())
    with pytest.raises(ConfigError, match="match only"):  # the shipped file is for exactly these widths
        SmallResNet(widths=(8, 16, 16, 16), weights="synthetic")


def test_the_pretraining_set_keeps_the_recipe_the_shipped_backbone_was_made_with():
    """dataset=synthetic_entities trains as the shipped file was trained (its meta: commit 88354fc, the main job's
    recipe of then with trainer.steps=3000): a change of the main job's recipe (trainer=synthetic) must not leak into
    the documented regenerate command."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS.parent), version_base="1.3"):
        trainer = OmegaConf.to_container(compose("train", overrides=["dataset=synthetic_entities"]).trainer,
                                         resolve=True)
    made_with = {"optimizer": "adam", "fused_optimizer": False, "lr": 2e-3, "end_lr": 1e-5, "schedule": "poly",
                 "poly_power": 0.9, "steps": 3000, "decay_steps": 3000, "batch_size": 16, "group_by_image": False,
                 "weight_decay": 5e-4, "bias_lr_mult": 2.0, "grad_clip": None, "amp": "off", "channels_last": False,
                 "loss": {"final_weight": 0.7, "aux_weight": 0.1, "reduction": "sum"}}
    assert {key: trainer[key] for key in made_with} == made_with


def test_export_backbone_writes_the_backbone_of_a_training_run(tmp_path):
    """scripts/export_backbone.py on a tiny train.py run: the file loads as backbone.weights and holds exactly the
    run's backbone tensors and its overrides; a checkpoint that is not a train.py run is one error line."""
    import os
    import subprocess
    import sys

    root = CONFIGS.parents[1]
    tiny = ["dataset=synthetic_entities", f"paths.data={tmp_path / 'data'}", "device=cpu",
            "dataset.generate.splits={train: 4, val: 2, test: 2}", "trainer.steps=2", "trainer.batch_size=2",
            "trainer.num_workers=0", "trainer.eval_every=0", "model.visual_dim=8", "model.word_dim=8",
            "model.dim=8", "model.out_dim=8", "model.word_classifier_dim=4", "model.convlstm_hidden=8",
            "backbone.widths=[8,8,16,16]", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "scripts/train.py", *tiny], cwd=root, capture_output=True, text=True,
                         env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    out = tmp_path / "small.pt"
    export = subprocess.run([sys.executable, "scripts/export_backbone.py", str(tmp_path / "run" / "best.pt"), str(out)],
                            cwd=root, capture_output=True, text=True, env=env)
    assert export.returncode == 0, export.stderr[-2000:]
    trained = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    exported = torch.load(out, weights_only=True)
    assert exported["meta"]["overrides"] == tiny[:-1] and exported["meta"]["step"] == 2
    backbone = {k[len("backbone."):]: v for k, v in trained.items() if k.startswith("backbone.")}
    assert exported["model"].keys() == backbone.keys()
    net = SmallResNet(widths=(8, 8, 16, 16), weights=str(out)).state_dict()
    assert all(torch.equal(net[k], v) for k, v in backbone.items())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    bad = subprocess.run([sys.executable, "scripts/export_backbone.py", str(tmp_path / "junk.pt"), str(out)],
                         cwd=root, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------------------- I3D


def test_i3d_levels_are_5d_with_temporal_size():
    net = I3D()
    assert net.temporal and net.out_channels == (480, 832, 1024) and net.spatial_strides == (8, 16, 32)
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 8, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 480, 4, 8, 8), (1, 832, 2, 4, 4), (1, 1024, 1, 2, 2)]
    net.train()
    assert not any(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d))


def test_i3d_loads_piergiaj_state_dict(tmp_path):
    net = I3D(frozen=False)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    # Names and shapes of piergiaj/pytorch-i3d's InceptionI3d.
    assert shapes["Conv3d_1a_7x7.conv3d.weight"] == (64, 3, 7, 7, 7)
    assert shapes["Conv3d_2c_3x3.bn.running_mean"] == (192,)
    assert shapes["Mixed_3b.b0.conv3d.weight"] == (64, 192, 1, 1, 1)
    assert shapes["Mixed_3b.b1a.bn.running_mean"] == (96,)
    assert shapes["Mixed_4f.b1b.conv3d.weight"] == (320, 160, 3, 3, 3)
    assert shapes["Mixed_5c.b3b.bn.weight"] == (128,)
    assert net.Conv3d_1a_7x7.bn.eps == 1e-3
    reference = _randomised(net.state_dict())
    reference["logits.conv3d.weight"] = torch.randn(400, 1024, 1, 1, 1)  # Kinetics classifier: ignored
    reference["logits.conv3d.bias"] = torch.randn(400)
    path = tmp_path / "rgb_imagenet.pt"
    torch.save(reference, path)
    loaded = I3D(weights=str(path))
    _assert_loaded(loaded, reference)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_i3d_rejects_resnet_checkpoint(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(SmallResNet(widths=(8, 8, 8, 8)).state_dict(), path)
    with pytest.raises(ConfigError, match="resnet.pth"):
        I3D(weights=str(path))


# ---------------------------------------------------------------------------------------- factory


def test_build_backbone_from_configs():
    cfg = OmegaConf.load(CONFIGS / "small.yaml")
    small = build_backbone(cfg)
    assert isinstance(small, SmallResNet) and small.out_channels == tuple(cfg.widths[1:])
    assert small.stride == cfg.output_stride
    fine = build_backbone({"name": "small", "widths": [4, 8, 8, 8], "output_stride": 4})
    assert [f.shape[-1] for f in fine(torch.randn(1, 3, 32, 32))] == [8, 8, 8]
    assert all(p.requires_grad for p in small.parameters())
    assert isinstance(build_backbone(OmegaConf.load(CONFIGS / "i3d.yaml")), I3D)
    r50 = build_backbone(OmegaConf.load(CONFIGS / "resnet50.yaml"))
    assert isinstance(r50, DeepLabResNet) and r50.depth == 50
    assert isinstance(build_backbone({"name": "small", "widths": [4, 8, 8, 8]}), SmallResNet)


def test_build_backbone_errors():
    with pytest.raises(ConfigError, match="small, deeplab_resnet101, resnet50, i3d"):
        build_backbone({"name": "vgg16"})
    with pytest.raises(ConfigError, match="depth"):
        build_backbone({"name": "resnet50", "depth": 101})
