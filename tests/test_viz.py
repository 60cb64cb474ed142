"""cmpc.viz: overlays, title strip, PNG/GIF writers, word-type bar chart."""

import numpy as np
import pytest
from PIL import Image

from cmpc.viz import overlay, save_png, word_type_bars, write_gif


def scene(h=60, w=80):
    img = np.full((h, w, 3), 100, np.uint8)
    mask = np.zeros((h, w), bool)
    mask[20:40, 30:60] = True
    return img, mask


def test_overlay_tints_mask_only():
    img, mask = scene()
    out = overlay(img, mask, color=(255, 0, 0), alpha=0.5)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert tuple(out[30, 45]) == (178, 50, 50)  # inside, away from the contour
    assert tuple(out[5, 5]) == (100, 100, 100)  # outside untouched
    assert tuple(out[20, 40]) == (255, 0, 0)  # contour drawn in full colour
    assert img[30, 45, 0] == 100  # input not modified
    with pytest.raises(ValueError):
        overlay(img, mask[:10])


def test_title_strip_on_top_and_wraps():
    img, mask = scene()
    plain = overlay(img, mask)
    short = overlay(img, mask, title="man")
    long = overlay(img, mask, title="the man in a red shirt standing to the left of the tall tree " * 3)
    assert short.shape[1:] == img.shape[1:] and short.shape[0] > img.shape[0]
    np.testing.assert_array_equal(short[-img.shape[0] :], plain)  # image kept under the strip
    strip = short[: short.shape[0] - img.shape[0]]
    assert strip.min() < 100 and (strip == 255).any()  # dark text on white
    assert long.shape[0] > short.shape[0]  # wrapped over several lines, width unchanged
    assert overlay(np.zeros((6, 6, 3), np.uint8), np.ones((6, 6), bool), title="tiny image").shape[1] == 6


def test_save_png_roundtrip(tmp_path):
    img, mask = scene()
    path = tmp_path / "sub" / "o.png"
    save_png(path, overlay(img, mask))
    back = np.asarray(Image.open(path))
    np.testing.assert_array_equal(back, overlay(img, mask))
    save_png(tmp_path / "m.png", mask)
    assert np.asarray(Image.open(tmp_path / "m.png")).max() == 255


def test_word_type_bars():
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]])
    arr = word_type_bars(["man", "in", "red"], probs, ["entity", "relation", "attribute"])
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8
    assert arr.std() > 0
    with pytest.raises(ValueError, match="probs"):
        word_type_bars(["man"], probs, ["entity", "relation", "attribute"])


def test_write_gif_frame_count(tmp_path):
    frames = [np.full((16, 24, 3), 40 * i, np.uint8) for i in range(5)]
    path = tmp_path / "clip.gif"
    write_gif(path, frames, fps=5)
    with Image.open(path) as im:
        assert im.n_frames == 5
        assert im.size == (24, 16)
        assert im.info.get("duration") == 200
