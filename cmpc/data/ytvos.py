"""Refer-YouTube-VOS (and the built-in synthetic video set written in its layout) -- docs/reference.md section 3e.

Files under ``root``:

* ``<split>/JPEGImages/<vid>/<frame>.jpg`` and, where released, ``<split>/Annotations/<vid>/<frame>.png``:
  palette PNGs whose pixel value is the object id (0 = background); the object's mask is
  ``np.array(Image.open(png)) == int(obj_id)``;
* ``meta_expressions/<split>/meta_expressions.json``:
  ``{"videos": {vid: {"expressions": {exp_id: {"exp": str, "obj_id": str}}, "frames": [name, ...]}}}``; a split
  without ``Annotations`` (the real ``valid``, evaluated by the server) lists ``{"exp": str}`` only: its
  expressions are counted as the server-evaluation set, not as malformed;
  ``valid`` = the valid json minus the videos of ``meta_expressions/test/meta_expressions.json`` (the valid json
  lists valid + test; without a test json every video is kept);
* optional ``<split>/meta.json`` (``objects.<obj_id>.frames`` = frames where the object appears) -- used to find
  training frames without opening every PNG; without it the PNGs are read once (index cached);
* optional ``kinds.json`` ``{vid: {exp_id: kind}}`` (the synthetic set writes it): the expression kind in meta.

Training samples: (expression, annotated frame where the object is present), optionally subsampled to
``frames_per_expression`` evenly spaced frames (the centres of equal parts: 1 gives the middle frame, the one
the synthetic video set is meant to be trained on). An expression with a negative ``obj_id`` (synthetic
"negative" expressions) refers to nothing: every annotated frame is a sample with an empty mask and
``meta['no_target']`` True. Clips are K listed frames at ``frame_offsets`` (default: K
consecutive listed frames centred on the annotated one, step ``frame_stride``), clamped at the ends.

Full-video evaluation: :meth:`YTVOSDataset.iter_expressions` yields every expression with its frame names,
``clip_at``/``sample_at`` for each frame, and ground truth where the annotation folder exists (real ``valid`` has
none: evaluate through the server with :func:`write_submission`, which writes
``Annotations/<vid>/<exp_id>/<frame>.png`` (0/255, original size) into a zip).
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image

from cmpc.data.base import (
    RawSample,
    ReferringDataset,
    Unreadable,
    clip_indices,
    read_image,
    require_dir,
    require_file,
    resolve_offsets,
)
from cmpc.data.refer import load_json
from cmpc.data.text import has_words
from cmpc.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)


def read_palette_png(path) -> np.ndarray:
    """Object-id map (``H x W`` integers) of a palette / grey annotation PNG."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"missing annotation {p}; re-extract the Refer-YouTube-VOS annotations "
                           f"(data/README.md#ytvos)")
    try:
        with Image.open(p) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise DatasetError(f"annotation {p} is a {im.mode} image, not a palette PNG of object ids; use "
                                   f"the official Annotations (data/README.md#ytvos)")
            return np.asarray(im).copy()
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"cannot read annotation {p} ({type(e).__name__}: {e}); re-extract it") from e


@dataclass
class VideoExpression:
    """One expression of a video, for full-video evaluation (see :meth:`YTVOSDataset.iter_expressions`)."""

    video_id: str
    exp_id: str
    sentence: str
    obj_id: str | None  # None in the server-evaluation split (real `valid` lists only the text)
    frames: list  # frame names, in order
    kind: Any
    has_gt: bool
    split: str
    dataset: "YTVOSDataset"

    def clip_at(self, frame_index: int) -> tuple[list[np.ndarray], int]:
        """K RGB frames centred on ``frames[frame_index]`` (clamped) and the centre's index in the clip."""
        return self.dataset.clip_at(self.video_id, frame_index, split=self.split, frames=self.frames)

    def gt_mask(self, frame_index: int) -> np.ndarray | None:
        if not self.has_gt:
            return None
        png = self.dataset.split_dir(self.split) / "Annotations" / self.video_id / f"{self.frames[frame_index]}.png"
        return read_palette_png(png) == int(self.obj_id)

    def gt_masks(self) -> list[np.ndarray] | None:
        """Per-frame bool masks at original size, or None where the split has no annotations."""
        if not self.has_gt:
            return None
        return [self.gt_mask(i) for i in range(len(self.frames))]

    def sample_at(self, frame_index: int) -> dict:
        """Model sample (``clip``, ``words``, ``target``, ``gt``, ``meta``) for one frame of the expression."""
        frames, center = self.clip_at(frame_index)
        meta = {"dataset": self.dataset.name, "split": self.split, "video_id": self.video_id,
                "exp_id": self.exp_id, "obj_id": self.obj_id, "frame": self.frames[frame_index],
                "frame_index": frame_index, "kind": self.kind,
                "no_target": self.obj_id is not None and int(self.obj_id) < 0,
                "group": f"{self.dataset.name}/{self.video_id}/{self.frames[frame_index]}",
                "sample_id": f"{self.dataset.name}/{self.split}/{self.video_id}/{self.exp_id}/"
                             f"{self.frames[frame_index]}"}
        raw = RawSample(frames=frames, center=center, mask=self.gt_mask(frame_index), sentence=self.sentence,
                        meta=meta)
        return self.dataset.to_model_sample(raw)


class YTVOSDataset(ReferringDataset):
    name = "ytvos"
    ANCHOR = "ytvos"
    is_video = True
    SPLITS = ("train", "valid")

    def __init__(self, root, split, vocab=None, *, num_frames: int = 5, frame_offsets=None, frame_stride: int = 1,
                 frames_per_expression: int | None = None, kinds_file: str | None = "kinds.json", **common):
        super().__init__(root, split, vocab, num_frames=num_frames, **common)
        self.offsets = resolve_offsets(num_frames, None if frame_offsets is None else list(frame_offsets),
                                       frame_stride)
        self.center = self.offsets.index(0)
        if frames_per_expression is not None and int(frames_per_expression) < 1:
            raise ConfigError(f"dataset.frames_per_expression={frames_per_expression} must be >= 1 or null")
        self.frames_per_expression = None if frames_per_expression is None else int(frames_per_expression)
        self.kinds_path = self.root / kinds_file if kinds_file else None
        self._kinds = None
        self._metas: dict[str, dict] = {}
        meta_path = self.meta_path(self.split)
        require_file(meta_path, f"Refer-YouTube-VOS meta_expressions for split '{self.split}'", self.ANCHOR)
        require_dir(self.split_dir(self.split) / "JPEGImages", f"Refer-YouTube-VOS {self.split} JPEGImages",
                    self.ANCHOR)
        sources = [meta_path, self.meta_path("test"), self.split_dir(self.split) / "meta.json",
                   self.split_dir(self.split) / "Annotations"]
        if self.kinds_path is not None:
            sources.append(self.kinds_path)
        index = self.cached_index(self._build_index, sources, {"fpe": self.frames_per_expression})
        self.expressions = index["expressions"]
        self.has_gt = index["has_gt"]
        self._metas[self.split] = {"videos": index["videos"], "expressions": index["expressions"]}
        self.use_index(index)
        if not self.has_gt:
            log.warning("%s/%s has no Annotations folder: no training/IoU samples; use iter_expressions() and "
                        "write_submission() for server evaluation", self.name, self.split)

    # -- paths / meta ---------------------------------------------------------------------------------
    def split_dir(self, split: str) -> Path:
        return self.root / split

    def meta_path(self, split: str) -> Path:
        return self.root / "meta_expressions" / split / "meta_expressions.json"

    def kinds(self) -> dict:
        if self._kinds is None:
            self._kinds = {}
            if self.kinds_path is not None and self.kinds_path.is_file():
                data = load_json(self.kinds_path)
                if isinstance(data, dict):
                    self._kinds = data
        return self._kinds

    def read_meta(self, split: str, skip=None) -> tuple[dict, list[dict]]:
        """``(videos {vid: frames}, expressions [dict])`` of ``split`` (valid minus test, see module doc)."""
        if split in self._metas and skip is None:
            m = self._metas[split]
            return m["videos"], m["expressions"]
        skip = skip or (lambda reason, n=1: None)
        path = require_file(self.meta_path(split), f"Refer-YouTube-VOS meta_expressions for split '{split}'",
                            self.ANCHOR)
        data = load_json(path)
        videos = data.get("videos") if isinstance(data, dict) else None
        if not isinstance(videos, dict):
            raise DatasetError(f"{path} has no 'videos' object; re-download meta_expressions "
                               f"(data/README.md#ytvos)")
        drop = set()
        if split == "valid" and self.meta_path("test").is_file():
            test = load_json(self.meta_path("test"))
            drop = set((test.get("videos") or {}) if isinstance(test, dict) else {})
        kinds = self.kinds()
        server_only = not (self.split_dir(split) / "Annotations").is_dir()  # real `valid`: no obj_id, no masks
        out_videos, exprs = {}, []
        for vid in sorted(videos):
            if vid in drop:
                continue
            v = videos[vid]
            frames = v.get("frames") if isinstance(v, dict) else None
            ex = v.get("expressions") if isinstance(v, dict) else None
            if not isinstance(frames, list) or not frames or not isinstance(ex, dict):
                skip("malformed video entry (no frames or expressions)", len(ex) if isinstance(ex, dict) else 1)
                continue
            frames = [str(f) for f in frames]
            out_videos[vid] = frames
            for eid in sorted(ex, key=lambda k: (len(str(k)), str(k))):
                e = ex[eid]
                if not isinstance(e, dict) or not isinstance(e.get("exp"), str):
                    skip("malformed expression (no 'exp' text)")
                    continue
                if "obj_id" not in e and not server_only:
                    skip("malformed expression (no 'obj_id' in a split with annotations)")
                    continue
                try:
                    obj = None if "obj_id" not in e else int(e["obj_id"])
                except (TypeError, ValueError):
                    skip("malformed expression (obj_id is not an integer)")
                    continue
                if not has_words(e["exp"]):
                    skip("empty expression (no words)")
                    continue
                kind = (kinds.get(vid) or {}).get(str(eid)) if isinstance(kinds.get(vid), dict) else None
                exprs.append({"video_id": vid, "exp_id": str(eid), "sentence": e["exp"],
                              "obj_id": None if obj is None else str(e["obj_id"]), "kind": kind,
                              "no_target": obj is not None and obj < 0})
        self._metas[split] = {"videos": out_videos, "expressions": exprs}
        return out_videos, exprs

    # -- index ----------------------------------------------------------------------------------------
    def _build_index(self) -> dict:
        skipped: dict[str, int] = {}

        def skip(reason, n=1):
            skipped[reason] = skipped.get(reason, 0) + n

        videos, exprs = self.read_meta(self.split, skip)
        ann_dir = self.split_dir(self.split) / "Annotations"
        has_gt = ann_dir.is_dir()
        items = []
        if has_gt:
            obj_meta = None
            mp = self.split_dir(self.split) / "meta.json"
            if mp.is_file():
                m = load_json(mp)
                obj_meta = (m.get("videos") or {}) if isinstance(m, dict) else {}
            present_cache: dict[str, dict[str, set]] = {}
            png_cache: dict[str, set] = {}

            def annotated(vid: str) -> set:
                if vid not in png_cache:
                    d = ann_dir / vid
                    png_cache[vid] = {n[:-4] for n in os.listdir(d) if n.endswith(".png")} if d.is_dir() else set()
                return png_cache[vid]

            def present_frames(vid: str, obj: str, frames: list[str], no_target: bool) -> tuple[list[int], int]:
                """Positions of the listed frames where the object is annotated, and how many of the frames that
                may hold it (per meta.json, else all) have no mask PNG."""
                pngs = annotated(vid)
                maybe = list(range(len(frames)))
                known = obj_meta is not None and vid in obj_meta
                if known and not no_target:
                    objs = obj_meta[vid].get("objects") or {}
                    on = set(map(str, (objs.get(obj) or {}).get("frames") or []))
                    maybe = [i for i in maybe if frames[i] in on]
                missing = sum(frames[i] not in pngs for i in maybe)
                maybe = [i for i in maybe if frames[i] in pngs]
                if known or no_target:  # meta.json says where; a negative obj_id: every annotated frame, empty mask
                    return maybe, missing
                if vid not in present_cache:
                    d = ann_dir / vid
                    present_cache[vid] = {f: {str(int(x)) for x in np.unique(read_palette_png(d / f"{f}.png")) if x}
                                          for f in frames if f in pngs}
                return [i for i in maybe if obj in present_cache[vid].get(frames[i], ())], missing

            for k, e in enumerate(exprs):
                frames = videos[e["video_id"]]
                pos, missing = present_frames(e["video_id"], e["obj_id"], frames, e["no_target"])
                if missing:  # listed (and, per meta.json, showing the object) but its annotation file is gone
                    skip("annotated frame without its mask PNG (Annotations/<video>/<frame>.png)", missing)
                if not pos:
                    skip("expression whose object is in no annotated frame")
                    continue
                k_fr = self.frames_per_expression
                if k_fr is not None and len(pos) > k_fr:  # centres of k equal parts (k=1: the middle frame)
                    pos = [pos[int((j + 0.5) * len(pos) / k_fr)] for j in range(k_fr)]
                items.extend((k, p) for p in pos)
        return {"expressions": exprs, "videos": videos, "items": items, "skipped": skipped, "has_gt": has_gt}

    # -- frames ---------------------------------------------------------------------------------------
    def clip_at(self, video_id: str, frame_index: int, split: str | None = None,
                frames: list | None = None) -> tuple[list[np.ndarray], int]:
        """K RGB frames of ``video_id`` centred on its ``frame_index``-th listed frame (clamped at the ends)."""
        split = split or self.split
        if frames is None:
            videos, _ = self.read_meta(split)
            if video_id not in videos:
                raise DatasetError(f"video {video_id} is not in {self.meta_path(split)}")
            frames = videos[video_id]
        idx = clip_indices(int(frame_index), len(frames), self.offsets)
        d = self.split_dir(split) / "JPEGImages" / video_id
        return [self.read_image(d / f"{frames[i]}.jpg") for i in idx], self.center

    # -- API ------------------------------------------------------------------------------------------
    def load(self, index: int) -> RawSample:
        k, pos = self.items[index]
        e = self.expressions[k]
        ex = VideoExpression(e["video_id"], e["exp_id"], e["sentence"], e["obj_id"],
                             self.read_meta(self.split)[0][e["video_id"]], e["kind"], True, self.split, self)
        frames, center = ex.clip_at(pos)
        meta = {"dataset": self.name, "split": self.split, "video_id": e["video_id"], "exp_id": e["exp_id"],
                "obj_id": e["obj_id"], "frame": ex.frames[pos], "frame_index": pos, "kind": e["kind"],
                "no_target": e["no_target"],
                "group": f"{self.name}/{e['video_id']}/{ex.frames[pos]}",
                "sample_id": f"{self.name}/{self.split}/{e['video_id']}/{e['exp_id']}/{ex.frames[pos]}"}
        return RawSample(frames=frames, center=center, mask=ex.gt_mask(pos), sentence=e["sentence"], meta=meta)

    def iter_expressions(self, split: str | None = None) -> Iterator[VideoExpression]:
        """Every expression of ``split`` (default: this dataset's split) for full-video evaluation."""
        split = split or self.split
        videos, exprs = self.read_meta(split)
        has_gt = (self.split_dir(split) / "Annotations").is_dir()
        for e in exprs:
            has = has_gt and (self.split_dir(split) / "Annotations" / e["video_id"]).is_dir()
            yield VideoExpression(e["video_id"], e["exp_id"], e["sentence"], e["obj_id"], videos[e["video_id"]],
                                  e["kind"], has, split, self)

    def available_splits(self) -> list[str]:
        return [s for s in ("train", "valid", "test") if self.meta_path(s).is_file()]

    def check_files(self, progress=lambda items, total: items) -> list:
        """Read every listed frame (JPEG) and annotation PNG of the split's videos once; the unreadable ones."""
        videos, _ = self.read_meta(self.split)
        ann = self.split_dir(self.split) / "Annotations"
        jobs = [(vid, f) for vid, frames in videos.items() for f in frames]
        bad = []
        for vid, f in progress(jobs, total=len(jobs)):
            png = ann / vid / f"{f}.png"
            try:
                read_image(self.split_dir(self.split) / "JPEGImages" / vid / f"{f}.jpg")
                if png.is_file():
                    read_palette_png(png)
            except DatasetError as e:
                bad.append(Unreadable(f"{self.name}/{self.split}/{vid}/{f}", str(e)))
        return bad

    def sentences(self) -> list[str]:
        return [e["sentence"] for e in self.expressions]

    def counts(self) -> dict[str, int]:
        if not self.has_gt:  # the server-evaluation set (real `valid`): expressions without public masks
            return {"videos": len({e["video_id"] for e in self.expressions}),
                    "expressions for server evaluation": len(self.expressions), "samples": 0}
        return {"videos": len({e["video_id"] for e in self.expressions}),
                "objects": len({(e["video_id"], e["obj_id"]) for e in self.expressions}),
                "sentences": len(self.expressions), "samples": len(self.items)}


class SyntheticVideoDataset(YTVOSDataset):
    """The built-in procedural video benchmark (cmpc.data.synthetic), Refer-YouTube-VOS layout + kinds.json."""

    name = "synthetic_video"
    ANCHOR = "synthetic"


# -------------------------------------------------------------------------------------------------
# submission
# -------------------------------------------------------------------------------------------------
class SubmissionWriter:
    """Stream ``Annotations/<vid>/<exp_id>/<frame>.png`` (0/255, original size) into a zip, atomically.

    >>> with SubmissionWriter("out.zip") as w:  # doctest: +SKIP
    ...     w.add("vid", "0", "00000", mask)
    """

    def __init__(self, out_zip: str | os.PathLike):
        self.path = Path(out_zip)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED)
        self.names: set[tuple[str, str, str]] = set()

    def add(self, video_id: str, exp_id: str, frame: str, mask) -> None:
        m = np.asarray(mask)
        if m.ndim != 2:
            raise ValueError(f"mask of {video_id}/{exp_id}/{frame} must be H x W, got {m.shape}")
        buf = io.BytesIO()
        Image.fromarray(np.where(m > 0, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG")
        self.zip.writestr(f"Annotations/{video_id}/{exp_id}/{frame}.png", buf.getvalue())
        self.names.add((str(video_id), str(exp_id), str(frame)))

    def close(self, expected: Iterable[VideoExpression] | None = None) -> int:
        self.zip.close()
        if expected is not None:
            missing = [(e.video_id, e.exp_id, f) for e in expected for f in e.frames
                       if (e.video_id, e.exp_id, str(f)) not in self.names]
            if missing:
                self.tmp.unlink(missing_ok=True)
                raise DatasetError(f"submission incomplete: {len(missing)} frame(s) without a prediction, "
                                   f"first {missing[0]}; predict every frame of every expression")
        os.replace(self.tmp, self.path)
        return len(self.names)

    def __enter__(self) -> "SubmissionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.zip.close()
            self.tmp.unlink(missing_ok=True)


def write_submission(predictions, out_zip: str | os.PathLike,
                     expected: Iterable[VideoExpression] | None = None) -> int:
    """Write a Refer-YouTube-VOS server zip; returns the number of PNGs.

    ``predictions``: ``{video_id: {exp_id: {frame: mask}}}`` or an iterable of ``(video_id, exp_id, frame,
    mask)``; masks are bool/0-1 ``H x W`` arrays at the original frame size. With ``expected`` (e.g.
    ``list(ds.iter_expressions())``) a missing frame raises DatasetError instead of producing a partial zip.
    """
    w = SubmissionWriter(out_zip)
    try:
        if isinstance(predictions, dict):
            for vid, exps in predictions.items():
                for eid, frames in exps.items():
                    for fr, m in frames.items():
                        w.add(vid, eid, fr, m)
        else:
            for vid, eid, fr, m in predictions:
                w.add(vid, eid, fr, m)
    except BaseException:
        w.zip.close()
        w.tmp.unlink(missing_ok=True)
        raise
    return w.close(expected)
