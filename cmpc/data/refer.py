"""Referring-image datasets in the refer-API layout: UNC, UNC+, G-Ref (google, umd), refclef, synthetic.

Reads the files of lichengunc/refer directly (docs/reference.md section 3a) and follows CMPC's data selection
(section 1.5):

* ``<root>/<refer_dataset>/refs(<split_by>).p``: pickled list of refs (text of Python-2 pickles decoded as
  UTF-8, else latin-1: :func:`load_pickle`); ``<root>/<refer_dataset>/instances.json``: COCO-style images and
  annotations; images in ``<root>/<image_dir>/<file_name>``.
* refs selected by **exact** split match ``ref['split'] == split`` (the refer API's ``getRefIds`` would match
  ``'test'`` against ``testA``/``testB`` too; CMPC does not).
* every sentence of a selected ref is one sample; the text is ``sentence['sent']`` (CMPC, CRIS) or
  ``sentence['raw']`` (LAVT, ReLA) -- option ``sentence_field``.
* mask = ``pycocotools.mask.frPyObjects(segmentation, h, w)`` -> ``decode`` -> any over polygons; polygons
  (refcoco*) and RLE (refclef; compressed or not) are both accepted. A polygon with a vertex farther than the
  image size outside the image is clipped to that margin (so a vertex at 1e8 costs no memory; the others are
  decoded as drawn, exactly as the official code does) and malformed ones dropped and counted: NaN / infinite
  coordinates, odd length, fewer than 3 points (pycocotools would read a 4-number list as a box); RLEs must
  have the image's size. A ref left without geometry is skipped.
* the expression kind is ``ref.get('kind')`` (only the synthetic benchmark has one);
* a ref with ``ann_id == -1`` (synthetic "negative" expressions, gRefCOCO style) refers to nothing: its mask
  is empty and ``meta['no_target']`` is True (False for every other sample).

Malformed refs/sentences are skipped and counted (see :mod:`cmpc.data.base`); missing files raise DatasetError.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils

from cmpc.data.base import RawSample, ReferringDataset, require_dir, require_file
from cmpc.data.text import has_words
from cmpc.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)


def _py2_text(obj):
    """Byte strings of a Python-2 pickle (loaded with ``encoding='bytes'``) as text, recursively: UTF-8 when the
    bytes are valid UTF-8 (what Python 2 code wrote for typed text), else latin-1 (every byte one character)."""
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return obj.decode("latin-1")
    if isinstance(obj, dict):
        return {_py2_text(k): _py2_text(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_py2_text(v) for v in obj)
    return obj


def load_pickle(path: str | os.PathLike):
    """``pickle.load`` of a refs file written by Python 3 or Python 2, text decoded as the annotator typed it.

    A Python-2 ``str`` is a byte string: the default load fails on non-ASCII bytes, so such pickles are re-read
    with ``encoding='bytes'`` and every byte string is decoded as UTF-8, falling back to latin-1
    (:func:`_py2_text`); ``encoding='latin1'`` alone would turn UTF-8 "café" into "cafÃ©". Python-2 ``unicode``
    and Python-3 ``str`` values are stored as UTF-8 by pickle and need nothing.
    """
    path = Path(path)
    try:
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except UnicodeDecodeError:
            with open(path, "rb") as f:
                return _py2_text(pickle.load(f, encoding="bytes"))
    except Exception as e:
        raise DatasetError(f"cannot read {path} ({type(e).__name__}: {e}); the file is corrupt: "
                           f"re-download it") from e


def load_json(path: str | os.PathLike):
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is tolerated
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot parse {path} ({e}); the file is corrupt: re-download it") from e


def clip_polygon(xy: np.ndarray, h: int, w: int, margin: float) -> np.ndarray:
    """Polygon ``xy [N, 2]`` (x, y in pixels) clipped to the box ``[-margin, w + margin] x [-margin, h + margin]``
    (Sutherland-Hodgman; exact for any polygon against a rectangle). Returns ``[M, 2]``, M may be < 3.

    The region inside the image is unchanged (the cut edges lie outside it), and the edges pycocotools draws
    are bounded by the box, so decoding costs memory ``O(N * (h + w + margin))`` whatever the coordinates.
    """
    pts = [tuple(p) for p in np.asarray(xy, dtype=np.float64)]
    for axis, bound, keep_below in ((0, -margin, False), (0, w + margin, True), (1, -margin, False),
                                    (1, h + margin, True)):
        def inside(p, axis=axis, bound=bound, keep_below=keep_below):  # this round's side of the box
            return p[axis] <= bound if keep_below else p[axis] >= bound

        out = []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            if inside(cur) != inside(prev):  # the edge crosses the bound: add the crossing point
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                cross = [prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])]
                cross[axis] = bound
                out.append(tuple(cross))
            if inside(cur):
                out.append(cur)
        pts = out
        if not pts:
            break
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def _overlaps_image(xy: np.ndarray, h: int, w: int) -> bool:
    """Whether the bounding box of polygon ``xy [N, 2]`` meets the image ``[0, w] x [0, h]`` with some area."""
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    return bool(lo[0] < w and hi[0] > 0 and lo[1] < h and hi[1] > 0)


def clean_segmentation(seg, h: int, w: int, skip=None):
    """Usable geometry of an annotation on an ``h x w`` image: polygons (those with a vertex farther than
    ``max(h, w)`` outside the image clipped to that margin, :func:`clip_polygon`; the others exactly as drawn) or
    an RLE dict / list of RLE dicts of size ``[h, w]``; ``None`` when nothing usable is left.

    Each dropped part is reported through ``skip(reason)``: a polygon with NaN / infinite / non-numeric
    coordinates, an odd number of coordinates, fewer than 3 points, or nothing left inside the image; an RLE
    whose size is not the image size or whose counts do not cover it.
    """
    skip = skip or (lambda reason, n=1: None)

    def rle_ok(r) -> bool:
        if not (isinstance(r, dict) and "counts" in r and "size" in r):
            skip("RLE without 'counts' and 'size' dropped")
            return False
        if [int(v) for v in r["size"]] != [h, w]:
            skip("RLE whose size is not the image size dropped")
            return False
        if isinstance(r["counts"], list) and sum(int(c) for c in r["counts"]) != h * w:
            skip("uncompressed RLE whose counts do not sum to height x width dropped")
            return False
        return True

    if isinstance(seg, dict):
        return seg if rle_ok(seg) else None
    if not isinstance(seg, (list, tuple)):
        return None
    if seg and isinstance(seg[0], dict):  # list of RLEs
        rles = [r for r in seg if rle_ok(r)]
        return rles or None
    polys = []
    for p in seg:
        try:
            xy = np.asarray(p, dtype=np.float64)
        except (TypeError, ValueError):
            skip("polygon with non-numeric coordinates dropped")
            continue
        if xy.ndim != 1:
            skip("polygon that is not a flat list of numbers dropped")
        elif not np.isfinite(xy).all():
            skip("polygon with NaN or infinite coordinates dropped")
        elif xy.size % 2:
            skip("polygon with an odd number of coordinates dropped")
        elif xy.size < 6:
            skip("polygon with fewer than 3 points dropped")
        else:
            xy = xy.reshape(-1, 2)
            margin = max(h, w)
            if (xy >= -margin).all() and (xy[:, 0] <= w + margin).all() and (xy[:, 1] <= h + margin).all():
                polys.append([float(v) for v in xy.ravel()])  # as drawn: pycocotools gives the official mask
                continue
            clipped = clip_polygon(xy, h, w, margin)
            if len(clipped) < 3 or not _overlaps_image(clipped, h, w):
                skip("polygon entirely outside the image dropped")
            else:
                polys.append([float(v) for v in clipped.ravel()])
    return polys or None


def segmentation_to_mask(seg, h: int, w: int) -> np.ndarray:
    """bool ``h x w`` mask of COCO polygons / RLE (any over parts)."""
    if isinstance(seg, dict):
        if isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = dict(seg)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        m = mask_utils.decode(rle)
    elif seg and isinstance(seg[0], dict):
        m = np.stack([segmentation_to_mask(r, h, w) for r in seg], axis=2)
    else:
        m = mask_utils.decode(mask_utils.frPyObjects(seg, h, w))
    if m.ndim == 3:
        m = m.any(axis=2)
    return m.astype(bool)


class ReferDataset(ReferringDataset):
    """One sample per sentence of the refs of one split, refer-API layout (module docstring)."""

    name = "refer"
    ANCHOR = "unc"
    REFER_DATASET = "refcoco"
    SPLIT_BY = "unc"
    IMAGE_DIR = "images/mscoco/images/train2014"

    def __init__(self, root, split, vocab=None, *, refer_dataset: str | None = None,
                 split_by: str | None = None, image_dir: str | None = None, sentence_field: str = "sent",
                 **common):
        super().__init__(root, split, vocab, **common)
        self.refer_dataset = refer_dataset or self.REFER_DATASET
        self.split_by = split_by or self.SPLIT_BY
        self.image_dir = self.root / (image_dir or self.IMAGE_DIR)
        if sentence_field not in ("sent", "raw"):
            raise ConfigError(f"dataset.sentence_field={sentence_field!r} is unknown; use sent or raw")
        self.sentence_field = sentence_field
        self.refs_path = self.root / self.refer_dataset / f"refs({self.split_by}).p"
        self.instances_path = self.root / self.refer_dataset / "instances.json"
        require_file(self.refs_path, f"{self.refer_dataset} refs file", self.ANCHOR)
        require_file(self.instances_path, f"{self.refer_dataset} instances file", self.ANCHOR)
        require_dir(self.image_dir, "image", self.ANCHOR)
        index = self.cached_index(self._build_index,
                                  [self.refs_path, self.instances_path, self.image_dir],
                                  {"sentence_field": sentence_field, "image_dir": str(self.image_dir)})
        self.refs = index["refs"]
        self.splits_on_disk = index["splits"]
        self.use_index(index)

    # -- index ----------------------------------------------------------------------------------------
    def _build_index(self) -> dict:
        refs = load_pickle(self.refs_path)
        if not isinstance(refs, list):
            raise DatasetError(f"{self.refs_path} does not hold a list of refs; re-download it")
        splits = sorted({str(r.get("split")) for r in refs if isinstance(r, dict)})
        if self.split not in splits:
            raise ConfigError(f"split '{self.split}' not found in {self.refs_path}; available splits: "
                              f"{', '.join(splits)}")
        inst = load_json(self.instances_path)
        images = {im["id"]: im for im in inst.get("images", []) if isinstance(im, dict) and "id" in im}
        anns = {a["id"]: a for a in inst.get("annotations", []) if isinstance(a, dict) and "id" in a}
        on_disk = set(os.listdir(self.image_dir))
        skipped: dict[str, int] = {}

        def skip(reason, n=1):
            skipped[reason] = skipped.get(reason, 0) + n

        out_refs, items = [], []
        for ref in refs:
            if not isinstance(ref, dict) or ref.get("split") != self.split:
                continue
            sents = ref.get("sentences") or []
            ann_id = ref.get("ann_id")
            no_target = ann_id == -1 or ann_id == [-1]  # expression about an absent object (empty mask)
            ann = None if no_target else anns.get(ann_id)
            if ann is None and not no_target:
                skip("ref whose ann_id is not in instances.json", max(1, len(sents)))
                continue
            img = images.get(ref.get("image_id", ann.get("image_id") if ann else None))
            if img is None or "file_name" not in img:
                skip("ref whose image_id is not in instances.json", max(1, len(sents)))
                continue
            seg = None if no_target else clean_segmentation(ann.get("segmentation"), int(img["height"]),
                                                             int(img["width"]), skip)
            if seg is None and not no_target:
                skip("ref without a usable segmentation (no polygon with >= 3 points, no RLE)",
                     max(1, len(sents)))
                continue
            file_name = str(img["file_name"])
            top = file_name.split("/", 1)[0]
            if top not in on_disk:
                skip(f"image file missing under {self.image_dir}", max(1, len(sents)))
                continue
            rec = {"file": file_name, "h": int(img["height"]), "w": int(img["width"]), "seg": seg,
                   "image_id": img["id"], "ref_id": ref.get("ref_id"), "ann_id": ann_id,
                   "category_id": ref.get("category_id"), "kind": ref.get("kind"), "no_target": no_target}
            n_before = len(items)
            for s in sents:
                text = s.get(self.sentence_field) if isinstance(s, dict) else None
                if not isinstance(text, str):
                    skip(f"sentence without a '{self.sentence_field}' field")
                    continue
                if not has_words(text):
                    skip("empty sentence (no words)")
                    continue
                items.append((len(out_refs), text, s.get("sent_id")))
            if len(items) > n_before:
                out_refs.append(rec)
            elif not sents:
                skip("ref without sentences")
        if not items and skipped:
            raise DatasetError(f"no usable sample in split '{self.split}' of {self.refs_path} "
                               f"(skipped: {skipped}); check the image folder {self.image_dir} "
                               f"(data/README.md#{self.ANCHOR})")
        return {"refs": out_refs, "items": items, "skipped": skipped, "splits": splits}

    # -- API ------------------------------------------------------------------------------------------
    def available_splits(self) -> list[str]:
        return list(self.splits_on_disk)

    def load(self, index: int) -> RawSample:
        ref_idx, text, sent_id = self.items[index]
        r = self.refs[ref_idx]
        path = self.image_dir / r["file"]
        image = self.read_image(path)
        h, w = image.shape[:2]
        if (h, w) != (r["h"], r["w"]):
            raise DatasetError(f"image {path} is {h}x{w} but {self.instances_path} says {r['h']}x{r['w']}; "
                               f"the image or the annotation file is not the official one: re-download")
        mask = np.zeros((h, w), bool) if r["seg"] is None else segmentation_to_mask(r["seg"], h, w)
        meta = {"dataset": self.name, "split": self.split, "image_id": r["image_id"], "ref_id": r["ref_id"],
                "ann_id": r["ann_id"], "sent_id": sent_id, "category_id": r["category_id"],
                "kind": r["kind"], "no_target": r["no_target"], "group": f"{self.name}/{r['image_id']}",
                "sample_id": f"{self.name}/{self.split}/ref{r['ref_id']}/sent{sent_id}", "file": str(path)}
        return RawSample(frames=[image], center=0, mask=mask, sentence=text, meta=meta)

    def sentences(self) -> list[str]:
        return [text for _, text, _ in self.items]

    def group_key(self, index: int) -> str:
        return f"{self.name}/{self.refs[self.items[index][0]]['image_id']}"

    def counts(self) -> dict[str, int]:
        return {"images": len({r["image_id"] for r in self.refs}), "objects": len(self.refs),
                "sentences": len(self.items), "samples": len(self.items)}


class UNCDataset(ReferDataset):
    """UNC = RefCOCO, ``refs(unc).p``: train / val / testA / testB."""

    name, ANCHOR, REFER_DATASET, SPLIT_BY = "unc", "unc", "refcoco", "unc"
    SPLITS = ("train", "val", "testA", "testB")


class UNCPlusDataset(ReferDataset):
    """UNC+ = RefCOCO+, ``refs(unc).p``: train / val / testA / testB."""

    name, ANCHOR, REFER_DATASET, SPLIT_BY = "unc+", "unc", "refcoco+", "unc"
    SPLITS = ("train", "val", "testA", "testB")


class GRefDataset(ReferDataset):
    """G-Ref = RefCOCOg, Google split (the one CMPC uses): train / val."""

    name, ANCHOR, REFER_DATASET, SPLIT_BY = "gref", "gref", "refcocog", "google"
    SPLITS = ("train", "val")


class GRefUMDDataset(ReferDataset):
    """G-Ref, UMD split (no image overlap between splits): train / val / test."""

    name, ANCHOR, REFER_DATASET, SPLIT_BY = "gref_umd", "gref", "refcocog", "umd"
    SPLITS = ("train", "val", "test")


class RefClefDataset(ReferDataset):
    """ReferIt in the refer-API packaging (RLE masks): unc split train / val / testA / testB / testC."""

    name, ANCHOR, REFER_DATASET, SPLIT_BY = "refclef", "refclef", "refclef", "unc"
    IMAGE_DIR = "images/saiapr_tc-12"
    SPLITS = ("train", "val", "testA", "testB", "testC")


class SyntheticImageDataset(ReferDataset):
    """The built-in procedural benchmark (cmpc.data.synthetic), written in refer layout; refs carry ``kind``."""

    name, ANCHOR, REFER_DATASET, SPLIT_BY = "synthetic", "synthetic", "synthetic", "unc"
    IMAGE_DIR = "images/synthetic"

    def shortcut_precision(self) -> dict[str, float]:
        """``{kind: prec@0.5 as a fraction}`` that answers skipping what the kind needs reach with perfect masks, for
        the kinds that have such a shortcut (relation: the location phrase, location: a random look-alike; see
        :func:`cmpc.data.synthetic.shortcut_chance`). Reads ``scenes.json``; no image is decoded."""
        from cmpc.data.synthetic import load_image_scenes, parse_expression, shortcut_chance

        scenes, chances = load_image_scenes(self.root), {}
        for ref_idx, text, _ in self.items:
            ref = self.refs[ref_idx]
            chance = shortcut_chance(scenes[ref["image_id"]], parse_expression(text))
            if chance is not None:
                chances.setdefault(ref["kind"], []).append(chance)
        return {kind: sum(c) / len(c) for kind, c in sorted(chances.items())}
