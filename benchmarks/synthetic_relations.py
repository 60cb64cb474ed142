"""Test overall IoU of a checkpoint on the synthetic benchmark, with relation expressions split by what they need.

    python benchmarks/synthetic_relations.py runs/<run>/best.pt [--root OTHER_BENCHMARK] [--split test]

Relation expressions are labelled by :func:`cmpc.data.synthetic.relation_subkind`: ``relation:shortcut``
(left/right/above/below answered by the location phrase of that direction, "the leftmost circle", without the
landmark), ``relation:decoy`` (a twin lies further in that direction: the landmark is needed),
``relation:near``, ``relation:between``; the other kinds are kept. ``--directional`` merges shortcut and decoy
into ``relation:directional``. ``--root`` evaluates on another generated benchmark (e.g. one made with
``scripts/make_synthetic.py relation_gap='[0.2, 0.35]'``, landmarks further away). docs/synthetic.md reports the
figures.
"""

from __future__ import annotations

import json

from common import load_run, run_parser
from torch.utils.data import Dataset

from cmpc.cli import friendly_errors
from cmpc.data import build_dataset
from cmpc.data.base import Unreadable
from cmpc.data.synthetic import load_image_scenes, parse_expression, relation_subkind
from cmpc.engine.evaluate import evaluate


class RelationSubkinds(Dataset):
    """A synthetic image dataset whose relation samples carry ``kind = relation:<subkind>``."""

    def __init__(self, dataset, scenes: dict, directional: bool):
        self.dataset, self.scenes, self.directional = dataset, scenes, directional
        self.letterbox = dataset.letterbox

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict | Unreadable:
        sample = self.dataset[index]
        if isinstance(sample, Unreadable):  # collate drops it, evaluate counts it
            return sample
        meta = sample["meta"]
        if meta["kind"] == "relation":
            sub = relation_subkind(self.scenes[meta["image_id"]], parse_expression(meta["sentence"]))
            meta["kind"] = "relation:" + ("directional" if self.directional and sub in ("shortcut", "decoy") else sub)
        return sample


@friendly_errors
def main() -> None:
    ap = run_parser(__doc__)
    ap.add_argument("--root", default=None, help="another generated image benchmark (default: the run's)")
    ap.add_argument("--directional", action="store_true", help="merge shortcut and decoy relations")
    a = ap.parse_args()
    model, cfg, vocab, device = load_run(a)
    if a.root is not None:  # an existing benchmark: read it as it is, never regenerate it
        cfg.dataset.root, cfg.dataset.generate = a.root, None
    dataset = build_dataset(cfg.dataset, a.split or cfg.dataset.test_split, vocab)
    wrapped = RelationSubkinds(dataset, load_image_scenes(cfg.dataset.root), a.directional)
    results = evaluate(model, wrapped, device=device, batch_size=64, desc="relations")
    table = {kind: {"oIoU": round(100 * m["oIoU"], 2), "n": m["n"]} for kind, m in sorted(results["by_kind"].items())}
    table["all"] = {"oIoU": round(100 * results["metrics"]["oIoU"], 2), "n": results["metrics"]["n"]}
    print(json.dumps(table))


if __name__ == "__main__":
    main()
