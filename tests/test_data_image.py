"""Image datasets through build_dataset: refer layout (UNC, UNC+, G-Ref, refclef) and ReferIt."""

import json
import logging

import fixtures_data as F
import numpy as np
import pytest
import torch

from cmpc.data import DATASETS, build_dataset, build_vocab, collate
from cmpc.data.base import Unreadable
from cmpc.data.refer import ReferDataset
from cmpc.errors import ConfigError, DatasetError


@pytest.mark.parametrize("name", ["unc", "unc+", "gref", "gref_umd", "refclef"])
def test_refer_family_masks_and_skips(tmp_path, name, caplog):
    cfg = F.make_refer_fixture(tmp_path, name)
    vocab = build_vocab(cfg)
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(cfg, "train", vocab)
    assert type(ds) is DATASETS[name]
    # ref 100: 2 sentences, ref 101: 1 of 2 (the other is punctuation only); refs 104/105 skipped
    assert len(ds) == 3
    assert ds.skipped == {"ref whose ann_id is not in instances.json": 1,
                          "ref without a usable segmentation (no polygon with >= 3 points, no RLE)": 1,
                          "polygon with fewer than 3 points dropped": 1,
                          "empty sentence (no words)": 1}
    assert "skipped 1 entry: ref whose ann_id is not in instances.json" in caplog.text
    for i in range(len(ds)):
        s = ds[i]
        m = s["meta"]
        np.testing.assert_array_equal(s["gt"], F.refer_expected(m["ann_id"]))
        assert s["image"].shape == (3, F.INPUT_SIZE, F.INPUT_SIZE)
        assert s["target"].shape == (F.INPUT_SIZE, F.INPUT_SIZE) and s["target"].sum() > 0
        assert m["orig_size"] == s["gt"].shape
        assert m["kind"] == ("spatial" if m["ref_id"] == 100 else None)
        assert m["group"] == f"{name}/{m['image_id']}"
    assert ds.counts() == {"images": 1, "objects": 2, "sentences": 3, "samples": 3}
    assert sorted(ds.sentences()) == ["left guy", "man on the left", "two blue boxes"]
    third = F.REFER_LAYOUT[name][3]
    other = build_dataset(cfg, third, vocab)
    anns = sorted(other[i]["meta"]["ann_id"] for i in range(len(other)))
    assert anns == ([12, 13] if third == "val" else [13])
    for i in range(len(other)):  # RLE masks (compressed and uncompressed), grey image tiled to RGB
        s = other[i]
        np.testing.assert_array_equal(s["gt"], F.refer_expected(s["meta"]["ann_id"]))


def test_refer_exact_split_raw_field_and_py2_pickle(tmp_path):
    cfg = F.make_refer_fixture(tmp_path, "unc")
    vocab = build_vocab(cfg)
    with pytest.raises(ConfigError, match="split 'test' not found .*available splits: testA, train, val"):
        build_dataset(cfg, "test", vocab)  # no substring matching of testA
    raw = build_dataset(dict(cfg, sentence_field="raw", cache_dir=False), "val", vocab)
    assert raw.load(0).sentence == "caf\u00e9 sign"  # latin-1 py2 string decoded by the fallback
    sent = build_dataset(cfg, "val", vocab)
    assert sent.load(0).sentence == "cafe sign"
    grey = build_dataset(cfg, "testA", vocab)[0]
    assert grey["image"].shape[0] == 3 and grey["meta"]["orig_size"] == (20, 24)


def test_refer_missing_and_corrupt_files(tmp_path):
    cfg = F.make_refer_fixture(tmp_path, "unc")
    (tmp_path / "refcoco" / "instances.json").unlink()
    with pytest.raises(DatasetError, match=r"missing refcoco instances file: .*refcoco/instances.json; .*"
                                           r"data/README.md#unc"):
        build_dataset(cfg, "train")
    cfg = F.make_refer_fixture(tmp_path / "b", "unc")
    vocab = build_vocab(cfg)
    ds = build_dataset(cfg, "val", vocab)
    (tmp_path / "b/images/mscoco/images/train2014/COCO_train2014_000000000002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="cannot read image .*COCO_train2014_000000000002.jpg"):
        ds.load(0)
    unreadable = ds[0]  # the model sample of an unreadable file: dropped and counted by collate / the loops
    assert isinstance(unreadable, Unreadable) and "COCO_train2014_000000000002.jpg" in unreadable.reason
    # an image that is not there at all: its refs are skipped and counted; a split left empty is an error
    (tmp_path / "b/images/mscoco/images/train2014/COCO_train2014_000000000002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"no usable sample in split 'val' .*image file missing under .*: 1"):
        build_dataset(cfg, "val", vocab)


def test_index_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    cfg = F.make_refer_fixture(tmp_path, "unc")
    build_dataset(cfg, "train")
    assert list((tmp_path / "cache" / "index").glob("unc_train_*.pkl"))

    def boom(self):
        raise AssertionError("index rebuilt although cached")

    monkeypatch.setattr(ReferDataset, "_build_index", boom)
    assert len(build_dataset(cfg, "train")) == 3
    refs = tmp_path / "refcoco" / "refs(unc).p"
    refs.write_bytes(refs.read_bytes())  # new mtime -> rebuilt
    with pytest.raises(AssertionError, match="rebuilt"):
        build_dataset(cfg, "train")


def test_referit_masks_and_skips(tmp_path):
    cfg = F.make_referit_fixture(tmp_path)
    vocab = build_vocab(cfg)
    ds = build_dataset(cfg, "trainval", vocab)
    assert len(ds) == 3
    assert ds.skipped == {"malformed query entry (key is not '<imgid>_<regionid>' or value not a list)": 1,
                          "mask file missing": 1, "empty sentence (no words)": 1}
    for i in range(len(ds)):
        s = ds[i]
        np.testing.assert_array_equal(s["gt"], F.rect_mask(*s["gt"].shape, F.REFERIT_REGIONS[s["meta"]["ref_id"]]))
    test = build_dataset(cfg, "test", vocab)
    assert [test.load(i).sentence for i in range(2)] == ["person left", "left person."]
    assert test.counts() == {"images": 1, "objects": 1, "sentences": 2, "samples": 2}
    assert test.available_splits() == ["test", "trainval"]
    b = collate([test[0], test[1]])
    assert b["image"].shape == (2, 3, F.INPUT_SIZE, F.INPUT_SIZE) and b["words"].shape == (2, 20)
    assert isinstance(b["gt"], list) and isinstance(b["meta"], list)
    (tmp_path / "referit_query_test.json").unlink()
    with pytest.raises(DatasetError, match=r"missing ReferIt query file for split 'test': .*referit_query_test.json"):
        build_dataset(cfg, "test", vocab)


def test_referit_mask_value_zero_is_object(tmp_path):
    cfg = F.make_referit_fixture(tmp_path)
    ds = build_dataset(cfg, "test")
    m = ds.load(0).mask
    assert m.dtype == bool and m.sum() == 15 * 7  # rectangle (5, 20, 2, 9)
    json.loads((tmp_path / "referit_query_test.json").read_text())
    assert torch.is_tensor(build_dataset(cfg, "test", build_vocab(cfg))[0]["words"])


def test_decoded_images_are_read_once_kept_read_only_and_give_the_same_samples(tmp_path, monkeypatch):
    import cmpc.data.base as base

    cfg = F.make_refer_fixture(tmp_path, "unc")
    vocab = build_vocab(cfg)
    plain = build_dataset(cfg, "train", vocab)
    cached = build_dataset(dict(cfg, image_cache_mb=1), "train", vocab)
    full = build_dataset(dict(cfg, image_cache_mb=1e-6), "train", vocab)  # not one image fits
    reads = []
    real = base.read_image
    monkeypatch.setattr(base, "read_image", lambda path, **kw: reads.append(str(path)) or real(path, **kw))
    for _ in range(2):
        for i in range(len(plain)):
            got, want = cached[i], plain[i]
            assert torch.equal(got["image"], want["image"]) and torch.equal(got["target"], want["target"])
            np.testing.assert_array_equal(got["gt"], want["gt"])
    assert len(reads) == 2 * len(plain) + plain.counts()["images"]  # plain: every time; cached: once per file
    assert cached.decoded_bytes == sum(a.nbytes for a in cached.decoded.values()) > 0
    with pytest.raises(ValueError, match="read-only"):
        cached.load(0).frames[0][0, 0] = 0  # the kept pixels cannot be drawn on
    reads.clear()
    full[0], full[0]
    assert len(reads) == 2 and not full.decoded
    for bad in (-1, "lots", float("inf"), float("nan"), True):
        with pytest.raises(ConfigError, match="dataset.image_cache_mb=.* must be a number >= 0"):
            build_dataset(dict(cfg, image_cache_mb=bad), "train", vocab)
