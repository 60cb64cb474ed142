"""J-HMDB Sentences: test-only referring video segmentation (docs/reference.md section 3d).

Files under ``root``:

* ``jhmdb_annotation.txt``: CSV with header, columns ``video_id, query`` (one sentence per video, 928 rows);
* frames ``Rename_Images/<action>/<video_id>/<frame:05d>.png`` (1-indexed); the action folder is found by
  listing ``Rename_Images/*/``;
* masks ``puppet_mask/<action>/<video_id>/puppet_mask.mat``, key ``part_mask``, ``H x W x T``. Trailing frames
  beyond T have no mask and are never sampled.

Protocol (as MTTR): a model trained on A2D is evaluated on ``frames_per_video`` (3) frames per video drawn by a
seeded sampler. The drawn list is written to a JSON file (``samples_file``, default
``<cache_dir>/jhmdb_samples_seed<seed>_n<k>.json``) on first use and re-read afterwards, so results repeat; delete
it to draw again. Each video's draw depends only on (seed, video id). The clip around a sampled frame uses the
same ``frame_offsets`` as A2D, clamped to the frames that have masks.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import zlib
from pathlib import Path

import numpy as np

from cmpc.data.a2d import OFFICIAL_OFFSETS
from cmpc.data.base import (
    RawSample,
    ReferringDataset,
    clip_indices,
    open_text,
    read_mat_array,
    require_dir,
    require_file,
    resolve_offsets,
)
from cmpc.data.text import has_words
from cmpc.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)


def load_part_mask(path) -> np.ndarray:
    """``part_mask`` as ``H x W x T`` array."""
    m = read_mat_array(path, "part_mask", "J-HMDB mask", "re-extract puppet_mask (data/README.md#jhmdb)")
    if m.ndim == 2:
        m = m[..., None]
    return m


class JHMDBDataset(ReferringDataset):
    name = "jhmdb"
    ANCHOR = "jhmdb"
    is_video = True
    SPLITS = ("test",)

    def __init__(self, root, split="test", vocab=None, *, num_frames: int = 5,
                 frame_offsets=OFFICIAL_OFFSETS, frame_stride: int = 4, frames_per_video: int = 3,
                 sample_seed: int = 42, samples_file: str | None = None, **common):
        super().__init__(root, split, vocab, num_frames=num_frames, **common)
        if self.split != "test":
            raise ConfigError(f"J-HMDB Sentences is test-only (got split '{self.split}'); train on a2d and "
                              f"evaluate with dataset=jhmdb")
        self.offsets = resolve_offsets(num_frames, None if frame_offsets is None else list(frame_offsets),
                                       frame_stride)
        self.center = self.offsets.index(0)
        self.frames_per_video = int(frames_per_video)
        self.sample_seed = int(sample_seed)
        self.ann_path = require_file(self.root / "jhmdb_annotation.txt", "J-HMDB Sentences query file", "jhmdb")
        self.image_dir = require_dir(self.root / "Rename_Images", "J-HMDB frame", "jhmdb")
        self.mask_dir = require_dir(self.root / "puppet_mask", "J-HMDB puppet_mask", "jhmdb")
        base = self.cache_dir if self.cache_dir is not None else self.root
        default = f"jhmdb_samples_seed{self.sample_seed}_n{self.frames_per_video}.json"
        self.samples_path = Path(samples_file) if samples_file else base / default
        data = self._load_or_draw()
        self.use_index({"items": data["samples"], "skipped": data.get("skipped", {}),
                        "key": f"{self.samples_path}:{self.samples_path.stat().st_mtime_ns}"
                        if self.samples_path.is_file() else None})

    def _load_or_draw(self) -> dict:
        if self.samples_path.is_file():
            try:
                data = json.loads(self.samples_path.read_text())
                ok = (data.get("seed") == self.sample_seed
                      and data.get("frames_per_video") == self.frames_per_video
                      and all({"video_id", "action", "frame", "n_frames", "query"} <= set(s)
                              for s in data["samples"]))
            except (ValueError, KeyError, TypeError) as e:
                raise DatasetError(f"J-HMDB sample list {self.samples_path} is corrupt ({e}); delete it to "
                                   f"draw the frames again") from e
            if not ok:
                raise DatasetError(f"J-HMDB sample list {self.samples_path} was drawn with other settings; "
                                   f"delete it or set dataset.samples_file to another path")
            return data
        data = self._draw()
        try:
            self.samples_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.samples_path.with_name(f".{self.samples_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.samples_path)
        except OSError as e:
            log.warning("could not write the J-HMDB sample list %s (%s): results will not be pinned",
                        self.samples_path, e)
        return data

    def _draw(self) -> dict:
        skipped: dict[str, int] = {}

        def skip(reason, n=1):
            skipped[reason] = skipped.get(reason, 0) + n

        action_of = {}
        for action in sorted(os.listdir(self.image_dir)):
            d = self.image_dir / action
            if d.is_dir():
                for vid in os.listdir(d):
                    action_of[vid] = action
        samples = []
        with open_text(self.ann_path, "J-HMDB Sentences query file", "jhmdb") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or len(header) < 2:
                raise DatasetError(f"{self.ann_path} has no 'video_id,query' header; re-download J-HMDB "
                                   f"Sentences (data/README.md#jhmdb)")
            for row in reader:
                if not row:
                    continue
                if len(row) < 2:
                    skip("malformed row (fewer than 2 columns)")
                    continue
                vid, query = row[0].strip(), ",".join(row[1:]).strip()
                if not has_words(query):
                    skip("empty query (no words)")
                    continue
                action = action_of.get(vid)
                if action is None:
                    skip("video folder not found under Rename_Images/<action>/")
                    continue
                mask_path = self.mask_dir / action / vid / "puppet_mask.mat"
                if not mask_path.is_file():
                    skip("puppet_mask.mat missing")
                    continue
                n_png = len([n for n in os.listdir(self.image_dir / action / vid) if n.endswith(".png")])
                n = min(n_png, load_part_mask(mask_path).shape[2])
                if n < 1:
                    skip("video without frames or masks")
                    continue
                rng = np.random.default_rng([self.sample_seed, zlib.crc32(vid.encode())])
                k = min(self.frames_per_video, n)
                for fr in sorted(int(x) + 1 for x in rng.choice(n, size=k, replace=False)):
                    samples.append({"video_id": vid, "action": action, "frame": fr, "n_frames": n,
                                    "query": query})
        if not samples and skipped:
            raise DatasetError(f"no usable J-HMDB sample (skipped: {skipped}); check {self.root} "
                               f"(data/README.md#jhmdb)")
        return {"seed": self.sample_seed, "frames_per_video": self.frames_per_video, "samples": samples,
                "skipped": skipped}

    def load(self, index: int) -> RawSample:
        s = self.items[index]
        vid, action, fr, n = s["video_id"], s["action"], s["frame"], s["n_frames"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (fr, n)):  # "3", 2.5, null: edited
            raise DatasetError(f"sample of {vid} in {self.samples_path} has frame={fr!r}, n_frames={n!r}, not frame "
                               f"numbers; delete that file to draw again")
        if not 1 <= fr <= n:  # clip_indices would clamp the annotated frame itself, pairing a mask with another frame
            raise DatasetError(f"sample frame {fr} of {vid} is outside frames 1..{n} in {self.samples_path}; "
                               f"delete that file to draw again")
        mask_path = self.mask_dir / action / vid / "puppet_mask.mat"
        pm = load_part_mask(mask_path)
        if fr > pm.shape[2]:
            raise DatasetError(f"{mask_path} has {pm.shape[2]} frames but sample frame {fr} was listed in "
                               f"{self.samples_path}; delete that file to draw again")
        mask = pm[:, :, fr - 1] > 0
        numbers = [i + 1 for i in clip_indices(fr - 1, n, self.offsets)]
        frames = [self.read_image(self.image_dir / action / vid / f"{i:05d}.png") for i in numbers]
        meta = {"dataset": self.name, "split": self.split, "video_id": vid, "action": action, "frame": fr,
                "clip_frames": numbers, "kind": None, "group": f"{self.name}/{vid}/{fr}",
                "sample_id": f"{self.name}/{vid}/{fr:05d}"}
        return RawSample(frames=frames, center=self.center, mask=mask, sentence=s["query"], meta=meta)

    def sentences(self) -> list[str]:
        seen = {}
        for s in self.items:
            seen.setdefault(s["video_id"], s["query"])
        return list(seen.values())

    def counts(self) -> dict[str, int]:
        vids = {s["video_id"] for s in self.items}
        return {"videos": len(vids), "objects": len(vids), "sentences": len(vids), "samples": len(self.items)}
