"""The web demo: what cmpc.demo computes from a tiny checkpoint, and the page itself in a real browser."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from demo_fixtures import tiny_checkpoint
from PIL import Image

from cmpc.demo import (
    as_rgb,
    attention_pictures,
    clip_page,
    image_page,
    load_demo_model,
    read_clip,
    segment_image,
    synthetic_examples,
)
from cmpc.explain import capture_reasoning, outgoing_attention, reasoning_graphs, word_type_chart, word_type_rows
from cmpc.viz import enlarged


@pytest.fixture(scope="module")
def image_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "image.pt")


@pytest.fixture
def dm(image_ckpt):
    return load_demo_model(image_ckpt)


def constant_head(dm, bias: float) -> None:
    """Make the final logits ``bias`` everywhere (the mask is then all or nothing)."""
    with torch.no_grad():
        dm.model.head.weight.zero_()
        dm.model.head.bias.fill_(bias)


def picture(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_outgoing_attention_is_the_region_weighted_mean_row():
    a = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.0, 0.0, 1.0]])
    assert torch.allclose(outgoing_attention(a, torch.tensor([1.0, 0.0, 1.0])), torch.tensor([0.0, 0.5, 0.5]))
    assert torch.allclose(outgoing_attention(a, torch.tensor([0.0, 0.25, 0.0])), a[1])  # weights, not counts
    with pytest.raises(ValueError, match="empty"):
        outgoing_attention(a, torch.zeros(3))


def test_capture_gives_each_rar_level_a_row_stochastic_graph_and_then_lets_go(dm):
    x, words = torch.zeros(1, 3, 64, 64), dm.vocab.encode("the red circle left of the square", 20)[None]
    with capture_reasoning(dm.model) as captured, torch.no_grad():
        dm.model(x, words)
        graphs = reasoning_graphs(dm.model, captured)
    assert list(graphs) == ["res3", "res4", "res5"]
    for adjacency, (h, w) in graphs.values():
        assert adjacency.shape == (1, h * w, h * w)
        assert torch.allclose(adjacency.sum(-1), torch.ones(1, h * w), atol=1e-5)
    captured.clear()
    with torch.no_grad():
        dm.model(x, words)
    assert captured == {}  # the hooks are gone


def test_the_mask_follows_the_logit_sign_at_the_size_of_the_picture(dm):
    constant_head(dm, 5.0)
    full = segment_image(dm, picture(50, 90), "the red circle")
    assert full.mask.shape == (50, 90) and full.mask.all()
    assert np.allclose(full.probability, 1 / (1 + np.exp(-5.0)), atol=1e-4)
    assert [m.source for m in full.attention] == ["mask"] * 3
    constant_head(dm, -5.0)
    empty = segment_image(dm, picture(50, 90), "the red circle")
    assert not empty.mask.any()
    assert [m.source for m in empty.attention] == ["probability"] * 3  # an empty mask sends nothing


def test_an_attention_map_puts_the_edge_mass_where_the_graph_sends_it(dm):
    """Every RAR row sends all its mass to the top-left cell: the map is N times uniform there, 0 elsewhere."""
    constant_head(dm, 5.0)
    for level in dm.model.levels:
        def to_first_cell(multimodal, *_):
            n = multimodal.shape[-2] * multimodal.shape[-1]
            a = torch.zeros(1, n, n)
            a[..., 0] = 1.0
            return a
        level.reasoning.adjacency = to_first_cell
    result = segment_image(dm, picture(64, 64), "the circle")  # square: no letterbox padding
    for m in result.attention:
        h, w = m.grid
        cell = (64 // h, 64 // w)
        assert m.heat[: cell[0] // 2, : cell[1] // 2].min() > 0.9 * h * w * 0.5  # bilinear, inside the first cell
        assert m.heat[cell[0] * 2:, :].max() < 1e-3 and m.heat[:, cell[1] * 2:].max() < 1e-3
    pictures = attention_pictures(result)
    assert [p.shape for p, _ in pictures] == [(64, 64, 3)] * 3
    assert all("x uniform" in caption for _, caption in pictures)


def test_without_rar_there_is_no_attention_map_and_without_a_classifier_no_word_types(tmp_path):
    dm = load_demo_model(tiny_checkpoint(tmp_path / "no_rar.pt", extra=["model.relation_aware_reasoning=false"]))
    assert segment_image(dm, picture(32, 32), "the circle").attention == []
    baseline = load_demo_model(tiny_checkpoint(tmp_path / "baseline.pt", extra=["model=baseline"]))
    overlay, chart, rows, pictures, status = image_page(baseline, picture(32, 32), "the circle")
    assert overlay.shape == (32, 32, 3) and (chart, rows, pictures) == (None, [], [])
    assert not status.startswith("error"), status


def test_the_picture_is_the_one_a_viewer_shows(dm, tmp_path):
    stored = picture(40, 80)  # H x W as stored; EXIF orientation 6: shown rotated 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    Image.fromarray(stored).save(path, exif=exif)
    shown = np.rot90(stored, k=-1)
    assert np.array_equal(as_rgb(path), shown)
    with Image.open(path) as im:
        assert np.array_equal(as_rgb(im), shown)
    assert segment_image(dm, path, "the circle").mask.shape == (80, 40)


def test_word_types_have_one_row_per_word_and_mark_unknown_words(dm):
    result = segment_image(dm, picture(32, 32), "The red zebra.")
    words = result.words
    assert words.words == ["the", "red", "zebra"] and words.known == [True, True, False]
    assert words.types == ("entity", "attribute", "relation", "unnecessary")
    tokens = dm.vocab.encode("The red zebra.", 20)[None]
    with torch.no_grad():
        expected = dm.model.encode_language(tokens).probs[0, -3:].numpy()
    assert np.allclose(words.probs, expected, atol=1e-6) and np.allclose(words.probs.sum(1), 1, atol=1e-5)
    assert [row[0] for row in word_type_rows(words)] == ["the", "red", "zebra*"]
    assert word_type_chart(words).ndim == 3
    long = segment_image(dm, picture(32, 32), " ".join(["red"] * 25)).words
    assert len(long.words) == 20 == len(long.probs)  # the model reads max_words words


def test_bad_input_gives_one_error_line_and_no_pictures(dm, tmp_path):
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cases = [
        (None, picture(8, 8), "x", "no checkpoint loaded"),
        (dm, None, "the circle", "no image"),
        (dm, corrupt, "the circle", "cannot read image"),
        (dm, tmp_path / "missing.png", "the circle", "missing image file"),
        (dm, picture(8, 8), "  . ", "the sentence is empty"),
        (dm, np.zeros((8, 8, 3), np.float32), "the circle", "uint8"),
    ]
    for model, image, sentence, expected in cases:
        *outputs, status = image_page(model, image, sentence)
        assert status.startswith("error: ") and expected in status and "\n" not in status, status
        assert outputs[:2] == [None, None] and outputs[2:] == [[], []]


def test_a_model_failure_is_one_line_too_and_the_traceback_goes_to_the_log(dm, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")
    dm.model.forward = broken
    *outputs, status = image_page(dm, picture(8, 8), "the circle")
    assert status == "error: the model failed on this input (RuntimeError: boom second line)"
    assert "Traceback" in caplog.text and outputs[0] is None


def test_densecrf_refines_the_mask_when_asked(dm):
    constant_head(dm, 5.0)  # p = 0.993 everywhere: the unary term keeps every pixel
    overlay, chart, rows, pictures, status = image_page(dm, picture(40, 60), "the circle", crf=True)
    assert status.startswith("2400 pixels (100.0%) selected after DenseCRF")
    assert overlay.shape == (40, 60, 3) and len(rows) == 2 and len(pictures) == 3


@pytest.fixture(scope="module")
def video_dm(tmp_path_factory):
    return load_demo_model(tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "video.pt", video=True))


def test_a_clip_becomes_an_overlay_gif_frame_by_frame(video_dm, tmp_path):
    assert video_dm.video and video_dm.offsets == [-1, 0, 1]
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (2, 0, 3, 1):  # written out of order: frames go by file name
        Image.fromarray(np.full((24, 32, 3), 60 * i, np.uint8)).save(folder / f"{i:05d}.png")
    files = sorted(folder.iterdir(), reverse=True)
    assert [int(f[0, 0, 0]) for f in read_clip(files)] == [0, 60, 120, 180]
    gif, chart, status = clip_page(video_dm, files, "the red ball moving left", tmp_path)
    assert status.startswith("segmented 4 frames"), status
    with Image.open(gif) as im:
        assert im.size == (12 * 32, 12 * 24) and im.n_frames == 4  # enlarged 12 times for the page
    assert chart is not None
    *_, too_long = clip_page(video_dm, files, "the ball", tmp_path, max_frames=3)
    assert too_long.startswith("error: the clip has 4 frames") and "demo.max_frames" in too_long
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(folder / "00009.png")
    *_, mixed = clip_page(video_dm, sorted(folder.iterdir()), "the ball", tmp_path)
    assert mixed == "error: the frames differ in size; upload the frames of one video"


def test_pictures_are_enlarged_by_whole_factors_for_the_page_only():
    small = picture(20, 30)
    big = enlarged(small, side=100)  # 100 // 30 = 3
    assert big.shape == (60, 90, 3) and np.array_equal(big[::3, ::3], small)
    assert enlarged(picture(200, 120)) is not None and enlarged(picture(400, 10)).shape == (400, 10, 3)
    assert enlarged(None) is None


def test_synthetic_examples_are_readable_scenes_with_sentences(tmp_path):
    images = synthetic_examples(tmp_path, 2, image_size=48)
    assert [as_rgb(p).shape for p, _ in images] == [(48, 48, 3)] * 2 and all(s.strip() for _, s in images)
    clips = synthetic_examples(tmp_path, 1, video=True, image_size=48)
    assert [f.shape for f in read_clip([clips[0][0]])] == [(48, 48, 3)] * 8


def _browser_missing() -> str | None:
    from demo_browser import chromium_path

    for module, install in (("gradio", 'pip install -e ".[demo]"'), ("playwright", 'pip install -e ".[dev]"')):
        if importlib.util.find_spec(module) is None:
            return f"the browser test needs {module}: {install}"
    if chromium_path() is None:
        return "no Chromium to drive: apt-get install chromium (or set CMPC_CHROMIUM)"
    return None


@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
def test_the_page_segments_an_upload_in_a_real_browser(image_ckpt, tmp_path):
    from demo_browser import free_port, segment_in_browser, start_demo, stop_demo, wait_until_serving

    image = tmp_path / "upload.png"
    Image.fromarray(picture(48, 64)).save(image)
    port = free_port()
    process = start_demo(image_ckpt, tmp_path, port, "demo.examples=1")
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/", process)
        assert len(list((tmp_path / "tmp").glob("cmpc_demo_*"))) == 1  # examples and GIFs live here while it runs
        taken = subprocess.run([sys.executable, "scripts/demo.py", f"checkpoint={image_ckpt}", f"demo.port={port}",
                                "demo.examples=0", f"paths.runs={tmp_path / 'runs'}"], cwd=ROOT, capture_output=True,
                               text=True, timeout=120)
        seen = segment_in_browser(f"http://127.0.0.1:{port}/", image, "the red zebra", tmp_path / "page.png")
    finally:
        stop_demo(process)
    assert taken.returncode == 2, taken.stderr[-2000:]
    assert taken.stderr.splitlines()[-1].startswith(f"error: cannot serve on 127.0.0.1:{port}")
    log = (tmp_path / "demo.log").read_text()
    assert seen["model"].startswith(f"loaded {image_ckpt}"), log
    assert seen["empty"] == "error: no image: upload a picture (or pick an example) first"
    assert seen["status"].endswith("selected; 3 words, 1 unknown"), seen
    assert "zebra*" in seen["table"]
    assert Path(tmp_path / "page.png").stat().st_size > 10_000
    assert "Traceback" not in log, log
    assert process.returncode == 0 and not list((tmp_path / "tmp").glob("cmpc_demo_*"))  # Ctrl+C cleans up
