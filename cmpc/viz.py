"""Pictures for people: mask overlays with a caption strip, PNG/GIF writers, word-type bar charts.

Not a metric protocol; nothing here affects evaluation numbers.  Everything returns or takes RGB uint8
``H x W x 3`` numpy arrays.  matplotlib is used only through its Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

__all__ = ["enlarged", "fit", "grid", "overlay", "save_png", "title_strip", "word_type_bars", "word_type_panels",
           "write_gif"]


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _rgb(image: Any) -> np.ndarray:
    img = _as_numpy(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"image must be H x W x 3 (or H x W), got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    return np.ascontiguousarray(img[..., :3])


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 (bitmap font only)
        return ImageFont.load_default()


def _wrap(text: str, font: Any, max_width: int) -> list[str]:
    """Greedy word wrap by measured width; words longer than a line are split by characters."""
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def width(s: str) -> float:
        return draw.textlength(s, font=font)

    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            while width(word) > max_width and len(word) > 1:  # split an over-long word
                cut = len(word) - 1
                while cut > 1 and width(word[:cut]) > max_width:
                    cut -= 1
                if line:
                    lines.append(line)
                    line = ""
                lines.append(word[:cut])
                word = word[cut:]
            candidate = f"{line} {word}" if line else word
            if width(candidate) <= max_width:
                line = candidate
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


def title_strip(title: str, width: int, background=(255, 255, 255), color=(0, 0, 0),
                size: int | None = None) -> np.ndarray:
    """An RGB strip ``width`` pixels wide holding ``title``, wrapped over as many lines as needed; font ``size``
    in pixels (default: ``width / 28`` within 9-28)."""
    from PIL import Image, ImageDraw

    size = int(np.clip(width / 28, 9, 28)) if size is None else int(size)
    font = _font(size)
    pad = max(2, size // 3)
    lines = _wrap(title, font, max(1, width - 2 * pad))
    line_h = int(size * 1.25)
    strip = Image.new("RGB", (width, 2 * pad + line_h * len(lines)), tuple(background))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * line_h), line, fill=tuple(color), font=font)
    return np.asarray(strip, dtype=np.uint8)


def overlay(
    image: Any,
    mask: Any,
    color: Sequence[int] = (255, 0, 0),
    alpha: float = 0.5,
    title: str | None = None,
) -> np.ndarray:
    """``image`` with ``mask`` tinted by ``color`` (opacity ``alpha``) and outlined; optional title strip on top.

    Returns a new uint8 array: ``H x W x 3``, or ``(H + strip) x W x 3`` with a title.
    """
    import cv2

    img = _rgb(image)
    m = _as_numpy(mask)
    if m.shape != img.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match image size {img.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    m = m.astype(bool)
    col = np.asarray(color, dtype=np.float32).reshape(3)
    out = img.astype(np.float32)
    out[m] = (1.0 - alpha) * out[m] + alpha * col
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if m.any():
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        thickness = max(1, round(min(img.shape[:2]) / 200))
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in col), thickness)
    if title:
        out = np.concatenate([title_strip(title, out.shape[1]), out], axis=0)
    return out


def enlarged(picture: np.ndarray | None, side: int = 384) -> np.ndarray | None:
    """``picture`` enlarged by the whole factor that brings its longer side closest to ``side`` from below
    (nearest neighbour; never shrunk), so that small pictures (the synthetic scenes are 128 px) are readable on
    a page. For display only: nothing is computed on it."""
    import cv2

    if picture is None:
        return None
    factor = max(1, side // max(picture.shape[:2]))
    return picture if factor == 1 else cv2.resize(picture, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def fit(picture: np.ndarray, side: int) -> np.ndarray:
    """``picture`` (RGB uint8) with its longer side brought to at most ``side`` pixels, aspect kept: a smaller one
    :func:`enlarged` by a whole factor, a larger one shrunk (area averaging) to exactly ``side``."""
    import cv2

    longest = max(picture.shape[:2])
    if longest <= side:
        return enlarged(picture, side)
    h, w = (max(1, round(n * side / longest)) for n in picture.shape[:2])
    return cv2.resize(picture, (w, h), interpolation=cv2.INTER_AREA)


def grid(pictures: Sequence[Any], columns: int, gap: int = 4, background: int = 255) -> np.ndarray:
    """RGB uint8 pictures laid out row by row, ``columns`` per row, in cells as large as the largest picture
    (each one at its cell's top left, the rest ``background``), ``gap`` pixels apart. Raises ``ValueError``
    for no pictures or ``columns < 1``."""
    if not pictures:
        raise ValueError("grid needs at least one picture")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    arrays = [_rgb(p) for p in pictures]
    cell_h, cell_w = max(a.shape[0] for a in arrays), max(a.shape[1] for a in arrays)
    columns = min(columns, len(arrays))
    rows = -(-len(arrays) // columns)
    out = np.full((rows * cell_h + (rows - 1) * gap, columns * cell_w + (columns - 1) * gap, 3), background, np.uint8)
    for i, a in enumerate(arrays):
        y, x = (i // columns) * (cell_h + gap), (i % columns) * (cell_w + gap)
        out[y:y + a.shape[0], x:x + a.shape[1]] = a
    return out


def save_png(path: str | os.PathLike, array: Any) -> None:
    """Write an RGB/RGBA/grey uint8 array (bool masks become 0/255) as PNG; creates parent folders."""
    from PIL import Image

    a = _as_numpy(array)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8 or bool, got {a.dtype}")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"save_png expects H x W, H x W x 3 or H x W x 4, got shape {a.shape}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.ascontiguousarray(a)).save(path, format="PNG")


def word_type_bars(
    words: Sequence[str],
    probs: Any,
    type_names: Sequence[str],
    title: str | None = None,
    dpi: int = 100,
) -> np.ndarray:
    """Stacked bars of each word's soft type distribution (``probs``: ``[T, n_types]``, one row per word).

    The model left-pads ``word_probs``: pass ``probs[-len(words):]``.  Returns an RGB uint8 array.
    """
    return word_type_panels([(words, probs, title)], type_names, dpi=dpi)


def word_type_panels(
    panels: Sequence[tuple[Sequence[str], Any, str | None]],
    type_names: Sequence[str],
    dpi: int = 100,
) -> np.ndarray:
    """:func:`word_type_bars` of several sentences in one figure, one under the other with one legend (bars of
    one width in every panel): ``panels`` holds ``(words, probs [T, n_types], title or None)``. Drawing one
    figure instead of one per sentence saves most of matplotlib's layout time. Returns an RGB uint8 array.
    Raises ``ValueError`` for no panels or a ``probs`` that does not fit its words and ``type_names``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("word_type_panels needs at least one (words, probs, title) panel")
    arrays = []
    for words, probs, _ in panels:
        p = _as_numpy(probs).astype(np.float64)
        if p.ndim != 2 or p.shape[1] != len(type_names):
            raise ValueError(f"probs must be [T, {len(type_names)}] (one column per type name), got shape {p.shape}")
        if p.shape[0] != len(words):
            raise ValueError(
                f"probs has {p.shape[0]} rows but there are {len(words)} words; for left-padded model outputs "
                "pass probs[-len(words):]"
            )
        arrays.append(p)
    longest = max(len(words) for words, _, _ in panels)
    fig = Figure(figsize=(max(3.0, 0.6 * longest + 1.8), 2.6 * len(panels)), dpi=dpi)
    FigureCanvasAgg(fig)
    for row, ((words, _, title), p) in enumerate(zip(panels, arrays)):
        ax = fig.add_subplot(len(panels), 1, row + 1)
        x = np.arange(len(words))
        bottom = np.zeros(len(words))
        for k, name in enumerate(type_names):
            ax.bar(x, p[:, k], bottom=bottom, label=str(name), width=0.75)
            bottom += p[:, k]
        ax.set_xticks(x)
        ax.set_xticklabels([str(w) for w in words], rotation=45, ha="right", fontsize=8)
        ax.set_xlim(-0.5, longest - 0.5)
        ax.set_ylim(0, max(1.0, float(bottom.max(initial=0.0))))
        ax.set_ylabel("probability", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        if title:
            ax.set_title(title, fontsize=9)
        if row == 0:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def write_gif(path: str | os.PathLike, frames: Sequence[Any], fps: float = 4) -> None:
    """Write RGB uint8 frames (same size) as a looping GIF.

    Pillow merges *identical consecutive* frames into one longer frame, so a GIF of repeated frames holds fewer.
    """
    from PIL import Image

    if not frames:
        raise ValueError("write_gif needs at least one frame")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    arrays = [_rgb(f) for f in frames]
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"all frames must have the same size, got {sorted({a.shape for a in arrays})}")
    images = [Image.fromarray(a) for a in arrays]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    images[0].save(
        path, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0
    )

