"""Where Relation-Aware Reasoning sends the referent's positions on synthetic relation expressions.

    python benchmarks/rar_attention.py runs/<run>/best.pt [--subkind decoy] [--split test]

For each relation expression of the synthetic test split (``--subkind``: decoy, shortcut, near, between or all;
see :func:`cmpc.data.synthetic.relation_subkind`), with the target, its look-alike twins and its landmark(s)
known from ``scenes.json``, it reports per visual level how much of the graph's edge mass (eq. 9,
``A = B1 B2``; rows sum to 1) leaves the target's positions and lands on the landmark, relative to an edge that
picks positions uniformly (1.0 = no preference; ``ceiling``: every edge on the landmark), and the same from
the twins' positions; then how often the
predicted mask scores the target above every twin (mean logit over each object's cells; ``chance``: picking one of the
look-alikes at random), and which words the classifier routes (mean ``p_relation`` per word, eq. 1; with
``model.routing_words=relation_and_landmark`` also ``routing``, the mean weight that routes eq. 5 per word).
A checkpoint without RAR reports only the pick rate and the words. docs/synthetic.md reports the figures.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from common import load_run, run_parser
from pycocotools.coco import COCO

from cmpc.cli import friendly_errors
from cmpc.data import build_dataset
from cmpc.data.base import collate
from cmpc.data.synthetic import Expression, load_image_scenes, parse_expression, relation_subkind, resolve
from cmpc.explain import capture_reasoning, cell_cover, outgoing_attention, reasoning_graphs


def object_roles(scene, expr, target_oid):
    """``(target, twins, landmarks)`` as lists of object ids (ann_ids), by the generator's resolver."""
    def named(phrase):  # the objects a bare noun phrase refers to
        return [scene.objects[i].oid for i in sorted(resolve(scene, Expression(phrase)))]

    landmarks = [oid for phrase in expr.landmarks for oid in named(phrase)]
    twins = [oid for oid in named(expr.target) if oid != target_oid and oid not in landmarks]
    return [target_oid], twins, landmarks


def edge_mass(adjacency: torch.Tensor, source: torch.Tensor, sink: torch.Tensor) -> float:
    """Edge mass from the ``source`` cells onto the ``sink`` cells over the uniform edge's (1.0 = no preference)."""
    rows = outgoing_attention(adjacency, source)  # mean outgoing row of the source cells, [N]
    return float((rows @ sink) / (sink.sum() / sink.numel()))


@friendly_errors
def main() -> None:
    ap = run_parser(__doc__)
    ap.add_argument("--subkind", default="decoy", choices=("decoy", "shortcut", "near", "between", "all"))
    a = ap.parse_args()
    model, cfg, vocab, device = load_run(a)
    dataset = build_dataset(cfg.dataset, a.split or cfg.dataset.test_split, vocab)
    scenes = load_image_scenes(cfg.dataset.root)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO(str(Path(cfg.dataset.root) / "synthetic" / "instances.json"))

    mass = defaultdict(list)  # (level, "target" | "twin" | "ceiling") -> edge mass ratios
    picks, chance = [], []
    route = {"p_relation": defaultdict(list), "routing": defaultdict(list)}  # word -> per-sentence weights
    with capture_reasoning(model) as captured:
        for index in range(len(dataset)):
            sample = dataset[index]
            meta = sample["meta"]
            if meta["kind"] != "relation":
                continue
            scene, expr = scenes[meta["image_id"]], parse_expression(meta["sentence"])
            if a.subkind != "all" and relation_subkind(scene, expr) != a.subkind:
                continue
            roles = object_roles(scene, expr, meta["ann_id"])
            masks = {oid: dataset.letterbox.mask(coco.annToMask(coco.anns[oid]).astype(bool))
                     for oids in roles for oid in oids}
            batch = collate([sample])
            with torch.no_grad():
                out = model(batch["image"].to(device), batch["words"].to(device))
            logits = out["logits"][0, 0].cpu()
            cover = {oid: cell_cover([m], logits.shape) for oid, m in masks.items()}
            score = {oid: float((c @ logits.flatten()) / c.sum()) for oid, c in cover.items()}
            target, twins, landmarks = roles
            picks.append(all(score[target[0]] > score[t] for t in twins))
            chance.append(1 / (1 + len(twins)))
            probs = out["word_probs"]
            if probs is not None:
                weights = {"p_relation": probs[0, :, model.classifier.types.index("relation")]}
                if model.routing != "relation":  # the paper's routing weight is p_relation itself
                    weights["routing"] = model.relation_weights(probs)[0]
                for key, values in weights.items():
                    for token, p in zip(batch["words"][0].tolist(), values.tolist()):
                        if token != 0:  # padding
                            route[key][vocab.words[token]].append(p)
            # grid: the multimodal map's h x w
            for name, (adjacency, grid) in reasoning_graphs(model, captured).items():
                adjacency = adjacency[0]
                sink = cell_cover([masks[o] for o in landmarks], grid)
                mass[(name, "target")].append(edge_mass(adjacency, cell_cover([masks[target[0]]], grid), sink))
                mass[(name, "twin")].append(edge_mass(adjacency, cell_cover([masks[o] for o in twins], grid), sink))
                mass[(name, "ceiling")].append(float(sink.numel() / sink.sum()))  # every edge on the landmark

    report = {"expressions": len(picks), "target_above_twins": round(float(np.mean(picks)), 3) if picks else None,
              "chance": round(float(np.mean(chance)), 3) if picks else None}
    for (name, role), values in sorted(mass.items()):
        report[f"{name}:{role}" if role == "ceiling" else f"{name}:{role}->landmark"] = round(float(np.mean(values)), 2)
    for key, per_word in route.items():
        mean = {w: float(np.mean(v)) for w, v in per_word.items() if len(v) >= 5}
        if mean:
            report[key] = {w: round(p, 2) for w, p in sorted(mean.items(), key=lambda kv: -kv[1])[:12]}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
