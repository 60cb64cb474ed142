"""What the web demo (``scripts/demo.py``) computes, without the web page: load a checkpoint once, then for an
image and a sentence return the mask, its overlay, the word types and the RAR attention maps; for a clip, the
overlay of every frame.

- The mask follows the evaluation protocol (:mod:`cmpc.engine.evaluate`): logits upsampled to the letterboxed
  input, un-padded and resized to the picture, logit >= 0; with ``crf=True`` DenseCRF (official parameters,
  :func:`cmpc.crf.dense_crf`) refines the sigmoid map at the letterboxed size, threshold 0.5 after resizing.
- The word types are the classifier's soft distribution per word (eq. 1, the paper's figure 5).
- The attention map of a level is where the referent sends its RAR edges (the paper's figure 9): the rows of
  ``A = B1 B2`` (eq. 9) averaged over the cells the predicted mask covers (:mod:`cmpc.explain`), shown as a
  multiple of the uniform share ``1/N``. When the mask is empty the rows are averaged with the predicted
  foreground probability of each cell instead (``AttentionMap.source == "probability"``).

Pictures are the ones a viewer shows: file inputs go through :func:`cmpc.data.base.read_image` with
``upright=True`` and PIL images through ``ImageOps.exif_transpose``. Bad input (unreadable image, empty
sentence, too long a clip) raises :class:`~cmpc.errors.DatasetError`; the ``*_page`` functions turn every
error into one status line, as the page shows it.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cmpc.data.base import IMAGE_SUFFIXES, read_image, read_video, resolve_offsets, to_rgb
from cmpc.data.text import tokenize
from cmpc.data.transforms import Letterbox
from cmpc.engine.builders import load_trained
from cmpc.engine.video import segment_frames
from cmpc.errors import CmpcError, DatasetError
from cmpc.explain import (
    SentenceWords,
    capture_reasoning,
    cell_cover,
    outgoing_attention,
    read_words,
    reasoning_graphs,
    sentence_words,
    word_type_chart,
    word_type_rows,
)
from cmpc.models.functional import upsample_logits
from cmpc.models.video import CMPCVideo
from cmpc.viz import enlarged, overlay, write_gif

log = logging.getLogger(__name__)

__all__ = [
    "AttentionMap", "DemoModel", "ImageResult", "VideoResult", "as_rgb", "attention_pictures", "clip_page",
    "encode_sentence", "error_line", "image_page", "load_demo_model", "read_clip", "segment_clip", "segment_image",
    "synthetic_examples",
]


@dataclass
class DemoModel:
    """A trained model ready for the page: the model in eval mode, its config, vocabulary and letterbox."""

    model: torch.nn.Module
    config: Any
    vocab: Any
    letterbox: Letterbox
    device: torch.device
    path: Path

    @property
    def video(self) -> bool:
        """Whether this is a CMPC-V checkpoint (clips in, the centre frame segmented)."""
        return isinstance(self.model, CMPCVideo)

    @property
    def word_types(self) -> tuple[str, ...]:
        """The word classifier's type names (eq. 1): 4 for CMPC-I, 5 (with ``action``) for CMPC-V."""
        return tuple(self.model.word_types)

    @property
    def offsets(self) -> list[int]:
        """The clip's frame offsets around the segmented frame (``[0]`` for image models)."""
        ds = self.config.dataset
        return resolve_offsets(ds.num_frames, ds.get("frame_offsets"), ds.get("frame_stride", 1))

    def describe(self) -> str:
        kind = "CMPC-V (video)" if self.video else "CMPC-I (image)"
        levels = ", ".join(self.config.model.levels)
        return f"{self.path} — {self.config.model.name}, {kind}, levels {levels}, input {self.letterbox.size} px"


def load_demo_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> DemoModel:
    """Load a checkpoint written by train.py (:func:`cmpc.engine.builders.load_trained`); raises ``ConfigError``
    when the file is missing or not a training checkpoint."""
    model, cfg, vocab = load_trained(path, device)
    return DemoModel(model, cfg, vocab, Letterbox(cfg.dataset.input_size, cfg.dataset.mean), torch.device(device),
                     Path(path))


# -- inputs ------------------------------------------------------------------------------------------------
def as_rgb(image: Any) -> np.ndarray:
    """The picture a viewer shows as RGB uint8 ``H x W x 3``: a path (read with EXIF orientation applied), a
    PIL image (``exif_transpose``) or an ``H x W`` / ``H x W x 3|4`` uint8 array. Raises ``DatasetError``."""
    from PIL import Image, ImageOps

    if image is None:
        raise DatasetError("no image: upload a picture (or pick an example) first")
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, upright=True)
    if isinstance(image, Image.Image):
        try:
            return to_rgb(ImageOps.exif_transpose(image))  # every mode as read_image gives it (data/README.md)
        except Exception as e:  # PIL decodes lazily: a truncated upload fails here
            raise DatasetError(f"cannot read the uploaded image ({type(e).__name__}: {e}); upload a JPEG or PNG") from e
    a = np.asarray(image)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or 0 in a.shape:
        raise DatasetError(f"the image must be uint8 H x W (x 3), got {a.dtype} {a.shape}")
    return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3])


def read_clip(paths: Sequence[str | os.PathLike]) -> list[np.ndarray]:
    """RGB frames from one video file or folder of frames (:func:`cmpc.data.base.read_video`), or from several
    image files (frames in file-name order, EXIF orientation applied). Raises ``DatasetError``."""
    paths = [Path(p) for p in paths or []]
    if not paths:
        raise DatasetError("no video: upload a video file or the frames of one")
    if len(paths) == 1:
        single = paths[0]
        return [read_image(single, upright=True)] if single.suffix.lower() in IMAGE_SUFFIXES else read_video(single)
    others = [p.name for p in paths if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DatasetError(f"{others[0]} is not an image; upload one video file or several frames ({kinds})")
    frames = [read_image(p, upright=True) for p in sorted(paths, key=lambda p: p.name)]
    if len({f.shape for f in frames}) > 1:
        raise DatasetError("the frames differ in size; upload the frames of one video")
    return frames


def encode_sentence(dm: DemoModel, sentence: str) -> tuple[torch.Tensor, list[str], list[bool]]:
    """``(token ids [max_words] left-padded, words, known)`` (:func:`cmpc.explain.read_words`); raises
    ``DatasetError`` for a sentence without words."""
    if not any(re.search(r"\w", w) for w in tokenize(sentence or "")):
        raise DatasetError("the sentence is empty: type what to segment, e.g. 'the red circle on the left'")
    return read_words(dm.vocab, sentence, int(dm.config.dataset.max_words))


# -- images ------------------------------------------------------------------------------------------------
@dataclass
class AttentionMap:
    """Where the referent sends its RAR edges at one level: ``heat [H, W]`` at picture size, in multiples of
    the uniform share (1.0 = no preference), averaged over the predicted mask (``source="mask"``) or, for an
    empty mask, over the predicted foreground probability (``source="probability"``)."""

    level: str
    heat: np.ndarray
    grid: tuple[int, int]
    source: str


@dataclass
class ImageResult:
    """Everything the page shows for one image and sentence; ``mask [H, W]`` bool at picture size."""

    image: np.ndarray
    mask: np.ndarray
    probability: np.ndarray
    words: SentenceWords
    attention: list[AttentionMap]
    crf: bool


def _attention(dm: DemoModel, graphs, mask_padded: np.ndarray, prob_padded: np.ndarray, size) -> list[AttentionMap]:
    maps = []
    s = dm.letterbox.size
    for level, (adjacency, grid) in graphs.items():
        source, kind = cell_cover([torch.from_numpy(mask_padded)], grid), "mask"
        if not source.sum() > 0:
            source, kind = cell_cover([torch.from_numpy(prob_padded)], grid), "probability"
        row = outgoing_attention(adjacency[0], source) * source.numel()  # multiples of the uniform share 1/N
        heat = upsample_logits(row.reshape(1, 1, *grid), (s, s))[0, 0]  # bilinear, as the logits
        maps.append(AttentionMap(level, dm.letterbox.invert(heat, size).numpy(), grid, kind))
    return maps


@torch.no_grad()
def segment_image(dm: DemoModel, image: Any, sentence: str, crf: bool = False) -> ImageResult:
    """Segment what ``sentence`` refers to in ``image`` (see :func:`as_rgb` for the accepted kinds) and record
    the word types and RAR attention of the forward pass. Raises ``DatasetError`` for bad input."""
    rgb = as_rgb(image)
    tokens, words, known = encode_sentence(dm, sentence)
    padded = dm.letterbox.image_uint8(rgb)
    x = dm.letterbox.normalize(padded)[None].to(dm.device)
    with capture_reasoning(dm.model) as captured:
        out = dm.model(x, tokens[None].to(dm.device))
        graphs = reasoning_graphs(dm.model, captured)
    s = dm.letterbox.size
    logits = upsample_logits(out["logits"].float(), (s, s))[0, 0].cpu()
    prob_padded = torch.sigmoid(logits).numpy()
    size = rgb.shape[:2]
    if crf:
        from cmpc.crf import dense_crf

        mask_padded = dense_crf(padded, prob_padded)
        mask = dm.letterbox.invert(mask_padded.astype(np.float32), size) >= 0.5
    else:
        mask_padded = (logits >= 0).numpy()
        mask = (dm.letterbox.invert(logits, size) >= 0).numpy()
    return ImageResult(
        image=rgb,
        mask=mask,
        probability=dm.letterbox.invert(prob_padded, size),
        words=sentence_words(words, known, dm.word_types, out["word_probs"]),
        attention=_attention(dm, graphs, mask_padded, prob_padded, size),
        crf=crf,
    )


def attention_pictures(result: ImageResult, alpha: float = 0.55) -> list[tuple[np.ndarray, str]]:
    """``(RGB picture, caption)`` per RAR level: the heat map over the image (jet, from its minimum in blue to
    its maximum in red; a flat map stays blue), the predicted mask outlined in white."""
    import cv2

    pictures = []
    for m in result.attention:
        low, high = float(m.heat.min()), float(m.heat.max())
        scaled = (m.heat - low) / (high - low) if high > low else np.zeros_like(m.heat)
        colour = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.rint(255 * scaled)), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        blended = np.uint8(np.rint((1 - alpha) * result.image + alpha * colour))
        picture = overlay(blended, result.mask, color=(255, 255, 255), alpha=0.0)
        where = "the mask" if m.source == "mask" else "the foreground probability (empty mask)"
        pictures.append((picture, f"{m.level} ({m.grid[0]}x{m.grid[1]}): edges from {where}, "
                                  f"{low:.2f}-{high:.2f}x uniform"))
    return pictures


# -- clips -------------------------------------------------------------------------------------------------
@dataclass
class VideoResult:
    """Per-frame bool masks (picture size), their overlays and the sentence's word types."""

    frames: list[np.ndarray]
    masks: list[np.ndarray]
    overlays: list[np.ndarray]
    words: SentenceWords


@torch.no_grad()
def segment_clip(dm: DemoModel, frames: Sequence[np.ndarray], sentence: str, *, max_frames: int = 120,
                 batch_size: int = 8) -> VideoResult:
    """Segment every frame, each the centre of its own clip (:func:`cmpc.engine.video.segment_frames`; an image
    checkpoint segments each frame alone). Raises ``DatasetError`` for more than ``max_frames`` frames."""
    if not frames:
        raise DatasetError("no frames to segment")
    if len(frames) > max_frames:
        raise DatasetError(f"the clip has {len(frames)} frames; the demo segments at most {max_frames} "
                           f"(cut the video or raise demo.max_frames)")
    if len({f.shape for f in frames}) > 1:
        raise DatasetError("the frames differ in size; upload the frames of one video")
    tokens, words, known = encode_sentence(dm, sentence)
    tensors = [(dm.letterbox.image(f), f.shape[:2]) for f in frames]
    masks = segment_frames(dm.model, tensors.__getitem__, len(frames), dm.offsets, tokens, dm.letterbox, dm.device,
                           batch_size=batch_size)
    probs = dm.model.encode_language(tokens[None].to(dm.device)).probs  # eq. 1 depends on the words alone
    return VideoResult(list(frames), masks, [overlay(f, m) for f, m in zip(frames, masks)],
                       sentence_words(words, known, dm.word_types, probs))


# -- the page's handlers -----------------------------------------------------------------------------------
def error_line(err: BaseException) -> str:
    """The one line the page shows for a failed request: ``error: <message>`` for bad input (a
    :class:`~cmpc.errors.CmpcError`); anything else is logged with its traceback and summarised."""
    message = " ".join(str(err).split())  # one line, whatever the exception carried
    if isinstance(err, CmpcError):
        return f"error: {message}"
    log.exception("demo request failed")  # the server log keeps the traceback; the page gets one line
    return f"error: the model failed on this input ({type(err).__name__}: {message})"


def image_page(dm: DemoModel | None, image: Any, sentence: str, crf: bool = False):
    """The image tab's outputs ``(overlay, word-type chart, word-type rows, [(attention picture, caption)],
    status line)``; any failure gives ``None``s and a status line starting with ``error:``."""
    try:
        if dm is None:
            raise DatasetError("no checkpoint loaded: start the demo with checkpoint=PATH (a .pt written by train.py)")
        r = segment_image(dm, image, sentence, crf)
    except Exception as err:  # the server keeps serving; the page shows one line
        return None, None, [], [], error_line(err)
    share = 100 * float(r.mask.mean()) if r.mask.size else 0.0
    status = (f"{int(r.mask.sum())} pixels ({share:.1f}%) selected{' after DenseCRF' if crf else ''}; "
              f"{len(r.words.words)} words, {r.words.known.count(False)} unknown")
    return (overlay(r.image, r.mask), word_type_chart(r.words), word_type_rows(r.words), attention_pictures(r),
            status)


def clip_page(dm: DemoModel | None, paths: Sequence[str | os.PathLike], sentence: str, out_dir: str | os.PathLike,
              *, fps: float = 4, max_frames: int = 120):
    """The video tab's outputs ``(GIF path, word-type chart, status line)``: the overlays written as a GIF in
    ``out_dir`` (small frames :func:`enlarged`); any failure gives ``None``s and an ``error:`` status line."""
    try:
        if dm is None:
            raise DatasetError("no checkpoint loaded: start the demo with checkpoint=PATH (a .pt written by train.py)")
        r = segment_clip(dm, read_clip(paths), sentence, max_frames=max_frames)
        fd, gif = tempfile.mkstemp(suffix=".gif", prefix="cmpc_clip_", dir=out_dir)
        os.close(fd)
        write_gif(gif, [enlarged(o) for o in r.overlays], fps=fps)
    except Exception as err:
        return None, None, error_line(err)
    note = "" if dm.video else " (an image checkpoint: every frame segmented alone)"
    return gif, word_type_chart(r.words), f"segmented {len(r.frames)} frames{note}"


def synthetic_examples(folder: str | os.PathLike, count: int = 3, *, video: bool = False,
                       image_size: int = 128) -> list[tuple[str, str]]:
    """``(path, sentence)`` pairs of a few scenes of the built-in synthetic benchmark (split ``"demo"``, seed 0),
    written into ``folder``: PNG images, or for ``video=True`` MP4 clips (mp4v, which OpenCV reads back)."""
    import cv2

    from cmpc.data.synthetic import generate_image_sample, generate_video_sample

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for i in range(count):
        make = generate_video_sample if video else generate_image_sample
        sample = make(0, "demo", i, image_size=image_size)
        sentence = next(r.sentences[0] for r in sample.refs if r.target is not None)
        if video:
            path = folder / f"synthetic_clip_{i}.mp4"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 4, (image_size, image_size))
            for frame in sample.frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            writer.release()
        else:
            path = folder / f"synthetic_{i}.png"
            cv2.imwrite(str(path), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
        examples.append((str(path), sentence))
    return examples
