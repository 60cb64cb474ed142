"""The networks are built from explicit keywords (no Hydra, no OmegaConf); ``build_model`` maps the model config's
keys 1:1 onto those keywords, checked against the constructor's signature."""

import inspect
import os
import subprocess
import sys

import pytest
import torch
from conftest import CONFIG_DIR, ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cmpc.errors import ConfigError
from cmpc.models import build_model, model_keywords
from cmpc.models.backbone import SmallResNet
from cmpc.models.cmpc import CMPCImage
from cmpc.models.video import CMPCVideo

TINY = dict(visual_dim=24, word_dim=24, embed_dim=12, dim=24, out_dim=16, word_classifier_dim=8, convlstm_hidden=16,
            tgfe_rounds=2)
BACKBONE = dict(widths=(8, 8, 16, 16), blocks=(1, 1, 1, 1))
WORDS = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])


def test_cmpc_image_from_keywords_alone_runs_a_forward():
    code = (
        "import sys, torch\n"
        "from cmpc.models.backbone import SmallResNet\n"
        "from cmpc.models.cmpc import CMPCImage\n"
        f"model = CMPCImage(SmallResNet(**{BACKBONE!r}), 30, **{TINY!r}).eval()\n"
        "out = model(torch.randn(2, 3, 32, 32), torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]]))\n"
        "assert out['logits'].shape == (2, 1, 4, 4) and len(out['aux_logits']) == 3, out['logits'].shape\n"
        "assert out['word_probs'].shape == (2, 4, 4)\n"
        "loaded = sorted(k for k in sys.modules if k.split('.')[0] in ('omegaconf', 'hydra'))\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)


@pytest.mark.parametrize("name", ["cmpc_i", "cmpc_v"])
def test_keywords_and_config_build_the_same_network(name):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}"])
    cfg.model.merge_with(TINY)
    torch.manual_seed(0)
    from_config = build_model(cfg.model, OmegaConf.create({"name": "small", **BACKBONE}), 30).eval()
    options = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k not in ("name", "glove")}
    cls = CMPCVideo if name == "cmpc_v" else CMPCImage
    torch.manual_seed(0)
    from_keywords = cls(SmallResNet(**BACKBONE), 30, **options).eval()
    a, b = from_config.state_dict(), from_keywords.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(from_config(images, WORDS)["logits"], from_keywords(images, WORDS)["logits"])


@pytest.mark.parametrize("name, cls", [("cmpc_i", CMPCImage), ("cmpc_v", CMPCVideo)])
def test_constructor_defaults_are_the_paper_configs(name, cls):
    files = ["cmpc_i"] + ([name] if name != "cmpc_i" else [])  # cmpc_v.yaml lists only what it changes
    cfg = {}
    for f in files:
        cfg.update(OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / f"{f}.yaml")))
    cfg.pop("defaults", None)
    defaults = {}
    for klass in reversed(cls.__mro__[: cls.__mro__.index(torch.nn.Module)]):
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY:
                defaults[p.name] = list(p.default) if isinstance(p.default, tuple) else p.default
    assert sorted(defaults) == sorted(model_keywords(cls))
    assert {k: v for k, v in cfg.items() if k not in ("name", "glove")} == defaults


def test_unknown_or_foreign_model_keys_are_config_errors():
    backbone = {"name": "small", **BACKBONE}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['fusion_head'\] for model 'cmpc_i': allowed keys"):
        build_model({"name": "cmpc_i", "fusion_head": 4}, backbone, 30)
    with pytest.raises(ConfigError, match=r"\['aar_values'\] for model 'baseline'"):  # a CMPC-V key
        build_model({"name": "baseline", "aar_values": "vertices"}, backbone, 30)
    with pytest.raises(ConfigError, match="unknown model 'cmpc'"):
        build_model({"name": "cmpc"}, backbone, 30)
    assert "aar_values" in model_keywords(CMPCVideo) and "tgfe_rounds" in model_keywords(CMPCVideo)
