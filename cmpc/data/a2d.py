"""A2D Sentences: referring video segmentation on A2D (docs/reference.md sections 1.6 and 3c).

Files under ``root``:

* ``Release/videoset.csv`` (no header, 9 columns; the last is 1 = test, 0 = train);
* ``text_annotations/a2d_annotation.txt`` (CSV with header ``video_id,instance_id,query``);
* ``text_annotations/a2d_missed_videos.txt`` (one video id per line; those videos are excluded);
* ``text_annotations/a2d_annotation_with_instances/<vid>/<frame:05d>.h5`` per annotated frame, with
  ``instance`` (ids), ``reMask`` (``N x W x H``, or ``W x H`` when N = 1: transposed to ``H x W`` here) and
  ``reBBox``;
* frames: ``Release/clips320H/<vid>.mp4`` decoded with OpenCV (frame f <-> decoded index f-1), or pre-extracted
  ``Release/frames/<vid>/<frame:05d>.png`` (the official CMPC-V input; ``prepare_data.py`` writes the frames the
  clips need, see :meth:`A2DDataset.extract_frames`).

A sample is (query, video, annotated frame whose .h5 holds the query's instance id with a non-empty mask).
Deviation from the official ``build_A2D_batches.py``: the official code uses the mask of a single-instance .h5
without checking its id (it can assign another actor's mask); here **the instance id must be present** (as in
MTTR). All-zero masks are skipped, as in the official code. Rows with a malformed instance id (the known
``"1 (copy)"`` row), videos of ``a2d_missed_videos.txt``, and videos missing from ``videoset.csv`` are skipped
and counted.

Clip: K frames at ``frame_offsets`` relative to the annotated frame f, each clamped to the video. The default
``[-8, -4, 0, 4, 7]`` equals the official sampling of indices [0, 4, 8, 12, 15] of the 16-frame window
f-8 .. f+7 (per-frame clamping, ``build_A2D_batches.frame_range``); the annotated frame is clip index 2.
``frame_offsets: null`` gives K offsets centred on f with step ``frame_stride``. Only the neighbours are clamped:
an annotated frame past the last frame the video decodes makes the sample unreadable (a DatasetError from
:meth:`A2DDataset.load`, skipped and counted by the loaders and listed by ``prepare_data.py``).
"""

from __future__ import annotations

import collections
import csv
import logging
import os
from pathlib import Path

import cv2
import h5py
import numpy as np

from cmpc.data.base import (
    RawSample,
    ReferringDataset,
    clip_indices,
    open_text,
    require_dir,
    require_file,
    resolve_offsets,
)
from cmpc.data.text import has_words
from cmpc.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

OFFICIAL_OFFSETS = (-8, -4, 0, 4, 7)
_resize_warned: set = set()


def read_a2d_h5(path) -> tuple[np.ndarray, np.ndarray]:
    """``(instance_ids [N] int, masks [N, H, W] bool)`` of one per-frame A2D .h5 file."""
    try:
        with h5py.File(path, "r") as f:
            ids = np.asarray(f["instance"]).ravel()
            m = np.asarray(f["reMask"])
    except Exception as e:
        raise DatasetError(f"cannot read A2D annotation {path} ({type(e).__name__}: {e}); re-extract "
                           f"a2d_annotation_with_instances (data/README.md#a2d)") from e
    if m.ndim == 2:  # one instance: W x H
        m = m[None]
    if m.ndim != 3 or m.shape[0] != ids.size:
        raise DatasetError(f"A2D annotation {path}: {ids.size} instance ids but reMask of shape {m.shape}; "
                           f"the file is corrupt, re-extract it (data/README.md#a2d)")
    return ids.astype(np.int64), np.ascontiguousarray(m.transpose(0, 2, 1)) > 0


class VideoReader:
    """Decode selected frames of an mp4 with OpenCV, with a small LRU of decoded frames.

    ``lengths[path]`` is the number of frames the video decodes, known once a read has reached its end."""

    def __init__(self, max_cached: int = 48):
        self.cache: collections.OrderedDict = collections.OrderedDict()
        self.max_cached = max_cached
        self.lengths: dict[str, int] = {}

    def read(self, path: Path, indices: list[int], required: int | None = None) -> dict[int, np.ndarray]:
        """0-based ``indices`` -> RGB frames; indices past the end are clamped to the last frame, except
        ``required`` (the annotated frame): a DatasetError when the video has no such frame."""
        key = str(path)
        if required is not None and required >= self.lengths.get(key, required + 1):
            raise DatasetError(f"annotated frame {required + 1} is beyond the {self.lengths[key]} frames {path} "
                               f"decodes; the video is truncated: re-download it")
        out = {i: self.cache[(key, i)] for i in indices if (key, i) in self.cache}
        todo = sorted(set(indices) - set(out))
        if todo:
            if not path.is_file():
                raise DatasetError(f"missing video {path}; download the A2D clips (data/README.md#a2d) or "
                                   f"extract frames with scripts/prepare_data.py")
            cap = cv2.VideoCapture(str(path))
            if not cap.isOpened():
                raise DatasetError(f"cannot open video {path}; the file is corrupt: re-download it")
            last, i, want = None, 0, set(todo)
            try:
                while i <= todo[-1]:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    if i in want:
                        out[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    last = frame
                    i += 1
            finally:
                cap.release()
            if last is None:
                raise DatasetError(f"video {path} has no decodable frame; re-download it")
            if i <= todo[-1]:  # the video ended before the last wanted frame
                self.lengths[key] = i
                if required is not None and required >= i:
                    raise DatasetError(f"annotated frame {required + 1} is beyond the {i} frames {path} "
                                       f"decodes; the video is truncated: re-download it")
            for j in todo:
                if j not in out:  # shorter than expected: clamp to the last decoded frame
                    out[j] = cv2.cvtColor(last, cv2.COLOR_BGR2RGB)
            for j in todo:
                self.cache[(key, j)] = out[j]
                self.cache.move_to_end((key, j))
            while len(self.cache) > self.max_cached:
                self.cache.popitem(last=False)
        return {i: out[i] for i in indices}


class A2DDataset(ReferringDataset):
    name = "a2d"
    ANCHOR = "a2d"
    is_video = True
    SPLITS = ("train", "test")

    def __init__(self, root, split, vocab=None, *, num_frames: int = 5,
                 frame_offsets=OFFICIAL_OFFSETS, frame_stride: int = 4, video_source: str = "auto",
                 clips_dir: str = "Release/clips320H", frames_dir: str = "Release/frames",
                 annotation_dir: str = "text_annotations", **common):
        super().__init__(root, split, vocab, num_frames=num_frames, **common)
        if self.split not in self.SPLITS:
            raise ConfigError(f"A2D has no split '{self.split}'; use train or test")
        if video_source not in ("auto", "mp4", "frames"):
            raise ConfigError(f"dataset.video_source={video_source!r} is unknown; use auto, mp4 or frames")
        self.offsets = resolve_offsets(num_frames, None if frame_offsets is None else list(frame_offsets),
                                       frame_stride)
        self.center = self.offsets.index(0)
        self.video_source = video_source
        self.clips_dir = self.root / clips_dir
        self.frames_dir = self.root / frames_dir
        ann = self.root / annotation_dir
        self.videoset_path = require_file(self.root / "Release" / "videoset.csv", "A2D videoset.csv", "a2d")
        self.query_path = require_file(ann / "a2d_annotation.txt", "A2D Sentences query file", "a2d")
        self.missed_path = ann / "a2d_missed_videos.txt"
        self.h5_dir = require_dir(ann / "a2d_annotation_with_instances", "A2D Sentences per-frame annotation",
                                  "a2d")
        if video_source == "mp4":
            require_dir(self.clips_dir, "A2D clips320H video", "a2d")
        if video_source == "frames":
            require_dir(self.frames_dir, "A2D extracted frame", "a2d")
        if video_source == "auto" and not self.clips_dir.is_dir() and not self.frames_dir.is_dir():
            raise DatasetError(f"missing A2D videos: neither {self.clips_dir} nor {self.frames_dir} exists; "
                               f"download the A2D release (data/README.md#a2d)")
        index = self.cached_index(self._build_index,
                                  [self.videoset_path, self.query_path, self.missed_path, self.h5_dir], {})
        self.queries = index["queries"]
        self.n_frames = index["n_frames"]
        self.use_index(index)
        self._reader = VideoReader()

    # -- index ----------------------------------------------------------------------------------------
    def _build_index(self) -> dict:
        skipped: dict[str, int] = {}

        def skip(reason, n=1):
            skipped[reason] = skipped.get(reason, 0) + n

        subset, n_frames = {}, {}
        with open(self.videoset_path, newline="") as f:
            for row in csv.reader(f):
                if not row:
                    continue
                if len(row) != 9 or row[-1].strip() not in ("0", "1"):
                    skip("malformed videoset.csv row (not 9 columns ending in 0/1)")
                    continue
                subset[row[0].strip()] = int(row[-1])
                try:
                    n_frames[row[0].strip()] = int(float(row[6]))
                except ValueError:
                    pass
        missed = set()
        if self.missed_path.is_file():
            missed = {ln.strip() for ln in self.missed_path.read_text().splitlines() if ln.strip()}
        else:
            log.warning("a2d: %s not found; no video is excluded as 'missed'", self.missed_path)
        want = 1 if self.split == "test" else 0

        per_video: dict[str, dict[int, dict[int, bool]]] = {}

        def frames_of(vid):
            if vid not in per_video:
                d = self.h5_dir / vid
                frames: dict[int, dict[int, bool]] = {}
                if d.is_dir():
                    for name in sorted(os.listdir(d)):
                        if not name.endswith(".h5"):
                            continue
                        try:
                            fr = int(name[:-3])
                            ids, masks = read_a2d_h5(d / name)
                        except (ValueError, DatasetError) as e:
                            log.warning("a2d: %s/%s unreadable (%s)", vid, name, e)
                            skip("unreadable or malformed per-frame .h5 file (frames)")
                            continue
                        frames[fr] = {int(i): bool(m.any()) for i, m in zip(ids, masks)}
                per_video[vid] = frames
            return per_video[vid]

        queries, items = [], []
        with open_text(self.query_path, "A2D Sentences query file", "a2d") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:3]] != ["video_id", "instance_id", "query"]:
                raise DatasetError(f"{self.query_path} does not start with the header "
                                   f"'video_id,instance_id,query'; re-download A2D Sentences (data/README.md#a2d)")
            for row in reader:
                if not row:
                    continue
                if len(row) < 3:
                    skip("malformed query row (fewer than 3 columns)")
                    continue
                vid, inst_s, query = row[0].strip(), row[1].strip(), ",".join(row[2:]).strip()
                if vid in missed:
                    skip("video listed in a2d_missed_videos.txt")
                    continue
                if vid not in subset:
                    skip("video not in videoset.csv")
                    continue
                if subset[vid] != want:
                    continue
                try:
                    inst = int(inst_s)
                except ValueError:
                    skip(f"malformed instance id (e.g. {inst_s!r})")
                    continue
                if not has_words(query):
                    skip("empty query (no words)")
                    continue
                frames = frames_of(vid)
                if not frames:
                    skip("video without per-frame annotations (.h5)")
                    continue
                present = [fr for fr in sorted(frames) if frames[fr].get(inst)]
                if not present:
                    skip("instance id never annotated (or all-zero masks) in the video's .h5 files")
                    continue
                q = len(queries)
                queries.append((vid, inst, query))
                items.extend((q, fr) for fr in present)
        if not items and skipped:
            raise DatasetError(f"no usable A2D sample for split '{self.split}' (skipped: {skipped}); check "
                               f"{self.h5_dir} (data/README.md#a2d)")
        return {"queries": queries, "items": items, "skipped": skipped, "n_frames": n_frames}

    # -- frames ---------------------------------------------------------------------------------------
    def frame_numbers(self, vid: str, frame: int) -> list[int]:
        """1-based frame numbers of the clip around annotated frame ``frame``."""
        n = self.n_frames.get(vid)
        if n is None or n < frame:
            n = frame + max(self.offsets)  # clamp later to what the video really holds
        return [i + 1 for i in clip_indices(frame - 1, n, self.offsets)]

    def _png(self, vid: str, fr: int) -> Path:
        return self.frames_dir / vid / f"{fr:05d}.png"

    def read_frames(self, vid: str, numbers: list[int]) -> list[np.ndarray]:
        """RGB frames ``numbers`` (1-based) of ``vid``; the annotated one (``numbers[self.center]``) must exist,
        neighbours past the end of the video are clamped to its last frame (DatasetError otherwise)."""
        if self.video_source != "mp4":
            paths = [self._png(vid, fr) for fr in numbers]
            if self.video_source == "frames" or all(p.is_file() for p in paths):
                return [self.read_image(p) for p in paths]
        got = self._reader.read(self.clips_dir / f"{vid}.mp4", [fr - 1 for fr in numbers],
                                required=numbers[self.center] - 1)
        return [got[fr - 1] for fr in numbers]

    def extract_frames(self) -> tuple[int, int]:
        """Write the PNG frames every clip of this split needs to ``frames_dir``; ``(written, present)``.
        Frames past the end of a truncated video are not written (``video_source=auto`` then reads that clip
        from the mp4, clamping its neighbours and skipping an annotated frame that does not exist)."""
        need: dict[str, set[int]] = collections.defaultdict(set)
        for q, fr in self.items:
            vid = self.queries[q][0]
            need[vid].update(self.frame_numbers(vid, fr))
        written = present = 0
        reader = VideoReader(max_cached=0)
        for vid in sorted(need):
            todo = sorted(fr for fr in need[vid] if not self._png(vid, fr).is_file())
            present += len(need[vid]) - len(todo)
            if not todo:
                continue
            path = self.clips_dir / f"{vid}.mp4"
            got = reader.read(path, [fr - 1 for fr in todo])
            (self.frames_dir / vid).mkdir(parents=True, exist_ok=True)
            end = reader.lengths.get(str(path), todo[-1])
            for fr in (fr for fr in todo if fr <= end):  # no PNG copies past the end: clips clamp when read
                p = self._png(vid, fr)
                tmp = p.with_name(f".{p.stem}.{os.getpid()}.tmp.png")
                if not cv2.imwrite(str(tmp), cv2.cvtColor(got[fr - 1], cv2.COLOR_RGB2BGR)):
                    raise DatasetError(f"cannot write {tmp}; check free disk space and permissions")
                os.replace(tmp, p)
                written += 1
        return written, present

    # -- API ------------------------------------------------------------------------------------------
    def load(self, index: int) -> RawSample:
        q, fr = self.items[index]
        vid, inst, query = self.queries[q]
        h5 = self.h5_dir / vid / f"{fr:05d}.h5"
        ids, masks = read_a2d_h5(h5)
        hit = np.flatnonzero(ids == inst)
        if hit.size == 0:
            raise DatasetError(f"A2D annotation {h5} no longer holds instance {inst}; delete the index cache "
                               f"({self.cache_dir}) and run scripts/prepare_data.py again")
        mask = masks[hit].any(axis=0)
        numbers = self.frame_numbers(vid, fr)
        frames = self.read_frames(vid, numbers)
        h, w = mask.shape
        if frames[0].shape[:2] != (h, w):
            if vid not in _resize_warned:
                _resize_warned.add(vid)
                log.warning("a2d: frames of %s are %s but its masks are %s; frames resized to the mask size",
                            vid, frames[0].shape[:2], (h, w))
            frames = [cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR) for x in frames]
        meta = {"dataset": self.name, "split": self.split, "video_id": vid, "frame": fr, "instance_id": inst,
                "query_id": q, "clip_frames": numbers, "kind": None, "group": f"{self.name}/{vid}/{fr}",
                "sample_id": f"{self.name}/{self.split}/{vid}/{fr:05d}/inst{inst}/q{q}"}
        return RawSample(frames=frames, center=self.center, mask=mask, sentence=query, meta=meta)

    def sentences(self) -> list[str]:
        return [q[2] for q in self.queries]

    def counts(self) -> dict[str, int]:
        return {"videos": len({q[0] for q in self.queries}),
                "objects": len({(q[0], q[1]) for q in self.queries}),
                "sentences": len(self.queries), "samples": len(self.items)}
