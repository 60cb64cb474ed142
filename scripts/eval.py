"""Evaluate a checkpoint with the CMPC protocol:
``python scripts/eval.py [checkpoint=PATH] [dataset=NAME] [split=NAME] [crf=true]``.

Prints Prec@X, overall and mean IoU (and per expression kind when the dataset records kinds), with and
without DenseCRF, and writes ``metrics.json`` in the run directory.
"""

import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from cmpc.cli import friendly_errors, quiet_third_party_logs
from cmpc.data import build_dataset
from cmpc.engine.builders import load_trained, newest_checkpoint
from cmpc.engine.config_check import check_dataset_root, check_eval_config
from cmpc.engine.distributed import resolve_device
from cmpc.engine.evaluate import evaluate
from cmpc.engine.rundir import register_resolver
from cmpc.engine.video import evaluate_videos, write_video_submission
from cmpc.metrics import format_table

log = logging.getLogger("eval")


def dataset_config(cfg, trained_cfg):
    """The checkpoint's dataset, unless the command line picked another one; ``dataset.key=`` overrides apply."""
    overrides = HydraConfig.get().overrides.task
    if any(o.split("=", 1)[0].lstrip("+~") == "dataset" for o in overrides):
        return cfg.dataset
    chosen = trained_cfg.dataset
    for o in overrides:
        key, _, _ = o.partition("=")
        if key.startswith("dataset."):
            OmegaConf.update(chosen, key[len("dataset."):], OmegaConf.select(cfg, key), force_add=True)
    return chosen


register_resolver()  # ${cmpc_run_dir:...} in hydra.run.dir


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
@friendly_errors
def main(cfg) -> None:
    quiet_third_party_logs()
    check_eval_config(cfg)
    path = Path(cfg.checkpoint) if cfg.checkpoint else newest_checkpoint(cfg.paths.runs)
    if not cfg.checkpoint:
        print(f"evaluating the newest checkpoint: {path}")
    device = resolve_device(cfg.device)
    model, trained_cfg, vocab = load_trained(path, device)
    ds_cfg = dataset_config(cfg, trained_cfg)
    check_dataset_root(ds_cfg)
    split = cfg.split or ds_cfg.eval_split
    dataset = build_dataset(ds_cfg, split, vocab)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    title = f"{ds_cfg.name} {split} ({trained_cfg.model.name}, {path})"
    result = {}
    if len(dataset):  # annotated samples (centre frames for video datasets)
        result = evaluate(model, dataset, device=device, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                          amp=cfg.amp, crf=cfg.crf, crf_workers=cfg.crf_workers,
                          video=getattr(dataset, "is_video", False))
        print(format_table(result["metrics"], title=title))
        if result["by_kind"]:
            print(format_table(result["by_kind"], title="by expression kind"))
        if cfg.crf:
            print(format_table(result["crf"], title=f"{title} + DenseCRF"))
        if result["unreadable"]:
            print(f"skipped {result['unreadable']} unreadable sample(s), left out of the metrics (reasons above)")
    if cfg.whole_videos and hasattr(dataset, "iter_expressions"):  # every frame of every expression: J&F
        videos = evaluate_videos(model, dataset, device, split=split, batch_size=cfg.batch_size, amp=cfg.amp)
        result["videos"] = videos
        if videos["expressions"]:
            print(format_table(videos["jf"], title=f"{title}: J&F over whole videos"))
            if videos["jf_by_kind"]:
                print(format_table(videos["jf_by_kind"], title="J&F by expression kind"))
        if videos["unreadable"]:
            print(f"skipped {videos['unreadable']} expression(s) with unreadable frames or masks (reasons above)")
        if videos["without_gt"]:
            zip_path = out_dir / "submission.zip"
            count = write_video_submission(model, dataset, device, zip_path, split=split, batch_size=cfg.batch_size)
            print(f"{videos['without_gt']} expressions have no public masks: wrote {count} PNGs to {zip_path} "
                  f"for the evaluation server")
    out = out_dir / "metrics.json"
    out.write_text(json.dumps({"checkpoint": str(path), "dataset": ds_cfg.name, "split": split, **result}, indent=2,
                              default=str))
    print(f"metrics written to {out}")


if __name__ == "__main__":
    main()
