"""The video benchmark in the Refer-YouTube-VOS layout (JPEG frames, palette PNG annotations, ``meta.json``,
``meta_expressions.json``) plus ``kinds.json`` and ``scenes.json``: :func:`generate_video_benchmark`,
:func:`ensure_video_benchmark`.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from .output import STAMP, VIDEO_DEFAULTS, _atomic_generate, _bar, _dump_json, _ensure, _jpeg_bytes, _normalise
from .samples import generate_video_sample
from .scene import RELATION_GAP
from .sentences import clean_sentence

FRAME_STEP = 5


def _palette():
    pal = [0, 0, 0]
    for i in range(1, 256):  # PASCAL VOC style colour map
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


_PNG_PALETTE = _palette()


def _png_bytes(lab):
    im = Image.frombytes("P", (lab.shape[1], lab.shape[0]), np.ascontiguousarray(lab).tobytes())
    im.putpalette(_PNG_PALETTE)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _write_videos(out, p, progress):
    K = p["num_frames"]
    frames = [f"{FRAME_STEP * k:05d}" for k in range(K)]
    kinds, scenes = {}, {}
    gen = dict(image_size=p["image_size"], num_frames=K, kinds=p["kinds"], min_objects=p["min_objects"],
               max_objects=p["max_objects"], expressions_per_video=tuple(p["expressions_per_video"]),
               negative=p["negative"], relation_gap=tuple(p["relation_gap"]))
    for split, count in p["splits"].items():
        jdir, adir, edir = out / split / "JPEGImages", out / split / "Annotations", out / "meta_expressions" / split
        for d in (jdir, adir, edir):
            d.mkdir(parents=True)
        meta, mexp = {}, {}
        for index in _bar(range(count), count, f"synthetic videos {split}", progress):
            s = generate_video_sample(p["seed"], split, index, **gen)
            vid = f"{split}_{index:05d}"
            (jdir / vid).mkdir()
            (adir / vid).mkdir()
            for name, fr, lab in zip(frames, s.frames, s.labels):
                (jdir / vid / f"{name}.jpg").write_bytes(_jpeg_bytes(fr))
                (adir / vid / f"{name}.png").write_bytes(_png_bytes(lab))
            meta[vid] = {"objects": {str(i + 1): {"category": o.shape, "frames": list(frames)}
                                     for i, o in enumerate(s.scene.objects)}}
            exps, vk = {}, {}
            for r in s.refs:
                for raw in r.sentences:
                    eid = str(len(exps))
                    oid = str(r.target + 1) if r.target is not None else "-1"
                    exps[eid] = {"exp": clean_sentence(raw), "obj_id": oid}
                    vk[eid] = r.kind
            mexp[vid] = {"expressions": exps, "frames": list(frames)}
            kinds[vid] = vk
            scenes[vid] = {"split": split, "size": p["image_size"],
                           "objects": [{"obj_id": str(i + 1), **o.to_json()} for i, o in enumerate(s.scene.objects)]}
        _dump_json({"videos": meta}, out / split / "meta.json")
        _dump_json({"videos": mexp}, edir / "meta_expressions.json")
    _dump_json(kinds, out / "kinds.json")
    _dump_json(scenes, out / "scenes.json")


def generate_video_benchmark(root, *, seed=0, image_size=128, num_frames=8, splits=None, kinds=None, min_objects=2,
                             max_objects=5, expressions_per_video=(1, 3), negative=0.0, relation_gap=RELATION_GAP,
                             progress=True) -> Path:
    """Write the video benchmark in the Refer-YouTube-VOS layout under ``root``; returns ``root``.

    ``splits`` (default ``{"train": 600, "valid": 150}``) counts clips of ``num_frames`` frames named
    "00000", "00005", ...; every frame has a palette PNG annotation; the centre frame (index K//2) is the one to
    train on. Side files ``root/kinds.json`` ({vid: {exp_id: kind}}), ``root/scenes.json``, ``root/COMPLETE.json``.
    """
    p = _normalise(dict(seed=seed, image_size=image_size, num_frames=num_frames, splits=splits, kinds=kinds,
                        min_objects=min_objects, max_objects=max_objects, expressions_per_video=expressions_per_video,
                        negative=negative, relation_gap=relation_gap), VIDEO_DEFAULTS, video=True)
    return _atomic_generate(root, Path(STAMP), p, _write_videos, progress)


def ensure_video_benchmark(root, **params) -> Path:
    """Return ``root`` if it holds a complete video benchmark made with these params, else (re)generate it."""
    return _ensure(root, params, VIDEO_DEFAULTS, True, Path(STAMP), generate_video_benchmark)
