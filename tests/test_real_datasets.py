"""Each real dataset config trains and evaluates a few steps on a fixture written in its real on-disk format."""

import pytest
from fixtures_data import make_refer_fixture, make_referit_fixture
from omegaconf import OmegaConf
from test_training import TINY_MODEL, compose_cfg

from cmpc.data import build_dataset
from cmpc.engine.builders import load_trained
from cmpc.engine.evaluate import evaluate
from cmpc.engine.trainer import train

SMALL_RUN = [
    "backbone=small", "backbone.weights=random", "model.glove=false", "trainer=synthetic", "device=cpu",
    "trainer.steps=2", "trainer.batch_size=2",
    "trainer.num_workers=0", "trainer.eval_every=0", "trainer.eval_batch_size=4", *TINY_MODEL,
]


@pytest.mark.parametrize("name", ["unc", "unc+", "gref", "gref_umd", "referit"])
def test_dataset_config_trains_and_evaluates_on_its_fixture(tmp_path, name):
    if name == "referit":
        fixture = make_referit_fixture(tmp_path / "data")
    else:
        fixture = make_refer_fixture(tmp_path / "data", name)
    cfg = compose_cfg([f"dataset={name}", *SMALL_RUN])
    assert cfg.trainer.steps == 2 and cfg.dataset.name == name
    cfg.dataset = OmegaConf.merge(cfg.dataset, fixture)
    result = train(cfg, tmp_path / "run")
    assert len(result["history"]) == 2
    assert result["val"]["metrics"]["n"] == len(build_dataset(cfg.dataset, cfg.dataset.eval_split))

    model, trained_cfg, vocab = load_trained(tmp_path / "run" / "best.pt")
    assert trained_cfg.dataset.name == name
    dataset = build_dataset(trained_cfg.dataset, trained_cfg.dataset.eval_split, vocab)
    again = evaluate(model, dataset, device="cpu", progress=False)
    assert again["metrics"] == result["val"]["metrics"]
