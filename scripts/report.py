"""The paper's table from an ablation sweep: ``python scripts/report.py SWEEP_DIR``.

Reads the sweep that ``scripts/ablate.py`` wrote (``ablate.json`` and one job directory per row), prints a markdown
table laid out as the paper's (switches with check marks, our Prec@X / oIoU (mAP, mIoU for video) beside the
paper's numbers and the difference; rows whose job is missing, failed or unfinished say so) and writes it to
``SWEEP_DIR/report.md``. Synthetic benchmarks add the per-kind view.
"""

import sys
from pathlib import Path

from cmpc.ablation import report
from cmpc.cli import friendly_errors
from cmpc.errors import ConfigError


@friendly_errors
def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0].startswith("-"):
        raise ConfigError("usage: python scripts/report.py SWEEP_DIR (a directory written by scripts/ablate.py)")
    print(report(Path(argv[0])), end="")


if __name__ == "__main__":
    main(sys.argv[1:])
