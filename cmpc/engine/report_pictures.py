"""Pictures of what a trained model does, for the run directory and TensorBoard (README "What the main job prints").

- ``predictions.png`` (:func:`write_report_pictures`, after the test evaluation of best.pt): one row per expression
  kind (kinds sorted by name; a dataset without kinds gives one row), :data:`PER_KIND` successes (IoU >=
  :data:`SUCCESS`, the prec@0.5 threshold) then :data:`PER_KIND` failures (IoU < :data:`SUCCESS`) per row. Both
  are the *first* such samples in dataset order (sentence order of the split, the order ``evaluate`` reports
  them in), so the same run always shows the same samples; a kind with too few successes or failures shows a
  blank tile saying so. Each tile: the image (a clip's annotated centre frame), the predicted mask tinted red,
  the ground truth outlined green, and a caption with the kind, the IoU of the evaluation and the sentence.
- ``word_types.png``: the word-type probabilities of eq. 1 (the paper's figure 5) of the first sentence of each
  row of ``predictions.png``, one stacked-bar chart per sentence (:func:`cmpc.explain.word_types_figure`); not
  written for a model without a word classifier.
- ``val/prediction_i`` in TensorBoard (:func:`log_predictions`): the first validation samples at each validation.

The masks are predicted again for the few samples shown (one batch, the evaluation protocol of
:mod:`cmpc.engine.evaluate`); the IoUs are the evaluation's own (``evaluate(..., per_sample=True)``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np
import torch

from cmpc.data import collate
from cmpc.data.base import RawSample
from cmpc.engine.evaluate import predict_logits
from cmpc.explain import read_words, sentence_words, word_types_figure
from cmpc.viz import fit, grid, overlay, save_png, title_strip

log = logging.getLogger(__name__)

SUCCESS = 0.5  # IoU from which a prediction counts as a success (the prec@0.5 threshold)
PER_KIND = 2  # successes, and failures, shown per kind
TILE = 256  # pixels: longer side of each tile's picture
PREDICTED, TRUTH = (255, 40, 40), (40, 220, 40)  # predicted mask (tinted), ground truth (outline)
FONT = 14  # pixels: captions (the title above the grid is larger)


@dataclass(frozen=True)
class Shown:
    """One tile: dataset position ``index``, expression ``kind`` (None without kinds) and the evaluation's IoU."""

    index: int
    kind: Hashable | None
    iou: float


def pick(samples: dict, per_kind: int = PER_KIND, threshold: float = SUCCESS) -> list[list[Shown | None]]:
    """The rows of ``predictions.png`` from ``evaluate(..., per_sample=True)["samples"]``: per kind (sorted by
    name), the first ``per_kind`` samples in dataset order with IoU >= ``threshold``, then the first
    ``per_kind`` with IoU < ``threshold``, None where there are fewer. ``[]`` when nothing was evaluated."""
    order = np.argsort(np.asarray(samples["index"]), kind="stable")
    by_kind: dict = {}
    for i in order:
        by_kind.setdefault(samples["kind"][i], []).append(Shown(int(samples["index"][i]), samples["kind"][i],
                                                                 float(samples["iou"][i])))
    rows = []
    for kind in sorted(by_kind, key=str):
        good = [s for s in by_kind[kind] if s.iou >= threshold][:per_kind]
        bad = [s for s in by_kind[kind] if s.iou < threshold][:per_kind]
        rows.append(good + [None] * (per_kind - len(good)) + bad + [None] * (per_kind - len(bad)))
    return rows


@torch.no_grad()
def predict_masks(model, dataset, indices: Sequence[int], device, amp: str = "off") -> list[tuple[int, RawSample,
                                                                                               np.ndarray]]:
    """``(index, raw sample, predicted bool mask [H, W] at the picture's size)`` of the readable samples among
    ``indices`` (unreadable ones are left out; the reason is logged), one forward pass: logits upsampled to the
    letterboxed input, mapped back to the picture, logit >= 0, as :func:`cmpc.engine.evaluate.evaluate` does.
    Call with the model in eval mode."""
    raws = [(i, raw) for i, raw in ((i, dataset.try_load(i)) for i in indices) if isinstance(raw, RawSample)]
    if not raws:
        return []
    logits = predict_logits(model, collate([dataset.to_model_sample(raw) for _, raw in raws]), device, amp)
    return [(i, raw, (dataset.letterbox.invert(score, raw.frames[raw.center].shape[:2]) >= 0).numpy())
            for (i, raw), score in zip(raws, logits)]


def log_predictions(writer, model, dataset, device, step: int, count: int = 4) -> None:
    """The first ``count`` samples of ``dataset`` (mask over the image, sentence as title) as TensorBoard images
    ``val/prediction_i``. Call with the model in eval mode."""
    for i, (_, raw, mask) in enumerate(predict_masks(model, dataset, range(min(count, len(dataset))), device)):
        picture = overlay(raw.frames[raw.center], mask, title=raw.sentence)
        writer.add_image(f"val/prediction_{i}", picture, step, dataformats="HWC")


def _caption(shown: Shown, sentence: str) -> str:
    kind = "" if shown.kind is None else f"{shown.kind}, "
    return f"{kind}IoU {shown.iou:.2f}\n{sentence}"


def prediction_tile(raw: RawSample, mask: np.ndarray, side: int = TILE) -> np.ndarray:
    """The picture (a clip's centre frame) with ``mask`` tinted red and the ground truth outlined green, its
    longer side brought to ``side`` (:func:`cmpc.viz.fit`). RGB uint8."""
    frame = raw.frames[raw.center]
    truth = np.zeros(frame.shape[:2], bool) if raw.mask is None else raw.mask
    return fit(overlay(overlay(frame, mask, color=PREDICTED, alpha=0.45), truth, color=TRUTH, alpha=0.0), side)


def predictions_picture(rows: list[list[Shown | None]], predicted: dict[int, tuple[RawSample, np.ndarray]],
                        title: str, per_kind: int = PER_KIND) -> np.ndarray:
    """The grid of ``predictions.png``: ``rows`` from :func:`pick`, ``predicted`` from :func:`predict_masks`
    (keyed by index; a sample missing there shows as a blank tile), each tile under its caption (captions padded
    to one height, so that the pictures line up), ``title`` above the grid."""
    tiles = []
    for row in rows:
        kind = next((s.kind for s in row if s is not None), None)
        named = "" if kind is None else f"{kind} "
        for column, shown in enumerate(row):
            if shown is None or shown.index not in predicted:
                side = f">= {SUCCESS}" if column < per_kind else f"< {SUCCESS}"
                caption = f"no {named}sample with IoU {side}" if shown is None else "unreadable sample"
                tiles.append((caption, np.full((TILE, TILE, 3), 255, np.uint8)))
            else:
                raw, mask = predicted[shown.index]
                tiles.append((_caption(shown, raw.sentence), prediction_tile(raw, mask)))
    strips = [title_strip(caption, picture.shape[1], size=FONT) for caption, picture in tiles]
    height = max(strip.shape[0] for strip in strips)
    padded = [np.pad(strip, ((0, height - strip.shape[0]), (0, 0), (0, 0)), constant_values=255) for strip in strips]
    body = grid([np.concatenate([strip, picture]) for strip, (_, picture) in zip(padded, tiles)],
                columns=2 * per_kind, gap=6)
    return np.concatenate([title_strip(title, body.shape[1], size=FONT + 4), body])


@torch.no_grad()
def word_types_picture(model, dataset, shown: Sequence[tuple[Shown, RawSample]], device) -> np.ndarray | None:
    """Word-type charts (eq. 1) of the ``shown`` samples' sentences, one under the other
    (:func:`cmpc.explain.word_types_figure`); None for a model without a word classifier."""
    sentences = []
    for s, raw in shown:
        tokens, words, known = read_words(dataset.vocab, raw.sentence, dataset.max_words)
        probs = model.encode_language(tokens[None].to(device)).probs  # eq. 1 depends on the words alone
        title = raw.sentence if s.kind is None else f"{s.kind}: {raw.sentence}"
        sentences.append((sentence_words(words, known, model.word_types, probs), title))
    return word_types_figure(sentences)


def write_report_pictures(model, dataset, samples: dict, run_dir: str | Path, device, *, amp: str = "off",
                          writer=None, step: int = 0, title: str = "") -> dict[str, Path]:
    """Write ``predictions.png`` and ``word_types.png`` (see the module docstring) into ``run_dir`` and, with a
    TensorBoard ``writer``, log them as ``test/predictions`` and ``test/word_types`` at ``step``. ``samples``:
    ``evaluate(..., per_sample=True)["samples"]`` of ``dataset``. Returns ``{name: path}`` of the files written
    (``{}`` when nothing was evaluated). Leaves the model in eval mode."""
    model.eval()
    rows = pick(samples)
    chosen = [s for row in rows for s in row if s is not None]
    if not chosen:
        log.info("no picture of the predictions: no test sample was evaluated")
        return {}
    predicted = {i: (raw, mask) for i, raw, mask in predict_masks(model, dataset, [s.index for s in chosen],
                                                                   device, amp)}
    legend = (f"{title}: red = predicted mask, green outline = ground truth; per row the first {PER_KIND} samples "
              f"(dataset order) with IoU >= {SUCCESS}, then the first {PER_KIND} below")
    written = {"predictions": Path(run_dir) / "predictions.png"}
    pictures = {"predictions": predictions_picture(rows, predicted, legend)}
    firsts = []  # the first tile of each row, as its sentence reads
    for row in rows:
        first = next((s for s in row if s is not None and s.index in predicted), None)
        if first is not None:
            firsts.append((first, predicted[first.index][0]))
    chart = word_types_picture(model, dataset, firsts, device)
    if chart is None:
        log.info("no word_types.png: %s", "no readable test sample" if not firsts else
                 "this model has no word classifier (eq. 1)")
    else:
        written["word_types"] = Path(run_dir) / "word_types.png"
        pictures["word_types"] = chart
    for name, path in written.items():
        save_png(path, pictures[name])
        if writer is not None:
            writer.add_image(f"test/{name}", pictures[name], step, dataformats="HWC")
    return written
