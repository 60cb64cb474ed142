"""Train a CMPC model: ``python scripts/train.py [dataset=NAME] [model=NAME] [experiment=NAME] [key=value ...]``.

With no arguments: CMPC-I on the built-in synthetic benchmark (generated on first use), then the
metrics table on its test split. Run directory: resolved config, TensorBoard logs, last.pt/best.pt,
train_log.jsonl, metrics.json, environment.jsonl (README: "Run directories and resume") and error.txt with the
reason when it fails. Multi-GPU: ``torchrun --nproc_per_node=N scripts/train.py ...``.
"""

import hydra
from hydra.core.hydra_config import HydraConfig

from cmpc.cli import failure_note, friendly_errors, quiet_third_party_logs
from cmpc.engine.rundir import register_resolver
from cmpc.engine.trainer import train

register_resolver()  # ${cmpc_run_dir:...} in hydra.run.dir


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
@friendly_errors
def main(cfg) -> None:
    quiet_third_party_logs()
    run_dir = HydraConfig.get().runtime.output_dir
    with failure_note(run_dir):  # error.txt: a sweep report (scripts/report.py) shows the row as failed
        train(cfg, run_dir)


if __name__ == "__main__":
    main()
