"""Referring-image datasets in the refer-API layout: UNC, UNC+, G-Ref (google, umd), refclef, synthetic.

Reads the files of lichengunc/refer directly (docs/reference.md section 3a) and follows CMPC's data selection
(section 1.5):

* ``<root>/<refer_dataset>/refs(<split_by>).p``: pickled list of refs (Python-2 pickles are loaded with
  ``encoding='latin1'`` when the default fails); ``<root>/<refer_dataset>/instances.json``: COCO-style images and
  annotations; images in ``<root>/<image_dir>/<file_name>``.
* refs selected by **exact** split match ``ref['split'] == split`` (the refer API's ``getRefIds`` would match
  ``'test'`` against ``testA``/``testB`` too; CMPC does not).
* every sentence of a selected ref is one sample; the text is ``sentence['sent']`` (CMPC, CRIS) or
  ``sentence['raw']`` (LAVT, ReLA) -- option ``sentence_field``.
* mask = ``pycocotools.mask.frPyObjects(segmentation, h, w)`` -> ``decode`` -> any over polygons; polygons
  (refcoco*) and RLE (refclef; compressed or not) are both accepted. Polygons with fewer than 3 points are
  dropped (pycocotools would read a 4-number list as a box); a ref left without geometry is skipped.
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

from cmpc.data.base import RawSample, ReferringDataset, read_image, require_dir, require_file
from cmpc.data.text import has_words
from cmpc.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)


def load_pickle(path: str | os.PathLike):
    """``pickle.load`` with a ``latin1`` fallback for Python-2 pickles."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except UnicodeDecodeError:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:
        raise DatasetError(f"cannot read {path} ({type(e).__name__}: {e}); the file is corrupt: "
                           f"re-download it") from e


def load_json(path: str | os.PathLike):
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot parse {path} ({e}); the file is corrupt: re-download it") from e


def clean_segmentation(seg):
    """Polygons with >= 3 points, or an RLE dict; ``None`` when nothing usable is left."""
    if isinstance(seg, dict):
        if "counts" in seg and "size" in seg:
            return seg
        return None
    if isinstance(seg, (list, tuple)):
        if seg and isinstance(seg[0], dict):  # list of RLEs
            rles = [r for r in seg if isinstance(r, dict) and "counts" in r and "size" in r]
            return rles or None
        polys = []
        for p in seg:
            if isinstance(p, (list, tuple)) and len(p) >= 6 and len(p) % 2 == 0:
                try:
                    polys.append([float(v) for v in p])
                except (TypeError, ValueError):
                    continue
        return polys or None
    return None


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
            seg = None if no_target else clean_segmentation(ann.get("segmentation"))
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
        image = read_image(path)
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
