"""Referring-segmentation metrics: the CMPC image/A2D protocol, optional COCO segm AP, and DAVIS J&F.

Protocols implemented (see ``docs/reference.md`` sections 1.4, 1.6, 2.1 and 2.2):

* **CMPC / A2D (``RefSegMetrics``)** -- one sample per (sentence, object) pair, compared at whatever
  resolution the caller passes (CMPC: the original image size).  Per sample the intersection ``I`` and
  union ``U`` of the boolean prediction and ground truth are kept.

  - ``mIoU`` = mean over samples of ``I / U``; a sample whose prediction and ground truth are both empty
    has IoU 1 (and adds ``I = U = 0`` to the overall sums).
  - ``oIoU`` = ``sum(I) / sum(U)`` ("overall IoU"; 1 when every sample is empty/empty).
  - ``prec@t`` = fraction of samples with IoU **>=** ``t``.  The comparison is ``IoU >= t - 1e-9`` so a
    threshold that equals a pixel ratio exactly (``I/U = 1/2`` at 0.5, ``7/10`` at 0.7) counts whatever
    floating-point rounding the threshold literal had; the tolerance is far below any achievable gap
    between two pixel ratios for images under 10^9 pixels.
  - ``RefSegMetrics.video()``: thresholds 0.50:0.05:0.95 and ``mAP`` = mean of those ten precisions
    (the CMPC-V / LBDT A2D convention, *not* COCO AP).

* **COCO segm AP (``coco_ap=True``)** -- the MTTR / ReferFormer A2D protocol, a different metric: every
  sample is its own image with one ground-truth annotation (category 1) and one scored detection, evaluated
  with ``pycocotools`` ``COCOeval(iouType="segm")`` and ``useCats = 0``.  Reported under the keys
  ``coco_segm_AP``, ``coco_segm_AP50``, ``coco_segm_AP75`` so it is never confused with ``mAP`` above.
  A sample with an empty ground truth gets no annotation (its detection can only be a false positive);
  NaN when no sample has a ground-truth object.

* **J&F (``jaccard_and_f`` / ``VideoJF``)** -- the DAVIS-2017 way used by Ref-YouTube-VOS, Ref-DAVIS and
  MeViS: per expression, J = mean per-frame IoU (empty/empty = 1) and F = mean per-frame boundary
  F-measure (1-pixel boundaries, match tolerance ``ceil(0.008 * image diagonal)`` pixels by disk
  dilation, empty/empty = 1); over a dataset J and F are means over expressions and ``JF = (J + F) / 2``.

Every value is a **fraction in [0, 1]** (``n`` is a count); ``format_table(..., percent=True)`` prints
percentages.  Inputs may be numpy arrays or torch tensors (anything non-zero is foreground).  This module
imports nothing from ``cmpc`` and needs only numpy (plus OpenCV for F, pycocotools for COCO AP, both
imported lazily).
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "IMAGE_THRESHOLDS",
    "VIDEO_THRESHOLDS",
    "RefSegMetrics",
    "VideoJF",
    "format_table",
    "format_threshold",
    "jaccard_and_f",
    "boundary_map",
    "boundary_f",
]

IMAGE_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
VIDEO_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

#: Slack of the ``IoU >= threshold`` comparison (see the module docstring).
PREC_TOLERANCE = 1e-9


def format_threshold(t: float) -> str:
    """``0.5 -> '0.5'``, ``0.55 -> '0.55'``, ``0.6 -> '0.6'``: at most two decimals, no trailing zeros."""
    s = f"{float(t):.2f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def _to_bool(x: Any, name: str) -> np.ndarray:
    """A 2-D boolean numpy array from a numpy array / torch tensor / nested list (non-zero = foreground)."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D H x W mask, got shape {tuple(a.shape)} "
                         "(squeeze batch/channel dims first)")
    return a if a.dtype == np.bool_ else a != 0


def _pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = _to_bool(pred, "pred"), _to_bool(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(
            f"pred and gt shapes differ: pred {tuple(p.shape)} vs gt {tuple(g.shape)}; "
            "resize the prediction to the ground-truth size before update()"
        )
    return p, g


def _iou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    out = np.ones_like(union)
    nz = union > 0
    out[nz] = inter[nz] / union[nz]
    return out


class RefSegMetrics:
    """Accumulates per-sample intersection/union and reports Prec@X, oIoU, mIoU (fractions in [0, 1]).

    >>> m = RefSegMetrics()
    >>> m.update(pred, gt, kind="testA")   # one sample: boolean H x W, numpy or torch
    >>> m.compute()                        # {'prec@0.5': ..., ..., 'oIoU': ..., 'mIoU': ..., 'n': ...}

    For distributed evaluation gather :meth:`state_dict` from every process and rebuild with
    :meth:`from_state` (or :meth:`merge` / :meth:`extend`).
    """

    def __init__(
        self,
        thresholds: Sequence[float] = IMAGE_THRESHOLDS,
        coco_ap: bool = False,
        *,
        report_map: bool = False,
    ) -> None:
        self.thresholds = tuple(float(t) for t in thresholds)
        if not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must lie in [0, 1], got {self.thresholds}")
        self.coco_ap = bool(coco_ap)
        self.report_map = bool(report_map)
        self.reset()

    @classmethod
    def video(cls, coco_ap: bool = False) -> "RefSegMetrics":
        """CMPC-V / A2D: Prec@0.50:0.05:0.95 plus ``mAP`` = mean of those ten precisions."""
        return cls(VIDEO_THRESHOLDS, coco_ap=coco_ap, report_map=True)

    def reset(self) -> None:
        self._inter: list[int] = []
        self._union: list[int] = []
        self._kinds: list[Hashable | None] = []
        self._scores: list[float] = []
        self._rles: list[tuple[dict, dict]] = []  # (pred RLE, gt RLE), only with coco_ap

    def __len__(self) -> int:
        return len(self._inter)

    # ------------------------------------------------------------------ accumulate
    def update(self, pred: Any, gt: Any, kind: Hashable | None = None, score: float = 1.0) -> float:
        """Add one sample; returns its IoU.  ``score`` (confidence) is used only by COCO AP."""
        p, g = _pair(pred, gt)
        inter = int(np.count_nonzero(p & g))
        union = int(np.count_nonzero(p | g))
        self._inter.append(inter)
        self._union.append(union)
        self._kinds.append(kind)
        self._scores.append(float(score))
        if self.coco_ap:
            from pycocotools import mask as mask_utils

            self._rles.append(
                (
                    mask_utils.encode(np.asfortranarray(p.astype(np.uint8))),
                    mask_utils.encode(np.asfortranarray(g.astype(np.uint8))),
                )
            )
        return 1.0 if union == 0 else inter / union

    def extend(
        self,
        intersection: Iterable[int],
        union: Iterable[int],
        kinds: Iterable[Hashable | None] | None = None,
        scores: Iterable[float] | None = None,
        rles: Iterable[tuple[dict, dict]] | None = None,
    ) -> None:
        """Append already-computed per-sample I and U (e.g. gathered from other processes)."""
        inter = [int(v) for v in np.asarray(list(intersection), dtype=np.int64).ravel()]
        uni = [int(v) for v in np.asarray(list(union), dtype=np.int64).ravel()]
        if len(inter) != len(uni):
            raise ValueError(f"intersection and union lengths differ: {len(inter)} vs {len(uni)}")
        if any(i > u or i < 0 for i, u in zip(inter, uni)):
            raise ValueError("every intersection must satisfy 0 <= I <= U")
        kinds = [None] * len(inter) if kinds is None else list(kinds)
        scores = [1.0] * len(inter) if scores is None else [float(s) for s in scores]
        if len(kinds) != len(inter) or len(scores) != len(inter):
            raise ValueError("kinds and scores must have one entry per sample")
        if self.coco_ap:
            rles = [] if rles is None else list(rles)
            if len(rles) != len(inter):
                raise ValueError("coco_ap=True needs the per-sample (pred, gt) RLEs; see state_dict()['rles']")
            self._rles.extend(rles)
        self._inter.extend(inter)
        self._union.extend(uni)
        self._kinds.extend(kinds)
        self._scores.extend(scores)

    def merge(self, other: "RefSegMetrics") -> "RefSegMetrics":
        """Append the samples of ``other`` (same thresholds and options) into ``self``; returns ``self``."""
        if (other.thresholds, other.coco_ap, other.report_map) != (self.thresholds, self.coco_ap, self.report_map):
            raise ValueError("cannot merge RefSegMetrics with different thresholds / coco_ap / report_map")
        self.extend(other._inter, other._union, other._kinds, other._scores, other._rles if self.coco_ap else None)
        return self

    def state_dict(self) -> dict[str, Any]:
        """Per-sample arrays (picklable) for gathering across processes; see :meth:`from_state`."""
        state: dict[str, Any] = {
            "intersection": np.asarray(self._inter, dtype=np.int64),
            "union": np.asarray(self._union, dtype=np.int64),
            "kinds": list(self._kinds),
            "scores": np.asarray(self._scores, dtype=np.float64),
            "thresholds": self.thresholds,
            "coco_ap": self.coco_ap,
            "report_map": self.report_map,
        }
        if self.coco_ap:
            state["rles"] = list(self._rles)
        return state

    @classmethod
    def from_state(cls, *states: Mapping[str, Any]) -> "RefSegMetrics":
        """Rebuild one accumulator from one or more :meth:`state_dict` results (e.g. one per rank)."""
        if not states:
            raise ValueError("from_state needs at least one state")
        first = states[0]
        out = cls(first["thresholds"], coco_ap=first["coco_ap"], report_map=first["report_map"])
        for s in states:
            if (tuple(s["thresholds"]), s["coco_ap"], s["report_map"]) != (out.thresholds, out.coco_ap, out.report_map):
                raise ValueError("states come from RefSegMetrics with different settings")
            out.extend(s["intersection"], s["union"], s["kinds"], s["scores"], s.get("rles"))
        return out

    @classmethod
    def from_arrays(
        cls,
        intersection: Iterable[int],
        union: Iterable[int],
        kinds: Iterable[Hashable | None] | None = None,
        **kwargs: Any,
    ) -> "RefSegMetrics":
        """An accumulator holding the given per-sample I and U (``kwargs`` go to the constructor)."""
        out = cls(**kwargs)
        out.extend(intersection, union, kinds)
        return out

    # ------------------------------------------------------------------ report
    def ious(self) -> np.ndarray:
        """Per-sample IoU (empty/empty = 1), in update order."""
        return _iou(self._inter, self._union)

    def _summary(self, idx: np.ndarray | None) -> dict[str, float]:
        inter = np.asarray(self._inter, dtype=np.int64)
        union = np.asarray(self._union, dtype=np.int64)
        if idx is not None:
            inter, union = inter[idx], union[idx]
        n = int(inter.size)
        out: dict[str, float] = {}
        ious = _iou(inter, union)
        precs = []
        for t in self.thresholds:
            v = float(np.mean(ious >= t - PREC_TOLERANCE)) if n else math.nan
            precs.append(v)
            out[f"prec@{format_threshold(t)}"] = v
        if self.report_map:
            out["mAP"] = float(np.mean(precs)) if n else math.nan
        su = int(union.sum())
        out["oIoU"] = (float(inter.sum()) / su if su else 1.0) if n else math.nan
        out["mIoU"] = float(ious.mean()) if n else math.nan
        if self.coco_ap:
            rles = self._rles if idx is None else [self._rles[i] for i in idx]
            scores = self._scores if idx is None else [self._scores[i] for i in idx]
            out.update(_coco_segm_ap(rles, scores))
        out["n"] = n
        return out

    def compute(self) -> dict[str, float]:
        """``prec@t`` for each threshold, [``mAP``], ``oIoU``, ``mIoU``, [``coco_segm_AP*``], ``n``."""
        return self._summary(None)

    def compute_by_kind(self) -> dict[Hashable, dict[str, float]]:
        """``{kind: compute()-like dict}`` over the samples updated with a kind; ``{}`` if none had one."""
        groups: dict[Hashable, list[int]] = {}
        for i, k in enumerate(self._kinds):
            if k is not None:
                groups.setdefault(k, []).append(i)
        keys = sorted(groups, key=lambda k: (str(type(k)), str(k)))
        return {k: self._summary(np.asarray(groups[k], dtype=np.int64)) for k in keys}


def _coco_segm_ap(rles: Sequence[tuple[dict, dict]], scores: Sequence[float]) -> dict[str, float]:
    """COCOeval segm with useCats=0, one image + one GT annotation + one detection per sample."""
    keys = ("coco_segm_AP", "coco_segm_AP50", "coco_segm_AP75")
    if not rles:
        return {k: math.nan for k in keys}
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for i, ((prle, grle), score) in enumerate(zip(rles, scores)):
        h, w = (int(v) for v in grle["size"])
        images.append({"id": i, "height": h, "width": w})
        area = float(mask_utils.area(grle))
        if area > 0:  # an empty ground truth has nothing to detect
            anns.append({
                "id": len(anns) + 1, "image_id": i, "category_id": 1, "segmentation": grle,
                "area": area, "bbox": [float(v) for v in mask_utils.toBbox(grle)], "iscrowd": 0,
            })
        dets.append({"image_id": i, "category_id": 1, "segmentation": prle, "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.useCats = 0
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # COCOeval reports -1 where nothing could be measured (no ground truth at all).
    return {k: (float(v) if v >= 0 else math.nan) for k, v in zip(keys, ev.stats[:3])}


# ---------------------------------------------------------------------- J&F (DAVIS)
def boundary_map(mask: Any) -> np.ndarray:
    """1-pixel boundary of a boolean mask, as DAVIS ``seg2bmap`` (same-size case).

    A pixel is a boundary pixel when it differs from its right, lower or lower-right neighbour, the image
    being extended by replicating its last row/column (so the image border itself is never a boundary).
    """
    m = _to_bool(mask, "mask")
    p = np.pad(m, ((0, 1), (0, 1)), mode="edge")
    return (m != p[:-1, 1:]) | (m != p[1:, :-1]) | (m != p[1:, 1:])


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy <= r * r).astype(np.uint8)


def boundary_f(pred: Any, gt: Any, bound_th: float = 0.008) -> float:
    """DAVIS boundary F-measure of one frame (``bound_th < 1``: fraction of the image diagonal)."""
    import cv2

    p, g = _pair(pred, gt)
    radius = int(bound_th) if bound_th >= 1 else int(math.ceil(bound_th * math.hypot(*p.shape)))
    pb, gb = boundary_map(p), boundary_map(g)
    n_p, n_g = int(pb.sum()), int(gb.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0  # precision or recall is 0 and the other 1
    kernel = _disk(radius)
    p_dil = cv2.dilate(pb.astype(np.uint8), kernel) > 0
    g_dil = cv2.dilate(gb.astype(np.uint8), kernel) > 0
    precision = float(np.count_nonzero(pb & g_dil)) / n_p
    recall = float(np.count_nonzero(gb & p_dil)) / n_g
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def _frames(x: Any, name: str) -> list[Any]:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.ndim != 3:
            raise ValueError(f"{name} must be a list of H x W masks or a T x H x W array, got shape {x.shape}")
        return list(x)
    return list(x)


def jaccard_and_f(preds: Any, gts: Any, bound_th: float = 0.008) -> dict[str, float]:
    """J, F and ``JF = (J + F) / 2`` of ONE expression (per-frame masks; empty/empty frames score 1)."""
    ps, gs = _frames(preds, "preds"), _frames(gts, "gts")
    if len(ps) != len(gs):
        raise ValueError(f"preds and gts have different frame counts: {len(ps)} vs {len(gs)}")
    if not ps:
        raise ValueError("jaccard_and_f needs at least one frame")
    js, fs = [], []
    for p, g in zip(ps, gs):
        p, g = _pair(p, g)
        union = np.count_nonzero(p | g)
        js.append(1.0 if union == 0 else np.count_nonzero(p & g) / union)
        fs.append(boundary_f(p, g, bound_th))
    j, f = float(np.mean(js)), float(np.mean(fs))
    return {"J": j, "F": f, "JF": (j + f) / 2.0}


class VideoJF:
    """Per-expression J and F; :meth:`compute` gives the means over expressions and ``JF = (J + F) / 2``."""

    def __init__(self, bound_th: float = 0.008) -> None:
        self.bound_th = bound_th
        self.reset()

    def reset(self) -> None:
        self._j: list[float] = []
        self._f: list[float] = []
        self._kinds: list[Hashable | None] = []

    def __len__(self) -> int:
        return len(self._j)

    def update(self, preds: Any, gts: Any, kind: Hashable | None = None) -> dict[str, float]:
        """Add one expression (its frames); returns that expression's J, F, JF."""
        r = jaccard_and_f(preds, gts, self.bound_th)
        self._j.append(r["J"])
        self._f.append(r["F"])
        self._kinds.append(kind)
        return r

    def extend(self, j: Iterable[float], f: Iterable[float], kinds: Iterable[Hashable | None] | None = None) -> None:
        j, f = [float(v) for v in j], [float(v) for v in f]
        kinds = [None] * len(j) if kinds is None else list(kinds)
        if not len(j) == len(f) == len(kinds):
            raise ValueError("j, f and kinds must have one entry per expression")
        self._j.extend(j)
        self._f.extend(f)
        self._kinds.extend(kinds)

    def merge(self, other: "VideoJF") -> "VideoJF":
        self.extend(other._j, other._f, other._kinds)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"J": np.asarray(self._j), "F": np.asarray(self._f), "kinds": list(self._kinds),
                "bound_th": self.bound_th}

    @classmethod
    def from_state(cls, *states: Mapping[str, Any]) -> "VideoJF":
        out = cls(states[0]["bound_th"] if states else 0.008)
        for s in states:
            out.extend(s["J"], s["F"], s["kinds"])
        return out

    @staticmethod
    def _summary(j: list[float], f: list[float]) -> dict[str, float]:
        if not j:
            return {"J": math.nan, "F": math.nan, "JF": math.nan, "n": 0}
        mj, mf = float(np.mean(j)), float(np.mean(f))
        return {"J": mj, "F": mf, "JF": (mj + mf) / 2.0, "n": len(j)}

    def compute(self) -> dict[str, float]:
        return self._summary(self._j, self._f)

    def compute_by_kind(self) -> dict[Hashable, dict[str, float]]:
        groups: dict[Hashable, list[int]] = {}
        for i, k in enumerate(self._kinds):
            if k is not None:
                groups.setdefault(k, []).append(i)
        return {
            k: self._summary([self._j[i] for i in groups[k]], [self._f[i] for i in groups[k]])
            for k in sorted(groups, key=lambda k: (str(type(k)), str(k)))
        }


# ---------------------------------------------------------------------- printing
def _fmt(key: str, value: Any, percent: bool) -> str:
    if key == "n" or isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    v = float(value)
    if math.isnan(v):
        return "-"
    return f"{100.0 * v:.2f}" if percent else f"{v:.4f}"


def format_table(metrics: Mapping[Any, Any], title: str | None = None, percent: bool = True) -> str:
    """A markdown table of a :meth:`RefSegMetrics.compute` dict, or of ``{column: dict}`` (e.g. by kind).

    ``percent=True`` prints fractions as percentages with two decimals; ``n`` stays an integer.
    """
    lines = [f"**{title}**", ""] if title else []
    if metrics and all(isinstance(v, Mapping) for v in metrics.values()):
        cols = [str(c) for c in metrics]
        rows: list[str] = []
        for d in metrics.values():
            rows.extend(k for k in d if k not in rows)
        lines.append("| metric | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for r in rows:
            cells = [_fmt(r, d[r], percent) if r in d else "" for d in metrics.values()]
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
    else:
        lines.append("| metric | value |")
        lines.append("|---|---:|")
        for k, v in metrics.items():
            lines.append(f"| {k} | {_fmt(str(k), v, percent)} |")
    return "\n".join(lines)
