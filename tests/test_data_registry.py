"""Registry, config files, prepare_data and error messages of the data layer."""

import importlib.util
import re
import sys
from pathlib import Path

import fixtures_data as F
import pytest

from cmpc.data import DATASETS, build_dataset, build_glove, build_vocab, collate, vocab_path
from cmpc.data.text import Vocabulary
from cmpc.errors import ConfigError, DatasetError

ROOT = Path(__file__).resolve().parents[1]
REAL = ["unc", "unc+", "gref", "gref_umd", "referit", "a2d", "jhmdb", "ytvos"]


def test_unknown_dataset_and_key_and_root():
    with pytest.raises(ConfigError, match=r"unknown dataset.name='coco'; known datasets: a2d, gref, .*ytvos"):
        build_dataset({"name": "coco", "root": "x"}, "train")
    with pytest.raises(ConfigError, match="dataset.root is not set"):
        build_dataset({"name": "unc"}, "train")


def test_unknown_key_lists_accepted(tmp_path):
    cfg = F.make_refer_fixture(tmp_path, "unc")
    with pytest.raises(ConfigError,
                       match=r"does not take key\(s\) dataset.frames_per_video; accepted: .*sentence_field"):
        build_dataset(dict(cfg, frames_per_video=3), "train")


def test_vocab_from_file_cache_and_glove(tmp_path):
    cfg = F.make_refer_fixture(tmp_path, "unc")
    v = build_vocab(cfg)
    path = vocab_path(cfg)
    assert path.is_file() and Vocabulary.load(path) == v
    assert {"man", "left", "guy", "two", "blue", "boxes"} <= set(v.words)
    assert "cafe" not in v.words  # only the training split
    (tmp_path / "vocab.txt").write_text("<pad>\n<go>\n<eos>\n<unk>\nman\n")
    assert build_vocab(dict(cfg, vocab=str(tmp_path / "vocab.txt"))).words == ["<pad>", "<unk>", "<go>", "<eos>", "man"]
    assert build_glove(cfg, v) is None
    (tmp_path / "g.txt").write_text("man 1 2\nleft 3 4\n")
    g = build_glove(dict(cfg, glove=str(tmp_path / "g.txt")), v)
    assert g.shape == (len(v), 2) and list(g[v.index["left"]]) == [3, 4]
    assert list((tmp_path / "cache").glob("glove_g_*.npy"))


def test_generate_hook_calls_synthetic(tmp_path, monkeypatch):
    import cmpc.data.synthetic as syn
    calls = []

    monkeypatch.setattr(syn, "ensure_image_benchmark", lambda root, **kw: calls.append(("image", root, kw)))
    monkeypatch.setattr(syn, "ensure_video_benchmark", lambda root, **kw: calls.append(("video", root, kw)))
    with pytest.raises(DatasetError):  # the fakes write nothing: the layout check then fails
        build_dataset({"name": "synthetic", "root": str(tmp_path), "generate": {"seed": 3}}, "train")
    with pytest.raises(DatasetError):
        build_dataset({"name": "synthetic_video", "root": str(tmp_path), "generate": {"seed": 4}}, "train")
    assert [(c[0], c[2]) for c in calls] == [("image", {"seed": 3}), ("video", {"seed": 4})]


def test_collate_rejects_mixed_samples(tmp_path):
    cfg = F.make_refer_fixture(tmp_path, "unc")
    ds = build_dataset(cfg, "train", build_vocab(cfg))
    a = ds[0]
    b = dict(a)
    del b["image"]
    with pytest.raises(ValueError, match="different keys"):
        collate([a, b])


@pytest.mark.parametrize("name", REAL)
def test_config_files_document_every_key(name):
    text = (ROOT / "configs" / "dataset" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_")
    body = text.split("\ndataset:\n", 1)[1]
    for line in body.splitlines():
        if line.strip() and not line.startswith("#") and line.startswith("  ") and ":" in line:
            assert "#" in line, f"{name}.yaml: key without a comment: {line}"


FIXTURE = {"unc": lambda r: F.make_refer_fixture(r, "unc"), "unc+": lambda r: F.make_refer_fixture(r, "unc+"),
           "gref": lambda r: F.make_refer_fixture(r, "gref"), "gref_umd": lambda r: F.make_refer_fixture(r, "gref_umd"),
           "referit": F.make_referit_fixture, "a2d": F.make_a2d_fixture, "jhmdb": F.make_jhmdb_fixture,
           "ytvos": F.make_ytvos_fixture}


def test_config_files_compose_and_build(tmp_path):
    hydra = pytest.importorskip("hydra")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        for name in REAL:
            root = tmp_path / name
            over = FIXTURE[name](root)
            cfg = compose("train", overrides=[f"dataset={name}", f"dataset.root={root}",
                                              f"dataset.input_size={F.INPUT_SIZE}"])
            assert cfg.dataset.name == name and cfg.dataset.cache_dir == f"{root}/cache"
            vocab = build_vocab(cfg.dataset)
            ds = build_dataset(cfg.dataset, cfg.dataset.train_split, vocab)
            assert type(ds) is DATASETS[name] and len(ds) > 0, name
            x = ds[0]
            assert (x["clip"].shape[0] if ds.is_video else 1) == cfg.dataset.num_frames
            assert over["name"] == name
    GlobalHydra.instance().clear()
    del hydra


def _prepare_module():
    spec = importlib.util.spec_from_file_location("prepare_data_script", ROOT / "scripts" / "prepare_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prepare_data_counts_and_missing_file(tmp_path):
    mod = _prepare_module()
    cfg = F.make_a2d_fixture(tmp_path)
    lines = []
    table = mod.prepare(cfg, extract_frames=True, out=lines.append)
    text = "\n".join(lines)
    assert table["train"] == {"videos": 1, "objects": 2, "sentences": 2, "samples": 4, "skipped": 4, "unreadable": 0,
                              "cut": 0}
    assert "skipped 1: malformed instance id (e.g. '1 (copy)')" in text
    assert "3,782 videos / 6,655 sentences" in text
    assert re.search(r"frames for train: \d+ PNGs written", text)
    assert (tmp_path / "Release/frames/vidA/00005.png").is_file()
    import subprocess
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_data.py"), "dataset=referit",
                        f"dataset.root={tmp_path / 'none'}", f"paths.runs={tmp_path / 'runs'}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: missing ReferIt query file for split 'trainval'")
    assert "data/README.md#referit" in r.stderr
