"""Export the backbone of a ``train.py`` checkpoint as a small weights file with its provenance:
``python scripts/export_backbone.py CHECKPOINT [OUT]``.

The shipped ``cmpc/models/weights/small_synthetic.pt`` (``backbone.weights=synthetic``, the fixed pretrained
backbone of the main job, configs/backbone/small_frozen.yaml) is regenerated with::

    python scripts/train.py dataset=synthetic_entities model.relation_aware_reasoning=false trainer.steps=3000 \
        hydra.run.dir=runs/synthetic_backbone
    python scripts/export_backbone.py runs/synthetic_backbone/best.pt

OUT defaults to that shipped file. The file holds ``{"model": {name: tensor}, "meta": {...}}`` (read with
``torch.load(weights_only=True)``): the backbone tensors without their ``backbone.`` prefix, and the source's
command-line overrides (``.hydra/overrides.yaml`` beside the checkpoint), backbone and dataset configs, synthetic
generator version, step, test metrics (``metrics.json`` beside it) and code versions. ``tests/test_backbone.py``
checks the shipped file against today's configs, so stale weights fail the tests instead of training silently.
"""

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from cmpc.cli import friendly_errors
from cmpc.data.synthetic import GENERATOR_VERSION
from cmpc.engine.checkpoint import atomic_save, load_checkpoint, provenance
from cmpc.errors import ConfigError
from cmpc.models.backbone import SYNTHETIC_WEIGHTS, build_backbone

PREFIX = "backbone."


def export_backbone(checkpoint: Path, out: Path) -> dict:
    """Write the backbone of ``checkpoint`` (a train.py ``best.pt``/``last.pt``) to ``out``; returns its meta.

    Raises:
        ConfigError: not a train.py checkpoint, or its backbone tensors do not rebuild its configured backbone.
    """
    state = load_checkpoint(checkpoint)
    weights = {k[len(PREFIX):]: v for k, v in state["model"].items() if k.startswith(PREFIX)}
    config = state["config"]
    backbone_cfg = {k: v for k, v in config["backbone"].items() if k not in ("weights", "frozen", "frozen_bn")}
    expected = build_backbone(backbone_cfg).state_dict()
    if {k: tuple(v.shape) for k, v in weights.items()} != {k: tuple(v.shape) for k, v in expected.items()}:
        raise ConfigError(f"{checkpoint}: its backbone.* tensors do not rebuild backbone {backbone_cfg}; "
                          f"export a checkpoint written by scripts/train.py")
    run = Path(checkpoint).parent
    overrides = run / ".hydra" / "overrides.yaml"
    metrics = run / "metrics.json"
    meta = {
        "source": Path(checkpoint).name,
        "overrides": OmegaConf.to_container(OmegaConf.load(overrides)) if overrides.is_file() else None,
        "backbone": backbone_cfg,
        "dataset": {k: config["dataset"].get(k) for k in ("name", "input_size", "mean", "generate")},
        "generator_version": GENERATOR_VERSION if config["dataset"].get("generate") else None,
        "step": state.get("step"),
        "test": _test_metrics(metrics),
        "trained_with": state.get("meta"),
        "exported_with": provenance(),
    }
    atomic_save({"model": weights, "meta": meta}, out)
    return meta


def _test_metrics(path: Path) -> dict | None:
    """``{"metrics", "by_kind"}`` of the test split from a run's ``metrics.json``, if there is one."""
    test = json.loads(path.read_text()).get("test") if path.is_file() else None
    return {k: test.get(k) for k in ("metrics", "by_kind")} if test else None


@friendly_errors
def main(argv: list[str]) -> None:
    if len(argv) not in (1, 2) or argv[0].startswith("-"):
        raise ConfigError("usage: python scripts/export_backbone.py CHECKPOINT [OUT] (default OUT: "
                          f"{SYNTHETIC_WEIGHTS})")
    out = Path(argv[1]) if len(argv) == 2 else SYNTHETIC_WEIGHTS
    meta = export_backbone(Path(argv[0]), out)
    print(f"wrote {out} ({meta['backbone']['name']} {meta['backbone'].get('widths')}, step {meta['step']})")


if __name__ == "__main__":
    main(sys.argv[1:])
