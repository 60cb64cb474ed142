"""Hostile files and values (issue 14): each gives the right value, or is skipped and counted, or stops with one
line (exit status != 0, no traceback). Every input is a tiny file written here."""

import copy
import csv
import functools
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import fixtures_data as F
import numpy as np
import pytest
import scipy.io
import torch
from conftest import CONFIG_DIR, ROOT
from omegaconf import OmegaConf
from PIL import Image

from cmpc.data import build_dataset, build_vocab, collate
from cmpc.data.base import Unreadable, UnreadableTally, read_image, to_rgb
from cmpc.data.refer import clean_segmentation, load_pickle, segmentation_to_mask
from cmpc.data.text import Vocabulary, tokens_cut
from cmpc.engine import config_check
from cmpc.engine.video import evaluate_videos
from cmpc.errors import ConfigError, DatasetError

ISSUE_POLYGON = [-164.1, -221.8, 2.08e8, 3.52e8, 225.9, 236.5, 272.0, 384.2]


def _saved(im: Image.Image, path: Path, **kw) -> Path:
    im.save(path, **kw)
    return path


def _run(args, timeout=240, env=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def _one_line_error(r, *needles):
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# -------------------------------------------------------------------------------------------------
# 3. images: every PIL mode -> the right 8-bit RGB; EXIF orientation for predict inputs only
# -------------------------------------------------------------------------------------------------
def _palette(values, colours, transparency=None):
    im = Image.fromarray(np.array([values], np.uint8), mode="P")
    im.putpalette([c for rgb in colours for c in rgb])
    if transparency is not None:
        im.info["transparency"] = transparency
    return im


def _grey(values):
    return np.repeat(np.array([values], np.uint8)[..., None], 3, axis=2)


MODES = {  # name -> (image, file suffix, expected RGB [1, N, 3])
    "1": (Image.fromarray(np.array([[0, 1, 1]], bool)), "png", _grey([0, 255, 255])),
    "L": (Image.fromarray(np.array([[7, 200]], np.uint8)), "png", _grey([7, 200])),
    # 16-bit grey is scaled (v / 257), not clipped at 255 as PIL's convert would give (255, 255, 255)
    "I;16": (Image.fromarray(np.array([[0, 257, 1000, 65535]], np.uint16)), "png", _grey([0, 1, 4, 255])),
    "I": (Image.fromarray(np.array([[0, 514, 70000, -5]], np.int32)), "tif", _grey([0, 2, 255, 0])),
    "F": (Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0]], np.float32)), "tif", _grey([0, 128, 255, 255])),
    # transparent entries are composited over white: 255 * (1 - 0) = 255 where alpha is 0
    "P+transparency": (_palette([0, 1], [(10, 20, 30), (200, 100, 50)], transparency=0), "png",
                       np.array([[[255, 255, 255], [200, 100, 50]]], np.uint8)),
    "P": (_palette([0, 1], [(10, 20, 30), (200, 100, 50)]), "png", np.array([[[10, 20, 30], [200, 100, 50]]],
                                                                             np.uint8)),
    # alpha 128: c * 128/255 + 255 * 127/255 -> 100 -> 177, 0 -> 127, 255 -> 255
    "LA": (Image.fromarray(np.array([[[100, 255], [100, 0], [100, 128]]], np.uint8), mode="LA"), "png",
           _grey([100, 255, 177])),
    "RGBA": (Image.fromarray(np.array([[[255, 0, 0, 128], [1, 2, 3, 255]]], np.uint8), mode="RGBA"), "png",
             np.array([[[255, 127, 127], [1, 2, 3]]], np.uint8)),
    "CMYK": (Image.new("CMYK", (1, 1), (0, 255, 255, 0)), "tif", np.array([[[255, 0, 0]]], np.uint8)),
}


def _lab(values):
    im = Image.new("LAB", (len(values), 1))
    for x, v in enumerate(values):
        im.putpixel((x, 0), v)
    return im


def test_every_image_mode_reaches_the_model_as_the_right_rgb(tmp_path):
    for name, (im, suffix, expected) in MODES.items():
        path = _saved(im, tmp_path / f"{name.replace(';', '_').replace('+', '_')}.{suffix}")
        with Image.open(path) as check:  # the file really holds that mode
            assert check.mode == name.split("+")[0], (name, check.mode)
        got = read_image(path)
        assert got.dtype == np.uint8 and got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)
    # CIE L*a*b* (a*, b* given offset by 128): L* 100 is white, 50.2 is sRGB grey 119, 0 is black; PIL's plain
    # convert gives cyan (0, 255, 255) for white. Little CMS rounds to within 1 of the exact values.
    lab = read_image(_saved(_lab([(255, 128, 128), (128, 128, 128), (0, 128, 128)]), tmp_path / "lab.tif"))
    assert np.abs(lab.astype(int) - [[[255] * 3, [119] * 3, [0] * 3]]).max() <= 1
    # PNG tRNS on grey / RGB: the transparent colour is composited over white like an alpha of 0
    grey_key = read_image(_saved(Image.fromarray(np.array([[5, 9]], np.uint8)), tmp_path / "k.png", transparency=5))
    np.testing.assert_array_equal(grey_key, _grey([255, 9]))
    rgb_key = read_image(_saved(Image.fromarray(np.array([[[5, 6, 7], [1, 2, 3]]], np.uint8)), tmp_path / "c.png",
                                transparency=(5, 6, 7)))
    np.testing.assert_array_equal(rgb_key, [[[255, 255, 255], [1, 2, 3]]])
    rgba_premultiplied = Image.new("RGBa", (1, 1), (50, 50, 50, 128))  # in memory only: no format stores it
    np.testing.assert_array_equal(to_rgb(rgba_premultiplied), [[[177, 177, 177]]])  # un-premultiplied 99 -> 177


def test_exif_orientation_only_for_predict_inputs(tmp_path):
    stored = np.zeros((2, 3, 3), np.uint8)
    stored[0, 0] = (255, 0, 0)  # top-left red
    im = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: a viewer rotates 90 degrees clockwise
    path = _saved(im, tmp_path / "phone.png", exif=exif)
    np.testing.assert_array_equal(read_image(path), stored)  # dataset images: stored pixel order
    upright = read_image(path, upright=True)  # predict / demo inputs: what a viewer shows
    np.testing.assert_array_equal(upright, np.rot90(stored, k=-1))
    assert upright.shape == (3, 2, 3) and tuple(upright[0, 1]) == (255, 0, 0)  # red now at the top right


def test_truncated_and_fake_images_give_one_line(tmp_path):
    good = _saved(Image.fromarray(np.full((64, 64, 3), 90, np.uint8)), tmp_path / "a.jpg", quality=90)
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("cut.jpg", "text.jpg"):
        with pytest.raises(DatasetError, match=rf"cannot read image .*{name} .*the file is corrupt") as e:
            read_image(tmp_path / name)
        assert "\n" not in str(e.value)


# -------------------------------------------------------------------------------------------------
# 1. annotation geometry: polygons clipped to the image, malformed ones dropped and counted
# -------------------------------------------------------------------------------------------------
def _decode(seg, h, w, skip=None):
    clean = clean_segmentation(seg, h, w, skip)
    return None if clean is None else segmentation_to_mask(clean, h, w)


def test_far_out_polygons_cost_image_sized_memory_and_give_the_exact_mask():
    # the issue's polygon: pycocotools alone allocates ~24 GB for it; clipped, its edges stay within one image
    # size of the image
    clean = clean_segmentation([ISSUE_POLYGON], 28, 28)
    assert np.abs(np.array(clean[0])).max() <= 2 * 28
    assert segmentation_to_mask(clean, 28, 28).shape == (28, 28)
    far = 1e9
    np.testing.assert_array_equal(_decode([[-far, -far, far, -far, far, far, -far, far]], 28, 28),
                                  np.ones((28, 28), bool))
    # a band whose left corners are 1e8 pixels away: rows 4..11, columns 0..19 exactly
    np.testing.assert_array_equal(_decode([[-1e8, 4, 20, 4, 20, 12, -1e8, 12]], 28, 28),
                                  F.rect_mask(28, 28, [(4, 12, 0, 20)]))
    # a triangle with one far vertex, against the exact pixel-centre geometry: the half-plane x <= y
    h = w = 28
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    got = _decode([[0, 0, 1e7, 1e7, -1e7, 1e7]], h, w)
    exact = xx <= yy  # every pixel centre on or below the diagonal
    assert (got != exact).sum() <= w  # only pixels cut by the diagonal itself may differ
    # polygons within one image size of the image are decoded exactly as drawn (the official masks)
    poly = [3.2, 1.0, 40.0, 5.5, 20.0, 35.0, -10.0, 20.0]
    import pycocotools.mask as mask_utils

    direct = mask_utils.decode(mask_utils.frPyObjects([poly], 30, 24))[..., 0].astype(bool)
    np.testing.assert_array_equal(_decode([poly], 30, 24), direct)


def test_malformed_polygons_are_dropped_and_counted_by_reason():
    reasons = {}

    def skip(reason, n=1):
        reasons[reason] = reasons.get(reason, 0) + n

    good = [2, 2, 10, 2, 10, 8, 2, 8]
    seg = [good, [1, 1, float("nan"), 5, 5, 5], [1, 1, float("inf"), 5, 5, 5], [1, 2, 3, 4, 5, 6, 7],
           [1, 1, 5, 5], ["a", 1, 2, 3, 4, 5], [100, 100, 200, 100, 150, 200]]
    mask = _decode(seg, 12, 12, skip)
    np.testing.assert_array_equal(mask, F.rect_mask(12, 12, [(2, 8, 2, 10)]))  # the good polygon survives
    assert reasons == {"polygon with NaN or infinite coordinates dropped": 2,
                       "polygon with an odd number of coordinates dropped": 1,
                       "polygon with fewer than 3 points dropped": 1,
                       "polygon with non-numeric coordinates dropped": 1,
                       "polygon entirely outside the image dropped": 1}
    reasons.clear()
    assert _decode([[1, 1, float("nan"), 5, 5, 5]], 12, 12, skip) is None
    assert _decode({"size": [5, 5], "counts": [25]}, 12, 12, skip) is None  # RLE of another size
    assert _decode({"size": [12, 12], "counts": [100]}, 12, 12, skip) is None  # counts cover 100 of 144
    assert reasons == {"polygon with NaN or infinite coordinates dropped": 1,
                       "RLE whose size is not the image size dropped": 1,
                       "uncompressed RLE whose counts do not sum to height x width dropped": 1}


# -------------------------------------------------------------------------------------------------
# 6. text: refer pickles from Python 2 or 3, UTF-8 files with a BOM, long sentences
# -------------------------------------------------------------------------------------------------
SENTENCES = ["caf\u00e9 on the left", "the na\u00efve man", "\u5317\u4eac\u7684\u72d7", "plain ascii"]


@pytest.mark.parametrize("writer", ["py2 utf-8 str", "py2 latin-1 str", "py3 str"])
def test_refer_pickle_text_is_what_the_annotator_typed(tmp_path, writer):
    sentences = SENTENCES if writer != "py2 latin-1 str" else SENTENCES[:2] + SENTENCES[3:]  # latin-1 has no Chinese
    refs = [{"ref_id": i, "split": "train", "sentences": [{"sent": s, "raw": s}]} for i, s in enumerate(sentences)]
    if writer == "py3 str":
        data = pickle.dumps(refs, protocol=2)
    else:
        data = F._py2_pickle(refs, encoding="utf-8" if "utf-8" in writer else "latin-1")
    path = tmp_path / "refs(unc).p"
    path.write_bytes(data)
    loaded = load_pickle(path)
    assert [r["sentences"][0]["sent"] for r in loaded] == sentences
    assert all(isinstance(k, str) for r in loaded for k in r)  # keys are text too


def test_long_sentences_keep_their_first_max_words_tokens():
    words = [f"w{i}" for i in range(25)]
    vocab = Vocabulary(words)
    long = " ".join(words)
    assert tokens_cut(long, 20) == 5 and tokens_cut("a short one", 20) == 0
    np.testing.assert_array_equal(vocab.encode(long, 20).numpy(), vocab.ids(words[:20]))  # official: first T


def test_csv_annotations_with_a_bom_or_another_encoding(tmp_path):
    cfg = F.make_a2d_fixture(tmp_path)
    query = tmp_path / "text_annotations" / "a2d_annotation.txt"
    rows = list(csv.reader(io.StringIO(query.read_text())))
    rows[1][2] = "the man in the caf\u00e9 is running"
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    query.write_text(buf.getvalue(), encoding="utf-8-sig")  # Excel's "CSV UTF-8" starts with a BOM
    ds = build_dataset(cfg, "train")
    assert "the man in the caf\u00e9 is running" in ds.sentences()
    query.write_bytes(buf.getvalue().encode("utf-16"))
    with pytest.raises(DatasetError, match=r"a2d_annotation.txt is not UTF-8 text .*convert it to UTF-8"):
        build_dataset(dict(cfg, cache_dir=str(tmp_path / "cache2")), "train")


# -------------------------------------------------------------------------------------------------
# 4. video frames: an annotated frame past the end of the clip is skipped, neighbours are clamped
# -------------------------------------------------------------------------------------------------
def _write_clip(path: Path, n: int):
    h, w = F.A2D_SIZE
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 24, (w, h))
    for fr in range(1, n + 1):
        vw.write(np.full((h, w, 3), F.a2d_frame_value(fr), np.uint8))
    vw.release()


def test_a2d_annotated_frame_beyond_the_clip_is_skipped_not_faked(tmp_path):
    cfg = F.make_a2d_fixture(tmp_path)
    _write_clip(tmp_path / "Release" / "clips320H" / "vidA.mp4", 10)  # videoset.csv still says 20 frames
    vocab = build_vocab(cfg)
    ds = build_dataset(cfg, "train", vocab)
    by_frame = {}
    for i, (_, fr) in enumerate(ds.items):
        by_frame.setdefault(fr, i)
    ok = ds[by_frame[5]]  # frame 5 exists; its neighbours 9 and 12 -> 9 and the last frame, 10
    clip = ok["clip"]
    raw = ds.load(by_frame[5])
    assert raw.meta["clip_frames"] == [1, 1, 5, 9, 12]
    values = np.array([F.a2d_frame_value(n) for n in range(1, 11)])  # grey levels 10 apart (mp4v shifts them)
    decoded = [int(np.argmin(np.abs(values - f.mean()))) + 1 for f in raw.frames]
    assert decoded == [1, 1, 5, 9, 10]
    assert clip.shape[0] == 5
    for fr in (12, 15):  # annotated frames the clip does not have
        sample = ds[by_frame[fr]]
        assert isinstance(sample, Unreadable)
        assert f"annotated frame {fr} is beyond the 10 frames" in sample.reason and "vidA.mp4" in sample.reason
    batch = collate([ds[by_frame[12]], ok, ds[by_frame[15]]])
    assert len(batch["words"]) == 1 and len(batch["unreadable"]) == 2
    bad = ds.check_files()  # what prepare_data.py lists, with the file and the frame
    assert sorted(u.reason.split(" is beyond")[0] for u in bad) == ["annotated frame 12", "annotated frame 15"]


def _jhmdb_mask(path: Path, n: int) -> None:
    h, w = F.JHMDB_SIZE
    pm = np.stack([F.rect_mask(h, w, F.jhmdb_rect(t)) for t in range(1, n + 1)], axis=2).astype(np.uint8)
    scipy.io.savemat(path, {"part_mask": pm})


def test_jhmdb_frames_and_mask_that_disagree_are_skipped_not_clamped(tmp_path):
    cfg = F.make_jhmdb_fixture(tmp_path)  # v1: 8 PNG frames, 6 mask frames
    v2_mask = tmp_path / "puppet_mask" / "run" / "v2" / "puppet_mask.mat"
    _jhmdb_mask(v2_mask, 9)  # v2: 5 PNG frames, 9 mask frames
    vocab = build_vocab(cfg)
    ds = build_dataset(cfg, "test", vocab)
    offsets = [-8, -4, 0, 4, 7]
    for i, s in enumerate(ds.items):  # drawn among the frames that have both a PNG and a mask
        fr, n = s["frame"], {"v1": 6, "v2": 5}[s["video_id"]]
        assert s["n_frames"] == n and 1 <= fr <= n
        raw = ds.load(i)
        assert raw.meta["clip_frames"] == [min(max(fr + o, 1), n) for o in offsets]  # neighbours clamped
        assert raw.frames[raw.center][0, 0, 0] == 20 * fr  # the annotated frame itself, never a neighbour
        np.testing.assert_array_equal(raw.mask, F.rect_mask(*F.JHMDB_SIZE, F.jhmdb_rect(fr)))
    # a sample list that no longer matches the files (or was edited): each bad entry is unreadable, with a reason
    listed = [("v1", "brush_hair", 3, 6),  # fine: clip [1, 1, 3, 6, 6]
              ("v1", "brush_hair", 7, 8),  # PNG 7 exists, the mask has 6 frames
              ("v2", "run", 7, 9),  # the mask has frame 7, the PNG does not
              ("v2", "run", 4, 3),  # frame past n_frames: would be clamped to frame 3 with frame 4's mask
              ("v1", "brush_hair", 0, 6),  # frame 0: would pair frame 1 with the last mask frame
              ("v1", "brush_hair", 2.5, 6),  # not a frame number: int() would read frame 2
              ("v1", "brush_hair", "3", 6)]  # a string
    samples = [{"video_id": v, "action": a, "frame": fr, "n_frames": n, "query": "a person"}
               for v, a, fr, n in listed]
    path = tmp_path / "listed.json"
    path.write_text(json.dumps({"seed": 42, "frames_per_video": 3, "samples": samples}))
    ds = build_dataset(dict(cfg, samples_file=str(path)), "test", vocab)
    got = [ds[i] for i in range(len(ds))]
    assert got[0]["meta"]["clip_frames"] == [1, 1, 3, 6, 6]
    assert [int(f[0, 0, 0]) for f in ds.load(0).frames] == [20, 20, 60, 120, 120]  # grey level 20 * frame
    reasons = [u.reason if isinstance(u, Unreadable) else None for u in got]
    assert reasons[0] is None and all(reasons[1:])
    assert "puppet_mask.mat has 6 frames but sample frame 7" in reasons[1]
    assert "missing image file" in reasons[2] and "v2/00007.png" in reasons[2]
    assert "sample frame 4 of v2 is outside frames 1..3" in reasons[3] and str(path) in reasons[3]
    assert "sample frame 0 of v1 is outside frames 1..6" in reasons[4]
    assert "has frame=2.5, n_frames=6, not frame numbers" in reasons[5] and str(path) in reasons[5]
    assert "has frame='3', n_frames=6, not frame numbers" in reasons[6]
    batch = collate(got)
    assert len(batch["words"]) == 1 and len(batch["unreadable"]) == 6


@pytest.mark.parametrize("meta_json", [False, True])
def test_ytvos_annotated_frame_without_jpeg_or_mask_is_skipped_and_counted(tmp_path, meta_json):
    cfg = F.make_ytvos_fixture(tmp_path, write_meta_json=meta_json)
    (tmp_path / "train" / "Annotations" / "t1" / "00000.png").unlink()  # listed frame 0 of t1: no mask
    (tmp_path / "train" / "JPEGImages" / "t2" / "00020.jpg").unlink()  # annotated frame 4 of t2: no JPEG
    ds = build_dataset(cfg, "train", build_vocab(cfg))
    exp = {(e["video_id"], e["exp_id"]): k for k, e in enumerate(ds.expressions)}
    # t1/0 (object 1 in frames 0-4) loses frame 0; t1/1 (object 2 in frames 2, 3) keeps both
    assert sorted(p for k, p in ds.items if k == exp[("t1", "0")]) == [1, 2, 3, 4]
    assert sorted(p for k, p in ds.items if k == exp[("t1", "1")]) == [2, 3]
    lost = 1 if meta_json else 2  # without meta.json neither expression of t1 can be ruled out of frame 0
    assert ds.skipped["annotated frame without its mask PNG (Annotations/<video>/<frame>.png)"] == lost
    unreadable = 0
    for i, (k, p) in enumerate(ds.items):
        e = ds.expressions[k]
        sample = ds[i]
        if (e["video_id"], p) == ("t2", 4):  # unreadable, not clamped to frame 3
            assert isinstance(sample, Unreadable)
            assert sample.reason.startswith(f"missing image file {tmp_path}/train/JPEGImages/t2/00020.jpg;")
            unreadable += 1
            continue
        assert not isinstance(sample, Unreadable), sample
        raw = ds.load(i)
        assert raw.frames[raw.center][0, 0, 0] == pytest.approx(F.ytvos_frame_value(p), abs=2)
        np.testing.assert_array_equal(raw.mask, F.ytvos_expected(e["video_id"], int(e["obj_id"]), p))
    assert unreadable == 1


class _Everywhere(torch.nn.Module):
    """Stub video model: logit +1 everywhere, so every frame is predicted as all foreground."""

    def forward(self, clips, words):
        return {"logits": torch.ones(clips.shape[0], 1, 4, 4)}


def test_whole_video_evaluation_counts_an_unreadable_expression_and_scores_the_rest(tmp_path, caplog):
    cfg = F.make_ytvos_fixture(tmp_path, valid_annotations=True)  # valid: v1, v2 with t1's objects 1 and 2
    meta_path = tmp_path / "meta_expressions" / "valid" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    del meta["videos"]["v2"]["expressions"]["1"]  # v2 keeps one expression, about object 1
    meta_path.write_text(json.dumps(meta))
    (tmp_path / "valid" / "Annotations" / "v2" / "00010.png").unlink()
    ds = build_dataset(cfg, "valid", build_vocab(cfg))
    with caplog.at_level("WARNING", logger="cmpc.engine.video"):
        result = evaluate_videos(_Everywhere(), ds, "cpu", batch_size=4, progress=False)
    assert result["unreadable"] == 1 and result["expressions"] == 2 and result["without_gt"] == 0
    assert any("v2/0 skipped" in r.getMessage() and "v2/00010.png" in r.getMessage() for r in caplog.records)
    # v1 only. Object 1: a 7 x 8 box in each of the 5 frames of 24 x 32 -> J = 56 / 768. Object 2: 8 x 12 boxes
    # in frames 2 and 3 only; a full prediction of an empty frame scores 0 -> J = (2 * 96 / 768) / 5
    j = (56 / 768 + 2 * 96 / 768 / 5) / 2
    assert result["jf"]["J"] == pytest.approx(j) and result["jf"]["n"] == 2
    assert result["metrics"]["n"] == 10  # the 5 frames of each readable expression


def test_unreadable_tally_gives_up_only_when_nothing_can_be_read():
    tally = UnreadableTally()
    bad = Unreadable("x/train/0", "cannot read image /d/0.jpg (truncated)")
    assert tally.add({"unreadable": [bad]}) is True
    assert tally.add({"words": [1, 2], "unreadable": [bad]}) is False
    for _ in range(30):  # once a sample was readable, unreadable ones only count
        tally.add({"unreadable": [bad]})
    assert len(tally) == 32 and tally.report("train")[0] == "skipped 32 unreadable sample(s) in train:"
    lost = UnreadableTally()
    with pytest.raises(DatasetError, match="none of the first 16 samples can be read, e.g. cannot read image"):
        for _ in range(16):
            lost.add({"unreadable": [bad]})


# -------------------------------------------------------------------------------------------------
# 5. Refer-YouTube-VOS valid: expressions without obj_id are the server-evaluation set
# -------------------------------------------------------------------------------------------------
def test_ytvos_valid_expressions_without_obj_id_are_counted_for_the_server(tmp_path):
    cfg = F.make_ytvos_fixture(tmp_path)
    meta_path = tmp_path / "meta_expressions" / "valid" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    for v in meta["videos"].values():  # as released: text only
        v["expressions"] = {k: {"exp": e["exp"]} for k, e in v["expressions"].items()}
    meta["videos"]["v1"]["expressions"]["2"] = {"obj_id": "1"}  # really malformed: no text
    meta_path.write_text(json.dumps(meta))
    ds = build_dataset(cfg, "valid")
    assert ds.counts() == {"videos": 2, "expressions for server evaluation": 4, "samples": 0}
    assert dict(ds.skipped) == {"malformed expression (no 'exp' text)": 1}
    expressions = list(ds.iter_expressions())
    assert len(expressions) == 4 and all(e.obj_id is None and not e.has_gt for e in expressions)
    # in a split with annotations, an expression without obj_id is malformed
    train_meta = tmp_path / "meta_expressions" / "train" / "meta_expressions.json"
    tm = json.loads(train_meta.read_text())
    del tm["videos"]["t1"]["expressions"]["0"]["obj_id"]
    train_meta.write_text(json.dumps(tm))
    train = build_dataset(cfg, "train")
    assert train.skipped["malformed expression (no 'obj_id' in a split with annotations)"] == 1


# -------------------------------------------------------------------------------------------------
# 7. config values: one line naming the key and the allowed range, before any data is read
# -------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _default_train_cfg():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["dataset.root=/nonexistent/never/read"])


def _train_cfg(**trainer):
    cfg = copy.deepcopy(_default_train_cfg())
    for key, value in trainer.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


@pytest.mark.parametrize("key, value, message", [
    ("trainer.steps", 0, "trainer.steps=0 is out of range: it must be an integer >= 1"),
    ("trainer.steps", 2.5, "trainer.steps=2.5 is out of range: it must be an integer >= 1"),
    ("trainer.steps", "many", "trainer.steps='many' is out of range"),
    ("trainer.batch_size", 0, "trainer.batch_size=0 is out of range: it must be an integer >= 1"),
    ("trainer.lr", -0.1, "trainer.lr=-0.1 is out of range: it must be a number >= 0"),
    ("trainer.lr", float("nan"), "trainer.lr=nan is out of range"),
    ("trainer.num_workers", -1, "trainer.num_workers=-1 is out of range: it must be an integer >= 0"),
    ("trainer.checkpoint_every", 0, "trainer.checkpoint_every=0 is out of range: it must be an integer >= 1"),
    ("trainer.log_every", 0, "trainer.log_every=0 is out of range: it must be an integer >= 1"),
    ("trainer.amp", "fp8", "trainer.amp='fp8' is unknown: use one of off, bf16, fp16"),
    ("device", "gpu", "device='gpu' is not a device: use auto, cpu, cuda or cuda:N"),
    ("model.routing_scale", "max", "model.routing_scale='max' is unknown: use one of probability, peak"),
    ("model.rar_path", "slow", "model.rar_path='slow' is unknown: use one of fast, explicit"),
    ("model.aar_adjacency", "full", "model.aar_adjacency='full' is unknown: use one of dr, ar"),
    ("model.convlstm_kernel", 2, "model.convlstm_kernel=2 is out of range: it must be an odd integer >= 1"),
    ("model.convlstm_kernel", 0, "model.convlstm_kernel=0 is out of range: it must be an odd integer >= 1"),
    ("seed", -1, "seed=-1 is out of range: it must be an integer from 0 to 2**32 - 1"),
    ("seed", 2**32, "seed=4294967296 is out of range: it must be an integer from 0 to 2**32 - 1"),
])
def test_bad_config_values_give_one_line(key, value, message):
    with pytest.raises(ConfigError) as e:
        config_check.check_train_config(_train_cfg(**{key: value}))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_good_config_passes_and_unreadable_root_is_named(tmp_path, monkeypatch):
    config_check.check_train_config(_train_cfg())
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setattr(config_check.os, "access", lambda path, mode: False)  # as a non-root user after chmod 000
    with pytest.raises(ConfigError, match=rf"dataset.root={root} cannot be read \(permission denied\)"):
        config_check.check_dataset_root({"root": str(root)})
    predict = OmegaConf.create({"text": "???", "image": "x.jpg", "video": None, "device": "cpu"})
    with pytest.raises(ConfigError, match="text is required"):
        config_check.check_predict_config(predict)


def test_a_global_batch_that_does_not_split_over_the_processes_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError) as e:
        config_check.check_train_config(_train_cfg(**{"trainer.batch_size": 10}))
    assert str(e.value) == ("trainer.batch_size=10 is the global batch, split equally over the 4 processes of this "
                            "run (WORLD_SIZE=4): set trainer.batch_size to a multiple of 4 (e.g. 8 or 12)")
    with pytest.raises(ConfigError, match=r"trainer.batch_size=3 .* multiple of 4 \(e.g. 4\)$"):
        config_check.check_train_config(_train_cfg(**{"trainer.batch_size": 3}))
    config_check.check_train_config(_train_cfg(**{"trainer.batch_size": 8}))
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two' is not a process count"):
        config_check.check_train_config(_train_cfg())
    # the CLI path, as one torchrun process sees it: one line before any data is read or a process group joined
    r = _run(["scripts/train.py", "trainer.batch_size=3", f"paths.data={tmp_path / 'none'}",
              f"hydra.run.dir={tmp_path / 'run'}"], env={"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    _one_line_error(r, "trainer.batch_size=3 is the global batch", "2 processes", "multiple of 2 (e.g. 2 or 4)")
    assert not (tmp_path / "none").exists()
    r = _run(["scripts/train.py", f"paths.data={tmp_path / 'none'}", f"paths.runs={tmp_path / 'runs'}"],
             env={"WORLD_SIZE": "two"})  # read first while Hydra names the run directory
    _one_line_error(r, "WORLD_SIZE='two' is not a process count")
    assert not (tmp_path / "none").exists()


def test_scripts_stop_on_bad_values_with_one_line(tmp_path):
    r = _run(["scripts/train.py", "trainer.steps=0", f"paths.runs={tmp_path}", f"paths.data={tmp_path / 'none'}"])
    _one_line_error(r, "trainer.steps=0", "integer >= 1")
    assert not (tmp_path / "none").exists()  # nothing was generated or read
    r = _run(["scripts/predict.py", f"image={tmp_path / 'x.jpg'}", f"paths.runs={tmp_path}"])
    _one_line_error(r, "text is required")


# -------------------------------------------------------------------------------------------------
# end to end: prepare_data lists what it skips and exits 0; training on that root runs to the end
# -------------------------------------------------------------------------------------------------
def make_hostile_refer_root(root: Path) -> dict:
    """A refer-layout root (unc) with 4 train images, one of them truncated, one ref whose polygon has the issue's
    far-out vertex (a 28 x 28 image), one NaN polygon and one sentence longer than 20 tokens."""
    ddir, idir = root / "refcoco", root / "images" / "mscoco" / "images" / "train2014"
    ddir.mkdir(parents=True)
    idir.mkdir(parents=True)
    images, anns, refs = [], [], []
    layout = {1: "train", 2: "train", 3: "train", 4: "train", 5: "val"}
    for iid, split in layout.items():
        name = f"COCO_train2014_{iid:012d}.jpg"
        Image.fromarray(F._image(28, 28, iid)).save(idir / name, quality=95)
        images.append({"id": iid, "file_name": name, "height": 28, "width": 28})
        polygon = ISSUE_POLYGON if iid == 2 else [4.0, 4.0, 20.0, 4.0, 20.0, 18.0, 4.0, 18.0]
        anns.append({"id": 10 + iid, "image_id": iid, "category_id": 1, "segmentation": [polygon]})
        sentences = [f"thing number {iid}", f"the object in picture {iid}"]
        if iid == 3:
            sentences.append(" ".join(["very"] * 22 + ["long"]))
        refs.append({"ref_id": iid, "ann_id": 10 + iid, "image_id": iid, "category_id": 1, "split": split,
                     "sentences": [{"sent": s, "raw": s, "sent_id": 100 * iid + k} for k, s in enumerate(sentences)]})
    anns.append({"id": 99, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, float("nan"), 5, 5, 5]]})
    refs.append({"ref_id": 99, "ann_id": 99, "image_id": 1, "category_id": 1, "split": "train",
                 "sentences": [{"sent": "nan polygon", "raw": "nan polygon", "sent_id": 9900}]})
    (ddir / "instances.json").write_text(json.dumps({"images": images, "annotations": anns}))
    (ddir / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    corrupt = idir / "COCO_train2014_000000000004.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:300])  # a truncated download
    return {"name": "unc", "root": str(root), "train_split": "train", "eval_split": "val", "input_size": 32,
            "max_words": 20, "vocab": None, "glove": None, "cache_dir": str(root / "cache")}


def test_prepare_lists_skipped_entries_and_training_runs_to_the_end(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_data_script", ROOT / "scripts" / "prepare_data.py")
    prepare_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_data)
    cfg = make_hostile_refer_root(tmp_path / "refer")
    lines = []
    table = prepare_data.prepare(cfg, out=lines.append)
    text = "\n".join(lines)
    assert table["train"]["samples"] == 9 and table["train"]["unreadable"] == 1 and table["train"]["cut"] == 1
    assert "skipped 1: polygon with NaN or infinite coordinates dropped" in text
    assert "skipped 1: ref without a usable segmentation" in text
    assert "cut 1 sentence(s) longer than max_words=20 tokens to their first 20 tokens" in text
    assert "unreadable (skipped by training and evaluation): cannot read image" in text
    assert "COCO_train2014_000000000004.jpg" in text
    far = build_dataset(cfg, "train", build_vocab(cfg))
    index = next(i for i, item in enumerate(far.items) if far.refs[item[0]]["image_id"] == 2)
    mask = far.load(index).mask  # the far-out polygon: bounded, and the part inside the image
    assert mask.shape == (28, 28) and 0 < mask.sum() < 28 * 28

    from hydra import compose, initialize_config_dir
    from test_training import TINY_MODEL

    from cmpc.engine.trainer import train

    overrides = ["dataset=unc", "backbone=small", "backbone.weights=random", "trainer=synthetic", "device=cpu",
                 "model.glove=false",
                 *[f"dataset.{k}={v}" for k, v in cfg.items() if v is not None],
                 "dataset.vocab=null", "dataset.glove=null", "trainer.steps=6", "trainer.batch_size=2",
                 "trainer.num_workers=0", "trainer.eval_every=0", "trainer.eval_batch_size=4",
                 "trainer.log_every=1", "trainer.checkpoint_every=1000", *TINY_MODEL]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        train_cfg = compose("train", overrides=overrides)
    results = train(train_cfg, tmp_path / "run")
    assert results["step"] == 6 and (tmp_path / "run" / "best.pt").is_file()
    assert results["unreadable_train_samples"] >= 1  # the truncated image's samples, skipped and counted
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["unreadable_train_samples"] >= 1

    # evaluation leaves the truncated image's 2 sentences out of the metrics and counts them
    from cmpc.engine.builders import load_trained
    from cmpc.engine.evaluate import evaluate

    model, _, vocab = load_trained(tmp_path / "run" / "best.pt")
    scored = evaluate(model, build_dataset(cfg, "train", vocab), device="cpu", batch_size=4, progress=False)
    assert scored["unreadable"] == 2 and scored["metrics"]["n"] == 7

    # predict: a phone photo stored sideways (EXIF Orientation 6) is segmented as a viewer shows it, and a
    # sentence longer than max_words gives a warning
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = _saved(Image.fromarray(F._image(20, 30, 7)), tmp_path / "phone.png", exif=exif)  # stored 30 wide
    out = tmp_path / "pred"
    r = _run(["scripts/predict.py", f"checkpoint={tmp_path / 'run' / 'best.pt'}", f"image={photo}", "device=cpu",
              f"text={' '.join(['very'] * 24 + ['thing'])}", f"out={out}", f"paths.runs={tmp_path}"])
    assert r.returncode == 0, r.stderr
    assert "warning: the sentence has 5 token(s) more than the model reads (dataset.max_words=20)" in r.stderr
    with Image.open(f"{out}_mask.png") as mask:
        assert mask.size == (20, 30)  # (width, height) of the upright picture, not of the stored pixels


@pytest.mark.slow
def test_ddp_ranks_step_together_when_one_rank_reads_nothing(tmp_path):
    import socket

    from test_training import TINY_MODEL

    cfg = make_hostile_refer_root(tmp_path / "refer")
    with socket.socket() as s:  # a free port, chosen now (other runs use DDP too)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # 1 sentence per rank and step: within 6 steps a rank draws a sentence of the truncated image while the other
    # rank trains; without a common decision the training rank would wait forever in the gradient all-reduce
    args = ["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "scripts/train.py",
            "dataset=unc", "backbone=small", "backbone.weights=random", "trainer=synthetic", "device=cpu",
            "model.glove=false", *[f"dataset.{k}={v}" for k, v in cfg.items() if v is not None], "dataset.vocab=null",
            "dataset.glove=null", "trainer.steps=6", "trainer.batch_size=2", "trainer.num_workers=0",
            "trainer.eval_every=0", "trainer.eval_batch_size=4", "trainer.log_every=1",
            "trainer.checkpoint_every=1000", "backbone.frozen_bn=true", *TINY_MODEL,
            f"hydra.run.dir={tmp_path / 'ddp'}"]
    r = _run(args, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "unreadable sample(s) in the training split" in r.stdout + r.stderr
    assert (tmp_path / "ddp" / "metrics.json").is_file()
