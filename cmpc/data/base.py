"""Raw samples, the dataset base class and the collate function (docs/architecture.md, "Raw samples",
"Model samples").

A dataset family subclasses :class:`ReferringDataset`: it builds a list of light index records once (cached on
disk, see :meth:`ReferringDataset.cached_index`) and implements ``load(i) -> RawSample``; the base class turns a
raw sample into the model sample (letterbox + mean from :mod:`cmpc.data.transforms`, word ids from
:mod:`cmpc.data.text`). One item is one (sentence, object[, frame]) pair: every sentence is a sample
(docs/reference.md 1.5).

Malformed dataset entries are skipped while indexing and counted per reason (``self.skipped``), with one
warning per reason; missing or unreadable files raise :class:`cmpc.errors.DatasetError` naming the file in
:meth:`ReferringDataset.load`, and ``dataset[i]`` turns that into an :class:`Unreadable` sample that
:func:`collate` drops and the train / eval loops count (:class:`UnreadableTally`), so a stray corrupt file does
not end a long run.
"""

from __future__ import annotations

import abc
import collections
import hashlib
import io
import json
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import scipy.io
import torch
from PIL import Image, ImageOps

from cmpc.data.text import MAX_WORDS, Vocabulary
from cmpc.data.transforms import Letterbox
from cmpc.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

INDEX_VERSION = 2  # 2: polygons clipped and validated, valid-split expressions without obj_id kept
README = "data/README.md"
_reported: set = set()  # (index key) whose skip counts were already logged in this process


@dataclass
class RawSample:
    """What a dataset family produces (architecture.md "Raw samples")."""

    frames: list  # RGB uint8 H x W x 3 arrays; one for images, K for clips
    center: int  # index in `frames` of the annotated frame
    mask: np.ndarray  # bool H x W ground truth of the annotated frame, original resolution
    sentence: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Unreadable:
    """Stands for a sample whose files cannot be read (truncated image, annotated frame past the end of the
    video, ...): :meth:`ReferringDataset.__getitem__` returns it, :func:`collate` drops it and lists it in
    ``batch["unreadable"]``, and the train / eval loops count and report it (:class:`UnreadableTally`)."""

    sample: str  # "<dataset>/<split>/<index>"
    reason: str  # the DatasetError's one line (names the file)


class UnreadableTally:
    """Counts the samples dropped by :func:`collate` over a run; :meth:`report` gives the lines to print."""

    GIVE_UP = 16  # this many unreadable samples before any readable one: a wrong folder, not a stray file

    def __init__(self) -> None:
        self.samples: list[Unreadable] = []
        self.readable = 0

    def add(self, batch: dict) -> bool:
        """Record ``batch["unreadable"]``; True when the batch holds no readable sample. Raises DatasetError when
        the first :data:`GIVE_UP` samples of the run are all unreadable."""
        self.samples.extend(batch.get("unreadable", ()))
        empty = "words" not in batch
        self.readable += 0 if empty else len(batch["words"])
        if not self.readable and len(self.samples) >= self.GIVE_UP:
            raise DatasetError(f"none of the first {len(self.samples)} samples can be read, e.g. "
                               f"{self.samples[0].reason}; run scripts/prepare_data.py to list unreadable files")
        return empty

    def __len__(self) -> int:
        return len(self.samples)

    def report(self, what: str, limit: int = 20) -> list[str]:
        """Lines ``skipped N unreadable samples in <what>`` + one per distinct reason (at most ``limit``)."""
        if not self.samples:
            return []
        reasons = sorted({u.reason for u in self.samples})
        lines = [f"skipped {len(self.samples)} unreadable sample(s) in {what}:"]
        lines += [f"  {r}" for r in reasons[:limit]]
        if len(reasons) > limit:
            lines.append(f"  ... and {len(reasons) - limit} more")
        return lines


# -------------------------------------------------------------------------------------------------
# file helpers
# -------------------------------------------------------------------------------------------------
def require_file(path: str | os.PathLike, what: str, anchor: str) -> Path:
    """Return ``path`` if it is a file, else raise a one-line DatasetError pointing to the README section."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"missing {what}: {p}; download it and lay it out as described in "
                           f"{README}#{anchor}")
    return p


def read_mat_array(path: str | os.PathLike, key: str, what: str, fix: str) -> np.ndarray:
    """Array ``key`` of a MATLAB file; a one-line DatasetError (saying ``fix``) if unreadable or missing."""
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:
        raise DatasetError(f"cannot read {what} {path} ({type(e).__name__}: {e}); {fix}") from e
    if key not in mat:
        raise DatasetError(f"{what} {path} has no '{key}' array; {fix}")
    return np.asarray(mat[key])


def open_text(path: str | os.PathLike, what: str, anchor: str) -> io.StringIO:
    """The UTF-8 text of ``path`` (a byte-order mark is dropped) as a file object for :mod:`csv`; a one-line
    DatasetError when the bytes are not UTF-8."""
    p = require_file(path, what, anchor)
    try:
        return io.StringIO(p.read_text(encoding="utf-8-sig"), newline="")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{what} {p} is not UTF-8 text ({e}); re-download it or convert it to UTF-8 "
                           f"({README}#{anchor})") from e


def require_dir(path: str | os.PathLike, what: str, anchor: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise DatasetError(f"missing {what} folder: {p}; download it and lay it out as described in "
                           f"{README}#{anchor}")
    return p


ALPHA_BACKGROUND = 255  # transparent pixels are composited over white, as a viewer on a white page shows them


def to_rgb(im: Image.Image) -> np.ndarray:
    """RGB uint8 ``H x W x 3`` of a PIL image of any mode (docs in data/README.md, "Image files").

    * ``1``, ``L``: grey tiled to 3 channels (``1`` gives 0 / 255);
    * ``I;16*`` and ``I`` (16-bit grey, e.g. 16-bit PNG / TIFF): **scaled** ``round(v / 257)`` (0..65535 ->
      0..255; values outside 0..65535 are clipped), not clipped at 255 as PIL's ``convert`` does;
    * ``F`` (float grey): taken as fractions of white, ``round(255 * v)`` clipped to 0..255;
    * alpha (``LA``, ``PA``, ``RGBA``, ``RGBa``, and ``P`` / ``L`` / ``RGB`` with a transparent palette entry or
      colour, PNG ``tRNS``): composited over
      white (:data:`ALPHA_BACKGROUND`), ``round(c * a / 255 + 255 * (1 - a / 255))``;
    * ``LAB``: CIE L*a*b* -> sRGB through :mod:`PIL.ImageCms` (PIL's plain ``convert`` copies the channels);
    * ``P``, ``CMYK``, ``YCbCr``, ``HSV``, ``RGBX``: PIL's ``convert("RGB")`` (CMYK without ICC management).

    Embedded ICC profiles are not applied. Raises ``ValueError`` for a mode PIL cannot convert.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        v = np.asarray(im).astype(np.float64)
        grey = np.rint(np.clip(v, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        grey = np.rint(np.clip(np.nan_to_num(np.asarray(im, dtype=np.float64)), 0, 1) * 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "LAB":
        from PIL import ImageCms

        transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                            "LAB", "RGB")
        return np.asarray(ImageCms.applyTransform(im, transform), dtype=np.uint8).copy()
    if (mode in ("P", "L", "RGB") and "transparency" in im.info) or mode in ("PA", "LA", "RGBa"):
        im = im.convert("RGBA")  # applies a transparent colour / palette entry; un-premultiplies RGBa
    if im.mode == "RGBA":
        rgba = np.asarray(im, dtype=np.float64)
        alpha = rgba[..., 3:] / 255.0
        return np.rint(rgba[..., :3] * alpha + ALPHA_BACKGROUND * (1 - alpha)).astype(np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: str | os.PathLike, *, upright: bool = False) -> np.ndarray:
    """RGB uint8 ``H x W x 3`` of any image mode PIL opens (:func:`to_rgb`); the first frame of animations.

    ``upright=False`` (dataset images) keeps the stored pixel order, on which annotations are drawn;
    ``upright=True`` (predict / demo inputs) applies the EXIF orientation, giving the picture a viewer shows.
    Raises DatasetError (one line naming the file) when the file is missing, truncated or not an image.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"missing image file {p}; check the dataset layout in {README}")
    try:
        with Image.open(p) as im:
            if upright:
                im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except Exception as e:  # PIL raises many types for corrupt files
        raise DatasetError(f"cannot read image {p} ({type(e).__name__}: {e}); the file is corrupt: "
                           f"re-download or re-extract it") from e


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def read_video(path: str | os.PathLike) -> list[np.ndarray]:
    """RGB uint8 frames of a video file (OpenCV) or of a folder of images (sorted by name, EXIF orientation
    applied as for any user input). Raises :class:`DatasetError` for a missing path, an empty folder or an
    undecodable video."""
    import cv2

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"no image files in {path}; give a video file or a folder of frames")
        return [read_image(p, upright=True) for p in files]
    if not path.is_file():
        raise DatasetError(f"video {path} does not exist")
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    if not frames:
        raise DatasetError(f"cannot decode any frame of {path}; convert it to mp4 (H.264) or extract the frames")
    return frames


def clip_indices(center: int, n: int, offsets: Sequence[int]) -> list[int]:
    """0-based frame indices ``center + offset`` clamped to ``[0, n-1]`` (official CMPC-V clamping)."""
    return [min(max(center + int(o), 0), n - 1) for o in offsets]


def resolve_offsets(num_frames: int, frame_offsets: Sequence[int] | None, frame_stride: int) -> list[int]:
    """Clip offsets relative to the annotated frame; ``None`` -> K offsets centred with ``frame_stride``."""
    k = int(num_frames)
    if k < 1:
        raise ConfigError(f"dataset.num_frames={num_frames} must be >= 1")
    if frame_offsets is None:
        offs = [(i - k // 2) * int(frame_stride) for i in range(k)]
    else:
        offs = [int(o) for o in frame_offsets]
        if len(offs) != k:
            raise ConfigError(f"dataset.frame_offsets has {len(offs)} entries but dataset.num_frames={k}; "
                              f"make them agree (or set frame_offsets=null)")
    if 0 not in offs:
        raise ConfigError(f"dataset.frame_offsets={offs} must contain 0 (the annotated frame)")
    return offs


def _fingerprint(sources: Iterable[str | os.PathLike]) -> list:
    out = []
    for s in sources:
        try:
            st = os.stat(s)
            out.append([str(s), st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([str(s), None, None])
    return out


# -------------------------------------------------------------------------------------------------
# dataset base
# -------------------------------------------------------------------------------------------------
class ReferringDataset(torch.utils.data.Dataset, abc.ABC):
    """Abstract base: subclasses fill ``self.items`` and implement :meth:`load` and :meth:`sentences`.

    Common keyword arguments (the ``dataset`` config keys shared by all families): ``root``, ``split``,
    ``vocab``, ``input_size`` (S), ``mean``, ``max_words`` (T), ``num_frames`` (K), ``cache_dir`` (None: no
    index cache), ``mask_mode`` (bilinear|nearest), ``image_cache_mb`` (MiB of decoded images kept in memory by
    :meth:`read_image`; 0 = none).
    """

    name = "base"
    is_video = False
    SPLITS: tuple[str, ...] = ()  # split names of the official packaging (prepare_data lists these)
    ANCHOR = ""  # data/README.md section

    def __init__(self, root: str | os.PathLike, split: str, vocab: Vocabulary | None = None, *,
                 input_size: int = 320, mean: str | None = "caffe_bgr", max_words: int = MAX_WORDS,
                 num_frames: int = 1, cache_dir: str | os.PathLike | None = None, mask_mode: str = "bilinear",
                 image_cache_mb: float = 0):
        self.root = Path(root)
        self.split = str(split)
        self.vocab = vocab
        self.letterbox = Letterbox(input_size, mean, mask_mode)
        self.max_words = int(max_words)
        self.num_frames = int(num_frames)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.items: list = []
        self.skipped: collections.Counter = collections.Counter()
        number = isinstance(image_cache_mb, (int, float)) and not isinstance(image_cache_mb, bool)
        if not (number and 0 <= image_cache_mb < float("inf")):
            raise ConfigError(f"dataset.image_cache_mb={image_cache_mb!r} is out of range: it must be a number >= 0 "
                              f"(MiB of decoded images kept in memory; 0 = off)")
        self.image_cache_bytes = int(image_cache_mb * 2**20)
        self.decoded: dict[str, np.ndarray] = {}  # path -> read-only pixels (read_image)
        self.decoded_bytes = 0
        if not self.is_video and self.num_frames != 1:
            raise ConfigError(f"dataset '{self.name}' is an image dataset: dataset.num_frames must be 1, "
                              f"got {num_frames}")

    # -- to implement -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    @abc.abstractmethod
    def load(self, index: int) -> RawSample:
        """The raw sample ``index`` (frames, centre, mask, sentence, meta)."""

    @abc.abstractmethod
    def sentences(self) -> list[str]:
        """Every sentence of this split once (not once per frame sample): the vocabulary source."""

    def group_key(self, index: int) -> str:
        """Key shared by the samples of the same image/clip, without loading it (used to run the backbone once
        per image for all its sentences). Families with several sentences per image override this."""
        return f"{self.name}/{self.split}/{index}"

    def available_splits(self) -> list[str]:
        """Splits present on disk (default: the official ones)."""
        return list(self.SPLITS)

    def counts(self) -> dict[str, int]:
        """Statistics printed by prepare_data: images/videos, objects, sentences, samples."""
        return {"samples": len(self)}

    def check_files(self, progress: Callable = lambda items, total: items) -> list[Unreadable]:
        """Read the files of every sample once (the first sample of each :meth:`group_key`: image, clip) and
        return those that cannot be read, each with its one-line reason naming the file (prepare_data.py).
        ``progress(iterable, total)`` wraps the loop (e.g. ``tqdm``)."""
        first: dict[str, int] = {}
        for i in range(len(self)):
            first.setdefault(self.group_key(i), i)
        bad = []
        for key, i in progress(first.items(), total=len(first)):
            try:
                self.load(i)
            except DatasetError as e:
                bad.append(Unreadable(key, str(e)))
        return bad

    def read_image(self, path: str | os.PathLike) -> np.ndarray:
        """:func:`read_image` of a dataset file (stored pixel order). With ``image_cache_mb`` > 0 the decoded
        pixels of a file read before come from memory, as a read-only array: files are kept until that many MiB
        are held (no eviction). Raises DatasetError like :func:`read_image`."""
        if not self.image_cache_bytes:
            return read_image(path)
        key = str(path)
        image = self.decoded.get(key)
        if image is None:
            image = read_image(path)
            image.setflags(write=False)  # one array serves every later read: nobody may draw on it
            if self.decoded_bytes + image.nbytes <= self.image_cache_bytes:
                self.decoded[key] = image
                self.decoded_bytes += image.nbytes
        return image

    # -- model sample -------------------------------------------------------------------------------
    def try_load(self, index: int) -> RawSample | Unreadable:
        """:meth:`load`, or :class:`Unreadable` (logged as a warning) when a file of the sample cannot be read."""
        try:
            return self.load(index)
        except DatasetError as e:
            log.warning("%s/%s sample %d skipped: %s", self.name, self.split, index, e)
            return Unreadable(f"{self.name}/{self.split}/{index}", str(e))

    def __getitem__(self, index: int) -> dict[str, Any] | Unreadable:
        """The model sample ``index``, or :class:`Unreadable` when its files (or its sentence) cannot be used."""
        if self.vocab is None:
            raise ConfigError(f"dataset '{self.name}' was built without a vocabulary; pass the one from "
                              f"cmpc.data.build_vocab(cfg) to build_dataset")
        raw = self.try_load(index)
        if isinstance(raw, Unreadable):
            return raw
        try:
            return self.to_model_sample(raw)
        except DatasetError as e:
            log.warning("%s/%s sample %d skipped: %s", self.name, self.split, index, e)
            return Unreadable(f"{self.name}/{self.split}/{index}", str(e))

    def to_model_sample(self, raw: RawSample) -> dict[str, Any]:
        meta = dict(raw.meta)
        sample_id = meta.get("sample_id", meta.get("group"))
        words = self.vocab.encode(raw.sentence, self.max_words, sample_id=sample_id)
        frame = raw.frames[raw.center]
        h, w = frame.shape[:2]
        if raw.mask is not None and raw.mask.shape != (h, w):
            raise DatasetError(f"{self.name} sample {sample_id}: mask size {raw.mask.shape} differs from the "
                               f"image size {(h, w)}; the annotation file is corrupt, re-download it")
        meta["orig_size"] = (h, w)
        meta.setdefault("kind", None)
        meta.setdefault("no_target", False)
        meta.setdefault("sentence", raw.sentence)
        out: dict[str, Any] = {}
        if self.is_video:
            out["clip"] = self.letterbox.clip(raw.frames)
        else:
            out["image"] = self.letterbox.image(frame)
        out["words"] = words
        if raw.mask is not None:
            out["target"] = self.letterbox.mask(raw.mask)
            out["gt"] = np.asarray(raw.mask, dtype=bool)
        else:
            out["target"] = torch.zeros(self.letterbox.size, self.letterbox.size)
            out["gt"] = None
        out["meta"] = meta
        return out

    # -- indexing helpers ---------------------------------------------------------------------------
    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] += n

    def report_skipped(self) -> None:
        for reason, n in sorted(self.skipped.items()):
            log.warning("%s/%s: skipped %d entr%s: %s", self.name, self.split, n, "y" if n == 1 else "ies",
                        reason)

    def cached_index(self, build: Callable[[], dict], sources: Iterable[str | os.PathLike],
                     options: dict) -> dict:
        """``build()`` once, then from ``<cache_dir>/index/*.pkl`` while sources and options are unchanged.

        ``build`` returns a picklable dict with at least ``items`` (list) and ``skipped`` (reason -> count).
        The cache key holds the class, split, options and (path, size, mtime) of every source path.
        """
        key = json.dumps({"v": INDEX_VERSION, "cls": type(self).__name__, "split": self.split,
                          "options": options, "sources": _fingerprint(sources)}, sort_keys=True, default=str)
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        path = None
        if self.cache_dir is not None:
            safe = "".join(c if c.isalnum() or c in "-_+" else "_" for c in f"{self.name}_{self.split}")
            path = self.cache_dir / "index" / f"{safe}_{digest}.pkl"
            if path.is_file():
                try:
                    with open(path, "rb") as f:
                        index = pickle.load(f)
                    if index.get("key") == key:
                        return index
                except Exception as e:  # stale or truncated cache: rebuild
                    log.warning("index cache %s unreadable (%s); rebuilding", path, e)
        index = build()
        index["key"] = key
        index["skipped"] = dict(index.get("skipped", {}))
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                with open(tmp, "wb") as f:
                    pickle.dump(index, f, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(tmp, path)
            except OSError as e:
                log.warning("could not write index cache %s (%s); continuing without it", path, e)
        return index

    def use_index(self, index: dict) -> None:
        """Adopt a (possibly cached) index: items + skip counts, and warn once per skip reason."""
        self.items = index["items"]
        self.skipped = collections.Counter(index.get("skipped", {}))
        key = index.get("key") or id(index)
        if key not in _reported:  # once per process, not once per split object / DataLoader worker
            _reported.add(key)
            self.report_skipped()


# -------------------------------------------------------------------------------------------------
# collate
# -------------------------------------------------------------------------------------------------
STACKED = ("image", "clip", "words", "target")


def collate(samples: Sequence[dict | Unreadable]) -> dict[str, Any]:
    """Stack ``image``/``clip``/``words``/``target``; keep ``gt``, ``meta`` (and any other key) as lists.

    :class:`Unreadable` samples are dropped and listed in ``batch["unreadable"]`` (key absent when none); a batch
    of unreadable samples only is ``{"unreadable": [...]}``.
    """
    if not samples:
        raise ValueError("collate() got an empty list of samples")
    dropped = [s for s in samples if isinstance(s, Unreadable)]
    if dropped:
        kept = [s for s in samples if not isinstance(s, Unreadable)]
        batch = collate(kept) if kept else {}
        batch["unreadable"] = dropped
        return batch
    keys = set(samples[0])
    for s in samples[1:]:
        if set(s) != keys:
            raise ValueError(f"collate() got samples with different keys: {sorted(keys)} vs {sorted(s)}")
    batch: dict[str, Any] = {}
    for k in samples[0]:
        if k in STACKED:
            batch[k] = torch.stack([s[k] for s in samples])
        else:
            batch[k] = [s[k] for s in samples]
    return batch


def collate_grouped(samples: Sequence[dict]) -> dict[str, Any]:
    """:func:`collate`, keeping one image per ``meta["group"]``: ``image [U, 3, S, S]`` holds the distinct images
    and ``image_index [B]`` maps every sentence to its image (the model then runs the backbone once per image)."""
    batch = collate(samples)
    if "words" not in batch:  # every sample unreadable
        return batch
    key = "clip" if "clip" in batch else "image"
    first: dict[str, int] = {}  # group -> position of its first sample
    for i, meta in enumerate(batch["meta"]):
        first.setdefault(meta["group"], i)
    slot = {group: u for u, group in enumerate(first)}
    batch[key] = batch[key][list(first.values())]
    batch["image_index"] = torch.tensor([slot[m["group"]] for m in batch["meta"]], dtype=torch.long)
    return batch
