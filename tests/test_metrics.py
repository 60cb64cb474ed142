"""Hand-computed cases for cmpc.metrics (CMPC Prec/oIoU/mIoU, A2D mAP, COCO segm AP, DAVIS J&F)."""

import math

import numpy as np
import pytest
import torch

from cmpc.metrics import (
    VIDEO_THRESHOLDS,
    RefSegMetrics,
    VideoJF,
    boundary_map,
    format_table,
    format_threshold,
    jaccard_and_f,
)


def make_pair(inter, pred_only, gt_only, empty=3, rows=1):
    """pred/gt masks with exactly `inter` shared pixels, `pred_only` and `gt_only` exclusive ones."""
    n = inter + pred_only + gt_only + empty
    n += (-n) % rows
    pred = np.zeros(n, bool)
    gt = np.zeros(n, bool)
    pred[: inter + pred_only] = True
    gt[:inter] = True
    gt[inter + pred_only : inter + pred_only + gt_only] = True
    return pred.reshape(rows, -1), gt.reshape(rows, -1)


def test_format_threshold():
    assert [format_threshold(t) for t in (0.5, 0.55, 0.6, 0.95, 1.0, 0.7000000000000001)] == [
        "0.5", "0.55", "0.6", "0.95", "1.0", "0.7"]


def test_hand_case_with_exact_thresholds_and_empties():
    m = RefSegMetrics()
    samples = [(2, 0, 2), (7, 3, 0), (9, 0, 1), (0, 0, 3), (0, 0, 0)]  # IoU .5 .7 .9 0 (pred empty) 1 (both empty)
    ious = [m.update(*make_pair(*s)) for s in samples]
    assert ious == [0.5, 0.7, 0.9, 0.0, 1.0]
    r = m.compute()
    assert list(r) == ["prec@0.5", "prec@0.6", "prec@0.7", "prec@0.8", "prec@0.9", "oIoU", "mIoU", "n"]
    assert r["prec@0.5"] == pytest.approx(4 / 5)
    assert r["prec@0.6"] == pytest.approx(3 / 5)
    assert r["prec@0.7"] == pytest.approx(3 / 5)  # IoU exactly 0.7 counts (>=)
    assert r["prec@0.8"] == pytest.approx(2 / 5)
    assert r["prec@0.9"] == pytest.approx(2 / 5)
    assert r["mIoU"] == pytest.approx((0.5 + 0.7 + 0.9 + 0 + 1) / 5)
    assert r["oIoU"] == pytest.approx(18 / 27)  # the both-empty sample adds I = U = 0
    assert r["n"] == 5


def test_threshold_tolerance_counts_rounded_threshold():
    # 0.1 * 7 == 0.7000000000000001 > 7/10; the tolerance makes IoU 7/10 still count.
    m = RefSegMetrics(thresholds=(0.1 * 7,))
    m.update(*make_pair(7, 3, 0))
    assert m.compute()["prec@0.7"] == 1.0


def test_oiou_differs_from_miou():
    m = RefSegMetrics()
    m.update(*make_pair(1, 9, 0))  # IoU 0.1, small object
    m.update(*make_pair(90, 0, 10))  # IoU 0.9, big object
    r = m.compute()
    assert r["mIoU"] == pytest.approx(0.5)
    assert r["oIoU"] == pytest.approx(91 / 110)


def test_torch_inputs_and_2d_masks():
    pred, gt = make_pair(6, 2, 4, empty=4, rows=4)
    m = RefSegMetrics()
    assert m.update(torch.from_numpy(pred), torch.from_numpy(gt).float()) == pytest.approx(0.5)
    assert m.compute()["n"] == 1


def test_shape_mismatch_and_bad_rank():
    m = RefSegMetrics()
    with pytest.raises(ValueError, match="shapes differ"):
        m.update(np.zeros((4, 5), bool), np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match="2-D"):
        m.update(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4), bool))
    assert len(m) == 0
    assert math.isnan(m.compute()["mIoU"])


def test_video_map_is_mean_of_ten_precisions():
    m = RefSegMetrics.video()
    assert m.thresholds == VIDEO_THRESHOLDS and len(VIDEO_THRESHOLDS) == 10
    for s in [(1, 1, 0), (3, 1, 0), (4, 0, 0), (0, 2, 2)]:  # IoU .5 .75 1 0
        m.update(*make_pair(*s))
    r = m.compute()
    precs = [r[f"prec@{format_threshold(t)}"] for t in VIDEO_THRESHOLDS]
    assert precs == pytest.approx([0.75] + [0.5] * 5 + [0.25] * 4)  # 0.75 counts at t=0.75
    assert "prec@0.55" in r and "prec@0.95" in r
    assert r["mAP"] == pytest.approx(4.25 / 10)


def test_per_kind_breakdown():
    m = RefSegMetrics()
    m.update(*make_pair(1, 1, 0), kind="testA")  # .5
    m.update(*make_pair(1, 0, 0), kind="testA")  # 1
    m.update(*make_pair(0, 1, 1), kind="testB")  # 0
    m.update(*make_pair(1, 0, 0))  # no kind: only in the overall numbers
    by = m.compute_by_kind()
    assert list(by) == ["testA", "testB"]
    assert by["testA"]["mIoU"] == pytest.approx(0.75) and by["testA"]["n"] == 2
    assert by["testB"]["mIoU"] == 0.0 and by["testB"]["n"] == 1
    assert m.compute()["n"] == 4
    assert RefSegMetrics().compute_by_kind() == {}


def test_merge_and_state_equal_one_accumulator():
    samples = [((3, 1, 2), "a"), ((0, 0, 0), "b"), ((5, 0, 5), "a"), ((2, 8, 0), None)]
    whole, left, right = RefSegMetrics.video(), RefSegMetrics.video(), RefSegMetrics.video()
    for i, (s, k) in enumerate(samples):
        whole.update(*make_pair(*s), kind=k)
        (left if i < 2 else right).update(*make_pair(*s), kind=k)
    rebuilt = RefSegMetrics.from_state(left.state_dict(), right.state_dict())
    left.merge(right)
    assert left.compute() == whole.compute() == rebuilt.compute()
    assert left.compute_by_kind() == whole.compute_by_kind()
    st = whole.state_dict()
    assert st["intersection"].tolist() == [3, 0, 5, 2] and st["union"].tolist() == [6, 0, 10, 10]
    arr = RefSegMetrics.from_arrays(st["intersection"], st["union"], thresholds=VIDEO_THRESHOLDS, report_map=True)
    assert arr.compute() == whole.compute()
    with pytest.raises(ValueError):
        RefSegMetrics().merge(RefSegMetrics.video())


def test_format_table():
    m = RefSegMetrics()
    m.update(*make_pair(1, 1, 0), kind="x")
    text = format_table(m.compute(), title="val")
    assert "**val**" in text and "| prec@0.5 | 100.00 |" in text and "| mIoU | 50.00 |" in text and "| n | 1 |" in text
    assert "| mIoU | 0.5000 |" in format_table(m.compute(), percent=False)
    assert "| metric | x |" in format_table(m.compute_by_kind())


def test_coco_segm_ap():
    m = RefSegMetrics(coco_ap=True)
    gt = np.zeros((20, 20), bool)
    gt[4:14, 4:14] = True
    for _ in range(3):
        m.update(gt, gt, score=0.9)
    r = m.compute()
    assert r["coco_segm_AP"] == pytest.approx(1.0) and r["mIoU"] == 1.0
    worse = np.zeros_like(gt)
    worse[4:14, 6:14] = True  # IoU 0.8: a match at 0.5..0.8 only
    m.update(worse, gt, score=0.95)
    r = m.compute()
    assert r["coco_segm_AP50"] == pytest.approx(1.0)
    assert r["coco_segm_AP"] < 1.0
    assert "mAP" not in r


# ---------------------------------------------------------------------- J&F
def square(size=100, top=20, left=20, side=50):
    m = np.zeros((size, size), bool)
    m[top : top + side, left : left + side] = True
    return m


def test_boundary_map_hand_cases():
    full = np.ones((6, 6), bool)
    assert not boundary_map(full).any()
    dot = np.zeros((6, 6), bool)
    dot[3, 3] = True
    assert set(zip(*np.nonzero(boundary_map(dot)))) == {(3, 3), (2, 3), (3, 2), (2, 2)}


def test_jf_identical_and_disjoint():
    a = square()
    r = jaccard_and_f([a, a], [a, a])
    assert r == {"J": 1.0, "F": 1.0, "JF": 1.0}
    b = square(top=75, left=75, side=20)
    r = jaccard_and_f([a], [b])
    assert r["J"] == 0.0 and r["F"] == 0.0


def test_jf_one_pixel_shift_within_tolerance():
    a, b = square(), square(left=21)  # tolerance ceil(0.008 * 141.4) = 2 px
    r = jaccard_and_f(np.stack([a]), np.stack([b]))
    assert r["F"] == 1.0
    assert r["J"] == pytest.approx(49 * 50 / (51 * 50))
    far = jaccard_and_f([a], [square(left=24)])
    assert far["F"] < 1.0


def test_jf_empty_frames():
    a = square()
    e = np.zeros_like(a)
    assert jaccard_and_f([e], [e]) == {"J": 1.0, "F": 1.0, "JF": 1.0}
    r = jaccard_and_f([e, a], [a, a])  # frame 1: missed object (J=F=0), frame 2 perfect
    assert r["J"] == 0.5 and r["F"] == 0.5
    with pytest.raises(ValueError):
        jaccard_and_f([a], [a, a])


def test_video_jf_accumulator():
    a = square()
    acc = VideoJF()
    acc.update([a], [a])
    acc.update([np.zeros_like(a)], [a], kind="k")
    r = acc.compute()
    assert r == {"J": 0.5, "F": 0.5, "JF": 0.5, "n": 2}
    assert VideoJF.from_state(acc.state_dict()).compute() == r
    assert acc.compute_by_kind() == {"k": {"J": 0.0, "F": 0.0, "JF": 0.0, "n": 1}}
