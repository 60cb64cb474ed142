"""Video datasets through build_dataset: A2D Sentences, J-HMDB Sentences, Refer-YouTube-VOS."""

import io
import json
import zipfile

import fixtures_data as F
import numpy as np
import pytest
from PIL import Image

from cmpc.data import build_dataset, build_vocab, collate, write_submission
from cmpc.errors import ConfigError, DatasetError

S = F.INPUT_SIZE


# ------------------------------------------------------------------------------------------------ A2D
def test_a2d_samples_masks_and_skips(tmp_path):
    cfg = F.make_a2d_fixture(tmp_path)
    vocab = build_vocab(cfg)
    ds = build_dataset(cfg, "train", vocab)
    assert ds.is_video
    got = sorted((ds.queries[q][0], ds.queries[q][1], fr) for q, fr in ds.items)
    assert got == sorted(F.A2D_EXPECTED["train"])  # instance id must be in the .h5 (frame 15 has only id 2)
    assert ds.skipped == {"video listed in a2d_missed_videos.txt": 1,
                          "malformed instance id (e.g. '1 (copy)')": 1,
                          "malformed videoset.csv row (not 9 columns ending in 0/1)": 1,
                          "instance id never annotated (or all-zero masks) in the video's .h5 files": 1}
    for i in range(len(ds)):
        s = ds[i]
        m = s["meta"]
        np.testing.assert_array_equal(s["gt"], F.a2d_expected(m["video_id"], m["instance_id"], m["frame"]))
        assert s["clip"].shape == (5, 3, S, S) and "image" not in s
    raw = ds.load(0)  # vidA, frame 5: official offsets [-8,-4,0,4,7] clamped to the video
    assert raw.meta["clip_frames"] == [1, 1, 5, 9, 12] and raw.center == 2
    means = [f.mean() for f in raw.frames]
    for mean, fr in zip(means, raw.meta["clip_frames"]):  # mp4 decoded with OpenCV, frame f <-> index f-1
        assert abs(mean - F.a2d_frame_value(fr)) < 4
    test = build_dataset(cfg, "test", vocab)
    assert len(test) == 1 and test.load(0).meta["clip_frames"] == [2, 6, 10, 14, 17]
    b = collate([ds[0], ds[1]])
    assert b["clip"].shape == (2, 5, 3, S, S) and b["target"].shape == (2, S, S)


def test_a2d_extracted_frames_and_missing_files(tmp_path):
    cfg = F.make_a2d_fixture(tmp_path)
    ds = build_dataset(cfg, "train")
    written, present = ds.extract_frames()
    assert written == len({(ds.queries[q][0], n) for q, fr in ds.items for n in ds.frame_numbers(ds.queries[q][0], fr)})
    assert ds.extract_frames() == (0, written)
    png = build_dataset(dict(cfg, video_source="frames"), "train")
    raw = png.load(0)
    assert [int(f.mean()) for f in raw.frames] != [] and all(
        abs(f.mean() - F.a2d_frame_value(n)) < 4 for f, n in zip(raw.frames, raw.meta["clip_frames"]))
    (tmp_path / "Release/clips320H/vidB.mp4").unlink()
    mp4 = build_dataset(dict(cfg, video_source="mp4"), "test")
    with pytest.raises(DatasetError, match=r"missing video .*vidB.mp4"):
        mp4.load(0)
    with pytest.raises(ConfigError, match="frame_offsets has 5 entries but dataset.num_frames=3"):
        build_dataset(dict(cfg, num_frames=3), "train")
    three = build_dataset(dict(cfg, num_frames=3, frame_offsets=None, frame_stride=2), "train")
    assert three.offsets == [-2, 0, 2]
    (tmp_path / "text_annotations/a2d_annotation.txt").unlink()
    with pytest.raises(DatasetError, match=r"missing A2D Sentences query file: .*a2d_annotation.txt; .*#a2d"):
        build_dataset(cfg, "train")


# ------------------------------------------------------------------------------------------------ J-HMDB
def test_jhmdb_seeded_samples_saved_and_masks(tmp_path):
    cfg = F.make_jhmdb_fixture(tmp_path)
    ds = build_dataset(cfg, "test", build_vocab(cfg))
    assert len(ds) == 6 and ds.skipped == {"video folder not found under Rename_Images/<action>/": 1}
    for s in ds.items:
        action, n_png, n_mask = F.JHMDB_VIDEOS[s["video_id"]]
        assert 1 <= s["frame"] <= n_mask and s["n_frames"] == min(n_png, n_mask)  # no frame without mask
    for i in range(len(ds)):
        x = ds[i]
        fr = x["meta"]["frame"]
        np.testing.assert_array_equal(x["gt"], F.rect_mask(*F.JHMDB_SIZE, F.jhmdb_rect(fr)))
        assert x["clip"].shape == (5, 3, S, S)
    raw = ds.load(0)
    assert raw.frames[raw.center][0, 0, 0] == 20 * raw.meta["frame"]
    saved = list(tmp_path.glob("cache/jhmdb_samples_seed42_n3.json"))
    assert saved
    again = build_dataset(cfg, "test")
    assert again.items == ds.items  # re-read from the json
    data = json.loads(saved[0].read_text())
    data["seed"] = 7
    saved[0].write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="drawn with other settings"):
        build_dataset(cfg, "test")
    with pytest.raises(ConfigError, match="test-only"):
        build_dataset(cfg, "train")


# ------------------------------------------------------------------------------------------------ YTVOS
@pytest.mark.parametrize("meta_json", [False, True])
def test_ytvos_train_samples(tmp_path, meta_json):
    cfg = F.make_ytvos_fixture(tmp_path, write_meta_json=meta_json)
    vocab = build_vocab(cfg)
    ds = build_dataset(cfg, "train", vocab)
    got = sorted((ds.expressions[k]["video_id"], ds.expressions[k]["exp_id"], p) for k, p in ds.items)
    assert got == sorted([("t1", "0", i) for i in range(5)] + [("t1", "1", 2), ("t1", "1", 3),
                                                              ("t2", "0", 0), ("t2", "0", 4)])
    assert ds.skipped == {"empty expression (no words)": 1, "expression whose object is in no annotated frame": 1}
    for i in range(len(ds)):
        s = ds[i]
        m = s["meta"]
        np.testing.assert_array_equal(s["gt"], F.ytvos_expected(m["video_id"], int(m["obj_id"]), m["frame_index"]))
        assert m["kind"] == F.YTVOS_KINDS.get(m["video_id"], {}).get(m["exp_id"])
        assert s["clip"].shape == (3, 3, S, S)
    frames, center = ds.clip_at("t1", 0)
    assert center == 1 and [int(round(f.mean())) for f in frames] == [F.ytvos_frame_value(i) for i in (0, 0, 1)]
    sub = build_dataset(dict(cfg, frames_per_expression=2), "train", vocab)
    assert sorted(p for k, p in sub.items if sub.expressions[k]["video_id"] == "t1"
                  and sub.expressions[k]["exp_id"] == "0") == [1, 3]  # centres of 2 equal parts of 5


def test_ytvos_valid_expressions_and_submission(tmp_path):
    cfg = F.make_ytvos_fixture(tmp_path)
    vocab = build_vocab(cfg)
    valid = build_dataset(cfg, "valid", vocab)
    assert len(valid) == 0  # no public annotations
    exprs = list(valid.iter_expressions())
    assert sorted({e.video_id for e in exprs}) == F.YTVOS_VALID  # test videos removed
    assert len(exprs) == 4 and all(not e.has_gt and e.gt_masks() is None for e in exprs)
    x = exprs[0].sample_at(4)
    assert x["clip"].shape == (3, 3, S, S) and x["gt"] is None and x["meta"]["frame"] == "00020"
    preds = {e.video_id: {} for e in exprs}
    for e in exprs:
        preds[e.video_id][e.exp_id] = {f: np.eye(*F.YTVOS_SIZE, dtype=bool) for f in e.frames}
    out = tmp_path / "sub" / "submission.zip"
    assert write_submission(preds, out, expected=exprs) == 4 * len(F.YTVOS_FRAMES)
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        assert "Annotations/v1/0/00000.png" in names
        png = np.asarray(Image.open(io.BytesIO(z.read("Annotations/v2/1/00010.png"))))
    assert png.shape == F.YTVOS_SIZE and set(np.unique(png)) == {0, 255} and png[0, 0] == 255
    del preds["v2"]["1"]["00010"]
    with pytest.raises(DatasetError, match="submission incomplete: 1 frame"):
        write_submission(preds, tmp_path / "partial.zip", expected=exprs)
    assert not (tmp_path / "partial.zip").exists()


def test_ytvos_valid_with_annotations_like_synthetic(tmp_path):
    cfg = F.make_ytvos_fixture(tmp_path, valid_annotations=True)
    valid = build_dataset(cfg, "valid", build_vocab(cfg))
    assert len(valid) == 2 * (5 + 2)  # v1, v2: the cat in every frame, the dog in two
    e = next(valid.iter_expressions())
    gts = e.gt_masks()
    assert e.has_gt and len(gts) == 5
    np.testing.assert_array_equal(gts[2], F.ytvos_expected("t1", 1, 2))
    (tmp_path / "meta_expressions/valid/meta_expressions.json").unlink()
    with pytest.raises(DatasetError, match=r"missing Refer-YouTube-VOS meta_expressions for split 'valid'.*#ytvos"):
        build_dataset(cfg, "valid")
