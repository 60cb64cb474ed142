"""Full-video inference and evaluation for referring video segmentation (CMPC-V, docs/video.md).

A CMPC-V model segments the centre frame of a clip. To segment a whole video, every frame f of an
expression becomes the centre of its own clip, taken with the dataset's frame offsets and clamped at
the ends of the video (:func:`cmpc.data.base.clip_indices`, the layout used in training); frames are
batched. Each frame is read and letterboxed once per expression. Predictions are brought back to the
original frame size (un-pad + bilinear on the logits, threshold 0), as in the image protocol.

:func:`evaluate_videos` scores every annotated frame of every expression of a split that has masks:

- ``jf`` / ``jf_by_kind``: region similarity J, boundary F and J&F (DAVIS-2017 protocol of
  Ref-YouTube-VOS, :class:`cmpc.metrics.VideoJF`: means over expressions);
- ``metrics`` / ``by_kind``: the CMPC-V frame-level metrics (:meth:`cmpc.metrics.RefSegMetrics.video`:
  Prec@0.50:0.05:0.95, mAP, overall and mean IoU) with every (expression, frame) pair as a sample.

Splits without masks (the real Refer-YouTube-VOS ``valid``) go through :func:`write_video_submission`
(server zip). Single process: no DDP sharding here.
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from cmpc.data import VideoExpression, write_submission
from cmpc.data.base import clip_indices
from cmpc.engine.precision import autocast
from cmpc.errors import DatasetError
from cmpc.metrics import RefSegMetrics, VideoJF
from cmpc.models.functional import upsample_logits

log = logging.getLogger(__name__)


def _frames_of(expression: VideoExpression, letterbox):
    """``frame(j) -> (letterboxed [3, S, S], (h, w))``, reading every frame of the video at most once."""
    n, offsets = len(expression.frames), expression.dataset.offsets
    cache: dict[int, tuple[torch.Tensor, tuple[int, int]]] = {}

    def frame(j: int):
        if j not in cache:
            images, _ = expression.clip_at(j)  # frames clip_indices(j, n, offsets), all cached on the way
            for index, image in zip(clip_indices(j, n, offsets), images):
                if index not in cache:
                    cache[index] = (letterbox.image(image), image.shape[:2])
        return cache[j]

    return frame


@torch.no_grad()
def segment_frames(model, frame, n: int, offsets, words: torch.Tensor, letterbox, device, *,
                   batch_size: int = 8, amp: str = "off") -> list[np.ndarray]:
    """Bool masks at original size for frames ``0..n-1``: frame ``i`` is the centre of the clip
    ``clip_indices(i, n, offsets)``; ``frame(j) -> (letterboxed [3, S, S], (h, w))``; ``words [T]``."""
    device = torch.device(device)
    size = (letterbox.size, letterbox.size)
    masks: list[np.ndarray] = []
    for start in range(0, n, batch_size):
        centres = range(start, min(start + batch_size, n))
        clips = torch.stack([torch.stack([frame(j)[0] for j in clip_indices(i, n, offsets)]) for i in centres])
        if clips.shape[1] == 1:  # single frames: [B, 3, S, S] suits image and video models alike
            clips = clips[:, 0]
        tokens = words.to(device)[None].expand(len(centres), -1)
        with autocast(device, amp):
            logits = model(clips.to(device), tokens)["logits"]
        scores = upsample_logits(logits.float(), size)[:, 0].cpu()
        masks += [(letterbox.invert(s, frame(i)[1]) >= 0).numpy() for s, i in zip(scores, centres)]
    return masks


def segment_video(model, expression: VideoExpression, letterbox, device, *, words: torch.Tensor | None = None,
                  batch_size: int = 8, amp: str = "off") -> list[np.ndarray]:
    """Bool masks at original size, one per frame of ``expression.frames``, each predicted from the clip
    centred on that frame. ``words [T]`` defaults to the sentence encoded with the dataset's vocabulary."""
    ds = expression.dataset
    if words is None:
        words = ds.vocab.encode(expression.sentence, ds.max_words,
                                sample_id=f"{expression.video_id}/{expression.exp_id}")
    return segment_frames(model, _frames_of(expression, letterbox), len(expression.frames), ds.offsets, words,
                          letterbox, device, batch_size=batch_size, amp=amp)


def _expressions(dataset, split, limit) -> Iterator[VideoExpression]:
    for k, expression in enumerate(dataset.iter_expressions(split)):
        if limit is not None and k >= limit:
            return
        yield expression


def evaluate_videos(
    model,
    dataset,
    device,
    *,
    split: str | None = None,
    batch_size: int = 8,
    amp: str = "off",
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """J&F and frame-level metrics of ``model`` over every expression of ``split`` (default: the dataset's).

    Returns ``{"jf", "jf_by_kind", "metrics", "by_kind", "expressions", "without_gt", "unreadable"}``;
    expressions of videos without masks are counted in ``without_gt`` and skipped, those with a frame or mask
    that cannot be read in ``unreadable`` (the reason logged). ``limit`` caps the expressions."""
    model.eval()
    jf, frames = VideoJF(), RefSegMetrics.video()
    without_gt, unreadable = 0, 0
    for expression in tqdm(_expressions(dataset, split, limit), desc="videos", disable=not progress, leave=False):
        try:
            gts = expression.gt_masks()
            if gts is None:
                without_gt += 1
                continue
            preds = segment_video(model, expression, dataset.letterbox, device, batch_size=batch_size, amp=amp)
        except DatasetError as e:
            log.warning("expression %s/%s skipped: %s", expression.video_id, expression.exp_id, e)
            unreadable += 1
            continue
        jf.update(preds, gts, kind=expression.kind)
        for pred, gt in zip(preds, gts):
            frames.update(pred, gt, kind=expression.kind)
    return {"jf": jf.compute(), "jf_by_kind": jf.compute_by_kind(), "metrics": frames.compute(),
            "by_kind": frames.compute_by_kind(), "expressions": len(jf), "without_gt": without_gt,
            "unreadable": unreadable}


def write_video_submission(model, dataset, device, out_zip, *, split: str | None = None, batch_size: int = 8,
                           amp: str = "off", progress: bool = True) -> int:
    """Predict every frame of every expression of ``split`` into a Refer-YouTube-VOS server zip; returns the
    number of PNGs (:func:`cmpc.data.write_submission` checks that no frame is missing)."""
    model.eval()
    expressions = list(dataset.iter_expressions(split))

    def predictions():
        for e in tqdm(expressions, desc="videos", disable=not progress, leave=False):
            masks = segment_video(model, e, dataset.letterbox, device, batch_size=batch_size, amp=amp)
            yield from ((e.video_id, e.exp_id, f, m) for f, m in zip(e.frames, masks))

    return write_submission(predictions(), out_zip, expected=expressions)
