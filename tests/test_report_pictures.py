"""The pictures that end a training run (cmpc/engine/report_pictures.py) and the per-sample IoUs of evaluate."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_training import compose_cfg, tiny_overrides

from cmpc.engine.builders import build_datasets
from cmpc.engine.evaluate import evaluate
from cmpc.engine.report_pictures import PER_KIND, pick, predict_masks, write_report_pictures


def indices(rows):
    return [[None if s is None else s.index for s in row] for row in rows]


def test_pick_takes_the_first_successes_and_failures_of_each_kind_in_dataset_order():
    samples = {"index": [7, 3, 5, 1, 9, 2, 4, 8, 6],  # not in dataset order
               "iou": [0.9, 0.5, 0.2, 0.7, 0.1, 0.4999, 1.0, 0.3, 0.0],
               "kind": ["b", "b", "b", "b", "b", "a", "a", "b", "b"]}
    rows = pick(samples)
    # kind a: one success (4), one failure (2: just below 0.5); kind b: 1 and 3 (IoU exactly 0.5 is a success, as
    # for prec@0.5) come before 7, failures 5 and 6 before 8 and 9
    assert indices(rows) == [[4, None, 2, None], [1, 3, 5, 6]]
    assert [s.kind for s in rows[1]] == ["b"] * 4 and rows[1][1].iou == 0.5
    no_kinds = pick({"index": [2, 0, 1], "iou": [0.6, 0.1, 0.8], "kind": [None] * 3})
    assert indices(no_kinds) == [[1, 2, 0, None]]
    assert pick({"index": [], "iou": [], "kind": []}) == []


class LeftHalf(torch.nn.Module):
    """Predicts the left half of every letterboxed input (logit +1 there, -1 elsewhere); no word classifier."""

    word_types = ()

    def forward(self, images, words, index=None):
        logits = -torch.ones(len(words), 1, *images.shape[-2:])
        logits[..., : images.shape[-1] // 2] = 1
        return {"logits": logits}

    def encode_language(self, tokens):
        return SimpleNamespace(probs=None)


def test_per_sample_ious_name_the_dataset_samples_and_skip_unreadable_ones(tmp_path):
    cfg = compose_cfg(tiny_overrides(tmp_path / "data", extra=["dataset.generate.splits={train: 2, val: 1, test: 5}"]))
    test = build_datasets(cfg, splits=("test",)).test
    raws = [test.load(i) for i in range(len(test))]
    broken = raws[0].meta["file"]  # every sentence of the first image becomes unreadable
    with open(broken, "wb") as f:
        f.write(b"\xff\xd8 not a jpeg")
    readable = [i for i, raw in enumerate(raws) if raw.meta["file"] != broken]
    assert 0 < len(readable) < len(raws)

    test = build_datasets(cfg, splits=("test",)).test  # a fresh dataset: the first one keeps the decoded images
    result = evaluate(LeftHalf(), test, device="cpu", batch_size=3, progress=False, per_sample=True)
    samples = result["samples"]
    assert samples["index"].tolist() == readable and result["unreadable"] == len(raws) - len(readable)
    for i, iou, kind in zip(samples["index"], samples["iou"], samples["kind"]):
        gt = raws[i].mask
        left = np.zeros_like(gt)
        left[:, : gt.shape[1] // 2] = True  # 128 px pictures letterboxed to 128: no padding
        assert iou == pytest.approx((left & gt).sum() / (left | gt).sum(), abs=1e-12)
        assert kind == raws[i].meta["kind"]
    assert result["metrics"]["mIoU"] == pytest.approx(samples["iou"].mean())
    assert "samples" not in evaluate(LeftHalf(), test, device="cpu", progress=False)

    masks = predict_masks(LeftHalf(), test, [readable[0], 0], "cpu")  # the unreadable one is left out
    assert [i for i, _, _ in masks] == [readable[0]]
    assert masks[0][2][:, :64].all() and not masks[0][2][:, 64:].any()

    logged = []
    writer = SimpleNamespace(add_image=lambda tag, picture, step, dataformats: logged.append((tag, picture.shape)))
    written = write_report_pictures(LeftHalf(), test, samples, tmp_path, "cpu", writer=writer, step=7, title="t")
    assert list(written) == ["predictions"]  # no word classifier: no word_types.png
    rows = len(set(samples["kind"]))
    with Image.open(written["predictions"]) as im:
        assert im.size[0] >= 2 * PER_KIND * 256 and im.size[1] >= rows * 256
        assert [(tag, shape) for tag, shape in logged] == [("test/predictions", (im.size[1], im.size[0], 3))]
