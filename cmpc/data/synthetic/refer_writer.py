"""The image benchmark in the refer-API layout (``instances.json``, ``refs(unc).p``) plus ``kinds.json`` and
``scenes.json``: :func:`generate_image_benchmark`, :func:`ensure_image_benchmark`.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from .output import (
    GENERATOR_VERSION,
    IMAGE_DEFAULTS,
    STAMP,
    _atomic_generate,
    _bar,
    _dump_json,
    _ensure,
    _jpeg_bytes,
    _normalise,
)
from .samples import generate_image_sample
from .scene import RELATION_GAP
from .sentences import clean_sentence
from .vocabulary import SHAPES


def _write_images(out, p, progress):
    S = p["image_size"]
    ddir, idir = out / "synthetic", out / "images" / "synthetic"
    ddir.mkdir(parents=True)
    idir.mkdir(parents=True)
    images, anns, refs, kinds, scenes = [], [], [], {}, {}
    img_id = ann_id = ref_id = sent_id = 0
    gen = dict(image_size=S, kinds=p["kinds"], min_objects=p["min_objects"], max_objects=p["max_objects"],
               expressions_per_image=tuple(p["expressions_per_image"]), negative=p["negative"],
               relation_gap=tuple(p["relation_gap"]))
    for split, count in p["splits"].items():
        for index in _bar(range(count), count, f"synthetic images {split}", progress):
            s = generate_image_sample(p["seed"], split, index, **gen)
            img_id += 1
            file_name = f"synthetic_{split}_{index:06d}.jpg"
            (idir / file_name).write_bytes(_jpeg_bytes(s.image))
            images.append({"id": img_id, "file_name": file_name, "height": S, "width": S})
            ids, sobjs = [], []
            for o, m, poly in zip(s.scene.objects, s.masks, s.polygons):
                ann_id += 1
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                if p["segmentation"] == "rle":
                    seg = {"size": [S, S], "counts": rle["counts"].decode("ascii")}
                else:
                    seg = [poly]
                bbox = [float(v) for v in mask_utils.toBbox(rle)]
                anns.append({"id": ann_id, "image_id": img_id, "category_id": SHAPES.index(o.shape) + 1,
                             "segmentation": seg, "bbox": bbox, "area": float(m.sum()), "iscrowd": 0})
                ids.append(ann_id)
                sobjs.append({"ann_id": ann_id, **o.to_json()})
            for r in s.refs:
                sents = []
                for raw in r.sentences:
                    sent = clean_sentence(raw)
                    sents.append({"tokens": sent.split(), "raw": raw, "sent_id": sent_id, "sent": sent})
                    kinds[str(sent_id)] = r.kind
                    sent_id += 1
                refs.append({"ref_id": ref_id, "ann_id": ids[r.target] if r.target is not None else -1,
                             "image_id": img_id, "category_id": SHAPES.index(r.expression.target.shape) + 1,
                             "split": split, "file_name": file_name,
                             "sent_ids": [x["sent_id"] for x in sents], "sentences": sents, "kind": r.kind})
                ref_id += 1
            scenes[str(img_id)] = {"split": split, "file_name": file_name, "size": S, "objects": sobjs}
    cats = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    info = {"description": "cmpc synthetic referring segmentation benchmark", "version": GENERATOR_VERSION}
    _dump_json({"info": info,
                "images": images, "annotations": anns, "categories": cats}, ddir / "instances.json")
    with open(ddir / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    _dump_json(kinds, ddir / "kinds.json")
    _dump_json(scenes, ddir / "scenes.json")


def generate_image_benchmark(root, *, seed=0, image_size=128, splits=None, kinds=None, min_objects=2,
                             max_objects=6, expressions_per_image=(1, 3), negative=0.0, relation_gap=RELATION_GAP,
                             segmentation="polygon", progress=True) -> Path:
    """Write the image benchmark in the refer layout under ``root`` (replacing an older one); returns ``root``.

    ``splits`` (default ``{"train": 2000, "val": 200, "test": 400}``) counts images; ``kinds`` (default the four
    image kinds, weight 1 each) weights the kind of each image's expressions; ``negative`` is the probability
    that an image also gets one expression about an absent object (``ann_id`` -1, empty target);
    ``relation_gap`` (fractions of the side) is the range of the extra distance between a left/right/above/below
    target and its landmark.
    Files: ``root/synthetic/{instances.json, refs(unc).p, kinds.json, scenes.json, COMPLETE.json}`` and
    ``root/images/synthetic/*.jpg``.
    """
    p = _normalise(dict(seed=seed, image_size=image_size, splits=splits, kinds=kinds, min_objects=min_objects,
                        max_objects=max_objects, expressions_per_image=expressions_per_image, negative=negative,
                        relation_gap=relation_gap, segmentation=segmentation), IMAGE_DEFAULTS, video=False)
    return _atomic_generate(root, Path("synthetic") / STAMP, p, _write_images, progress)


def ensure_image_benchmark(root, **params) -> Path:
    """Return ``root`` if it holds a complete image benchmark made with these params, else (re)generate it."""
    return _ensure(root, params, IMAGE_DEFAULTS, False, Path("synthetic") / STAMP, generate_image_benchmark)
