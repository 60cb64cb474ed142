"""Tiny on-disk datasets in the real formats, for tests (data layer here; the engine tests reuse them).

Each ``make_*_fixture(root)`` writes one dataset under ``root`` and returns the ``dataset`` config overrides
(a plain dict usable as ``cfg.dataset``: ``build_dataset(overrides, split, vocab)``) with a small
``input_size`` so that models run fast. The ground truth drawn by each builder is described by the module-level
constants, so tests can compare loaded masks with what was drawn.

Formats follow docs/reference.md section 3: refer pickles (written the way Python 2 wrote them) + COCO json with
polygons and RLE; ReferIt .mat + query json; A2D .h5 (transposed ``N x W x H`` and the 2-D single-instance case),
videoset.csv, annotation txt with a malformed ``"1 (copy)"`` row and a missed video, mp4 clips written with
OpenCV (``mp4v``); J-HMDB ``part_mask`` .mat and png frames; Refer-YouTube-VOS palette PNGs and meta jsons.
"""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import cv2
import h5py
import numpy as np
import pycocotools.mask as mask_utils
import scipy.io
from PIL import Image

INPUT_SIZE = 32

# ---------------------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------------------


def rect_mask(h: int, w: int, rects) -> np.ndarray:
    """bool mask of the union of ``(y0, y1, x0, x1)`` rectangles (end-exclusive)."""
    m = np.zeros((h, w), bool)
    for y0, y1, x0, x1 in rects:
        m[y0:y1, x0:x1] = True
    return m


def _rect_polygon(y0, y1, x0, x1):
    # COCO rasterisation of this polygon covers rows y0..y1-1 and columns x0..x1-1
    return [float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]


def _image(h, w, seed, grey=False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if grey:
        return rng.integers(0, 255, (h, w), dtype=np.uint8)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _py2_pickle(obj, encoding: str = "latin-1") -> bytes:
    """Protocol-2 pickle as Python 2 writes it: ``str`` values as byte strings (BINSTRING opcodes).

    Text is encoded in ``encoding`` (latin-1, or utf-8 as Python 2 code reading UTF-8 files stored it), so a
    non-ASCII character makes Python 3's default ``pickle.load`` fail with UnicodeDecodeError, exactly like the
    official refs(*.p) files.
    """
    out = bytearray(b"\x80\x02")

    def put(o):
        if o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, float):
            out.extend(b"G" + struct.pack(">d", o))
        elif isinstance(o, str):
            b = o.encode(encoding)
            out.extend((b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b)
        elif isinstance(o, (list, tuple)):
            out.extend(b"]")
            if o:
                out.extend(b"(")
                for x in o:
                    put(x)
                out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}")
            if o:
                out.extend(b"(")
                for k, v in o.items():
                    put(k)
                    put(v)
                out.extend(b"u")
        else:
            raise TypeError(type(o))

    put(obj)
    out.extend(b".")
    return bytes(out)


def _base_overrides(name: str, root: Path, train_split: str, eval_split: str, num_frames: int = 1) -> dict:
    return {"name": name, "root": str(root), "train_split": train_split, "eval_split": eval_split,
            "input_size": INPUT_SIZE, "mean": "caffe_bgr", "max_words": 20, "vocab": None, "glove": None,
            "cache_dir": str(root / "cache"), "num_frames": num_frames}


# ---------------------------------------------------------------------------------------------------------
# refer layout (UNC, UNC+, G-Ref google/umd, refclef)
# ---------------------------------------------------------------------------------------------------------
REFER_LAYOUT = {  # name -> (refer_dataset, split_by, image_dir, third split)
    "unc": ("refcoco", "unc", "images/mscoco/images/train2014", "testA"),
    "unc+": ("refcoco+", "unc", "images/mscoco/images/train2014", "testA"),
    "gref": ("refcocog", "google", "images/mscoco/images/train2014", "val"),
    "gref_umd": ("refcocog", "umd", "images/mscoco/images/train2014", "test"),
    "refclef": ("refclef", "unc", "images/saiapr_tc-12", "testA"),
}
REFER_IMAGES = {1: (30, 40, False), 2: (36, 28, False), 3: (20, 24, True)}  # id -> (h, w, grey)
REFER_OBJECTS = {  # ann_id -> (image_id, rectangles, encoding)
    10: (1, [(4, 12, 5, 20)], "polygon"),
    11: (1, [(15, 25, 2, 9), (18, 28, 30, 38)], "polygon"),  # two polygons
    12: (2, [(6, 30, 4, 14)], "rle"),  # compressed RLE (counts as str, as in refclef json)
    13: (3, [(2, 10, 3, 20)], "rle_raw"),  # uncompressed RLE
    14: (2, [], "degenerate"),  # polygon with 2 points -> ref skipped
}
# refs: (ref_id, ann_id, split key, sentences as (sent, raw)), kind
REFER_REFS = [
    (100, 10, "train", [("man on the left", "Man on the left."), ("left guy", "left guy")], "spatial"),
    (101, 11, "train", [("two blue boxes", "two blue boxes"), ("...", "...")], None),  # 2nd: empty -> skipped
    (102, 12, "val", [("cafe sign", "caf\u00e9 sign")], None),  # latin-1 text in the py2 pickle
    (103, 13, "third", [("grey thing", "grey thing")], None),
    (104, 14, "train", [("bad polygon", "bad polygon")], None),  # degenerate geometry -> skipped
    (105, 999, "train", [("missing annotation", "missing annotation")], None),  # ann not in json -> skipped
]


def refer_expected(ann_id: int) -> np.ndarray:
    image_id, rects, _ = REFER_OBJECTS[ann_id]
    h, w, _ = REFER_IMAGES[image_id]
    return rect_mask(h, w, rects)


def make_refer_fixture(root, name: str = "unc") -> dict:
    """refer-API layout for ``name`` in unc / unc+ / gref / gref_umd / refclef; returns config overrides."""
    root = Path(root)
    refer_dataset, split_by, image_dir, third = REFER_LAYOUT[name]
    ddir = root / refer_dataset
    idir = root / image_dir
    ddir.mkdir(parents=True, exist_ok=True)
    idir.mkdir(parents=True, exist_ok=True)
    images = []
    for iid, (h, w, grey) in REFER_IMAGES.items():
        fname = f"COCO_train2014_{iid:012d}.jpg" if refer_dataset != "refclef" else f"{iid}.jpg"
        Image.fromarray(_image(h, w, iid, grey)).save(idir / fname, quality=95)
        images.append({"id": iid, "file_name": fname, "height": h, "width": w})
    anns = []
    for aid, (iid, rects, enc) in REFER_OBJECTS.items():
        h, w, _ = REFER_IMAGES[iid]
        if enc == "polygon":
            seg = [_rect_polygon(*r) for r in rects]
        elif enc == "rle":
            rle = mask_utils.encode(np.asfortranarray(rect_mask(h, w, rects).astype(np.uint8)))
            seg = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
        elif enc == "rle_raw":
            flat = rect_mask(h, w, rects).astype(np.uint8).flatten(order="F")
            counts, cur, run = [], 0, 0
            for v in flat:
                if v == cur:
                    run += 1
                else:
                    counts.append(run)
                    cur, run = v, 1
            counts.append(run)
            seg = {"size": [h, w], "counts": counts}
        else:
            seg = [[1.0, 1.0, 5.0, 5.0]]
        anns.append({"id": aid, "image_id": iid, "category_id": 1, "segmentation": seg,
                     "bbox": [0, 0, 1, 1], "area": 1.0, "iscrowd": 0})
    (ddir / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing", "supercategory": "x"}]}))
    refs, sid = [], 1000
    for ref_id, ann_id, split, sents, kind in REFER_REFS:
        image_id = REFER_OBJECTS.get(ann_id, (1,))[0]
        s = []
        for sent, raw in sents:
            s.append({"tokens": sent.split(), "raw": raw, "sent_id": sid, "sent": sent})
            sid += 1
        ref = {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": 1,
               "split": third if split == "third" else split, "file_name": "ignored.jpg",
               "sent_ids": [x["sent_id"] for x in s], "sentences": s}
        if kind is not None:
            ref["kind"] = kind
        refs.append(ref)
    (ddir / f"refs({split_by}).p").write_bytes(_py2_pickle(refs))
    return _base_overrides(name, root, "train", "val")


# ---------------------------------------------------------------------------------------------------------
# ReferIt (text_objseg packaging)
# ---------------------------------------------------------------------------------------------------------
REFERIT_IMAGES = {"101": (20, 30), "202": (24, 18)}
REFERIT_REGIONS = {"101_1": [(2, 8, 3, 12)], "101_2": [(10, 18, 15, 28)], "202_1": [(5, 20, 2, 9)]}
REFERIT_QUERIES = {
    "trainval": {"101_1": ["sky on top", "upper part"], "101_2": ["the tree right"],
                 "101_3": ["no mask file"], "bogus": ["malformed key"], "202_1": ["??"]},
    "test": {"202_1": ["person left", "left person."]},
}


def make_referit_fixture(root) -> dict:
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "mask").mkdir(parents=True, exist_ok=True)
    for iid, (h, w) in REFERIT_IMAGES.items():
        Image.fromarray(_image(h, w, int(iid))).save(root / "images" / f"{iid}.jpg", quality=95)
    for region, rects in REFERIT_REGIONS.items():
        h, w = REFERIT_IMAGES[region.split("_")[0]]
        seg = np.where(rect_mask(h, w, rects), 0, 7).astype(np.uint8)  # value 0 = object
        scipy.io.savemat(root / "mask" / f"{region}.mat", {"segimg_t": seg})
    for split, q in REFERIT_QUERIES.items():
        (root / f"referit_query_{split}.json").write_text(json.dumps(q))
    return _base_overrides("referit", root, "trainval", "test")


# ---------------------------------------------------------------------------------------------------------
# A2D Sentences
# ---------------------------------------------------------------------------------------------------------
A2D_SIZE = (24, 32)  # H, W of frames and masks
A2D_N_FRAMES = 20
A2D_VIDEOS = {"vidA": 0, "vidB": 1, "vidC": 0, "vidD": 0}  # vid -> subset (1 = test)
A2D_H5 = {  # (vid, frame) -> {instance id: rectangles}
    ("vidA", 5): {1: [(2, 10, 3, 12)], 2: [(12, 22, 15, 30)]},  # two instances: N x W x H
    ("vidA", 12): {1: [(4, 14, 5, 16)]},  # single instance: W x H
    ("vidA", 15): {2: [(1, 9, 20, 31)]},  # single instance of another id
    ("vidB", 10): {3: [(5, 20, 5, 25)]},
}
A2D_QUERIES = [
    ("vidA", "1", "the man is running"),
    ("vidA", "2", "a dog jumping."),
    ("vidB", "3", "the red ball rolling"),
    ("vidC", "1", "query of a missed video"),
    ("vidD", "1 (copy)", "a malformed row"),
    ("vidA", "7", "instance never annotated"),
]
A2D_EXPECTED = {"train": [("vidA", 1, 5), ("vidA", 1, 12), ("vidA", 2, 5), ("vidA", 2, 15)],
                "test": [("vidB", 3, 10)]}


def a2d_frame_value(frame: int) -> int:
    """Grey level of frame ``frame`` (1-based) in the fixture videos."""
    return 10 * frame


def make_a2d_fixture(root, extract_frames: bool = False) -> dict:
    """A2D layout; ``extract_frames`` also writes ``Release/frames`` PNGs of every frame."""
    root = Path(root)
    rel = root / "Release"
    (rel / "clips320H").mkdir(parents=True, exist_ok=True)
    h, w = A2D_SIZE
    with open(rel / "videoset.csv", "w", newline="") as f:
        wr = csv.writer(f)
        for vid, sub in A2D_VIDEOS.items():
            wr.writerow([vid, 11, 0.0, 1.0, h, w, A2D_N_FRAMES, 3, sub])
        wr.writerow(["bad_row", 1, 2])  # malformed (3 columns)
    for vid in A2D_VIDEOS:
        vw = cv2.VideoWriter(str(rel / "clips320H" / f"{vid}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 24, (w, h))
        if not vw.isOpened():
            raise RuntimeError("OpenCV cannot write mp4v videos here")
        for fr in range(1, A2D_N_FRAMES + 1):
            img = np.full((h, w, 3), a2d_frame_value(fr), np.uint8)
            vw.write(img)
            if extract_frames:
                (rel / "frames" / vid).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(rel / "frames" / vid / f"{fr:05d}.png"), img)
        vw.release()
    ta = root / "text_annotations"
    for (vid, fr), inst in A2D_H5.items():
        d = ta / "a2d_annotation_with_instances" / vid
        d.mkdir(parents=True, exist_ok=True)
        ids = np.array(sorted(inst), dtype=np.float64)  # MATLAB writes doubles
        masks = np.stack([rect_mask(h, w, inst[i]).T for i in sorted(inst)]).astype(np.uint8)  # N x W x H
        with h5py.File(d / f"{fr:05d}.h5", "w") as f:
            f["instance"] = ids
            f["reMask"] = masks[0] if len(ids) == 1 else masks
            f["reBBox"] = np.zeros((4, len(ids)))[:, 0] if len(ids) == 1 else np.zeros((4, len(ids)))
    with open(ta / "a2d_annotation.txt", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["video_id", "instance_id", "query"])
        wr.writerows(A2D_QUERIES)
    (ta / "a2d_missed_videos.txt").write_text("vidC\n")
    out = _base_overrides("a2d", root, "train", "test", num_frames=5)
    out.update(frame_offsets=[-8, -4, 0, 4, 7], frame_stride=4, video_source="auto")
    return out


def a2d_expected(vid: str, inst: int, frame: int) -> np.ndarray:
    return rect_mask(*A2D_SIZE, A2D_H5[(vid, frame)][inst])


# ---------------------------------------------------------------------------------------------------------
# J-HMDB Sentences
# ---------------------------------------------------------------------------------------------------------
JHMDB_SIZE = (20, 26)
JHMDB_VIDEOS = {"v1": ("brush_hair", 8, 6), "v2": ("run", 5, 5)}  # vid -> (action, png frames, mask frames)
JHMDB_QUERIES = [("v1", "woman brushing her hair"), ("v2", "man running"), ("v3", "video that is missing")]


def jhmdb_rect(t: int):
    """Rectangle of the puppet mask in frame ``t`` (1-based)."""
    return [(2 + t, 10 + t, 3, 12 + t)]


def make_jhmdb_fixture(root) -> dict:
    root = Path(root)
    h, w = JHMDB_SIZE
    for vid, (action, n_png, n_mask) in JHMDB_VIDEOS.items():
        d = root / "Rename_Images" / action / vid
        d.mkdir(parents=True, exist_ok=True)
        for t in range(1, n_png + 1):
            Image.fromarray(np.full((h, w, 3), 20 * t, np.uint8)).save(d / f"{t:05d}.png")
        md = root / "puppet_mask" / action / vid
        md.mkdir(parents=True, exist_ok=True)
        pm = np.stack([rect_mask(h, w, jhmdb_rect(t)) for t in range(1, n_mask + 1)], axis=2).astype(np.uint8)
        scipy.io.savemat(md / "puppet_mask.mat", {"part_mask": pm})
    with open(root / "jhmdb_annotation.txt", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["video_id", "query"])
        wr.writerows(JHMDB_QUERIES)
    out = _base_overrides("jhmdb", root, "test", "test", num_frames=5)
    out.update(frame_offsets=[-8, -4, 0, 4, 7], frames_per_video=3, sample_seed=42)
    return out


# ---------------------------------------------------------------------------------------------------------
# Refer-YouTube-VOS
# ---------------------------------------------------------------------------------------------------------
YTVOS_SIZE = (24, 32)
YTVOS_FRAMES = ["00000", "00005", "00010", "00015", "00020"]
YTVOS_TRAIN = {  # vid -> {obj_id: {frame index: rectangles}} (absent index = object not in frame)
    "t1": {1: {0: [(1, 8, 1, 9)], 1: [(2, 9, 2, 10)], 2: [(3, 10, 3, 11)], 3: [(4, 11, 4, 12)],
               4: [(5, 12, 5, 13)]},
           2: {2: [(14, 22, 18, 30)], 3: [(14, 22, 17, 29)]}},
    "t2": {1: {0: [(10, 20, 10, 20)], 4: [(12, 22, 12, 22)]}},
}
YTVOS_TRAIN_EXPRESSIONS = {
    "t1": {"0": ("a cat walking on the left", 1), "1": ("the dog appearing later", 2)},
    "t2": {"0": ("a ball", 1), "1": ("!!", 1), "2": ("an object that never appears", 3)},
}
YTVOS_VALID = ["v1", "v2"]
YTVOS_TEST = ["v9"]  # listed in valid's meta too, removed from 'valid'
YTVOS_KINDS = {"t1": {"0": "spatial", "1": "motion"}}


def ytvos_frame_value(index: int) -> int:
    return 30 + 40 * index


def _palette_png(path: Path, ids: np.ndarray) -> None:
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    pal = [0, 0, 0, 236, 95, 103, 249, 145, 87, 250, 200, 99] + [0] * (256 * 3 - 12)
    im.putpalette(pal)
    im.save(path)


def make_ytvos_fixture(root, write_meta_json: bool = False, valid_annotations: bool = False) -> dict:
    """Refer-YouTube-VOS layout (train with annotations; valid without unless ``valid_annotations``)."""
    root = Path(root)
    h, w = YTVOS_SIZE

    def write_video(split, vid, objects):
        jd = root / split / "JPEGImages" / vid
        jd.mkdir(parents=True, exist_ok=True)
        for i, fr in enumerate(YTVOS_FRAMES):
            Image.fromarray(np.full((h, w, 3), ytvos_frame_value(i), np.uint8)).save(jd / f"{fr}.jpg", quality=95)
        if objects is None:
            return
        ad = root / split / "Annotations" / vid
        ad.mkdir(parents=True, exist_ok=True)
        for i, fr in enumerate(YTVOS_FRAMES):
            ids = np.zeros((h, w), np.uint8)
            for obj, per_frame in objects.items():
                if i in per_frame:
                    ids[rect_mask(h, w, per_frame[i])] = obj
            _palette_png(ad / f"{fr}.png", ids)

    for vid, objs in YTVOS_TRAIN.items():
        write_video("train", vid, objs)
    for vid in YTVOS_VALID + YTVOS_TEST:
        write_video("valid", vid, YTVOS_TRAIN["t1"] if valid_annotations else None)

    def meta(exprs_of):
        return {"videos": {vid: {"expressions": {eid: {"exp": e, "obj_id": str(o)} for eid, (e, o) in ex.items()},
                                 "frames": list(YTVOS_FRAMES)} for vid, ex in exprs_of.items()}}

    md = root / "meta_expressions"
    for split in ("train", "valid", "test"):
        (md / split).mkdir(parents=True, exist_ok=True)
    (md / "train" / "meta_expressions.json").write_text(json.dumps(meta(YTVOS_TRAIN_EXPRESSIONS)))
    val = {vid: {"0": (f"the cat in {vid}", 1), "1": (f"the dog in {vid}", 2)} for vid in YTVOS_VALID + YTVOS_TEST}
    (md / "valid" / "meta_expressions.json").write_text(json.dumps(meta(val)))
    (md / "test" / "meta_expressions.json").write_text(json.dumps(meta({v: val[v] for v in YTVOS_TEST})))
    (root / "kinds.json").write_text(json.dumps(YTVOS_KINDS))
    if write_meta_json:
        videos = {vid: {"objects": {str(o): {"category": "x", "frames": [YTVOS_FRAMES[i] for i in sorted(pf)]}
                                    for o, pf in objs.items()}} for vid, objs in YTVOS_TRAIN.items()}
        (root / "train" / "meta.json").write_text(json.dumps({"videos": videos}))
    out = _base_overrides("ytvos", root, "train", "valid", num_frames=3)
    out.update(frame_offsets=None, frame_stride=1, frames_per_expression=None)
    return out


def ytvos_expected(vid: str, obj: int, index: int) -> np.ndarray:
    return rect_mask(*YTVOS_SIZE, YTVOS_TRAIN[vid][obj].get(index, []))
