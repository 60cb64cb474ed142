"""Tests of the procedural synthetic benchmark (cmpc.data.synthetic): formats, determinism, resolver, atomicity."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mu

from cmpc.data import synthetic as syn
from cmpc.data.synthetic import refer_writer, resolver
from cmpc.data.synthetic.output import MARKER
from cmpc.errors import ConfigError

# pycocotools' decode trips a numpy-2 DeprecationWarning; harmless
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
IMG = dict(seed=3, splits={"train": 8, "val": 3, "test": 3}, negative=0.3, progress=False)
VID = dict(seed=3, splits={"train": 4, "valid": 3}, num_frames=6, negative=0.3, progress=False)


# loads the generator package alone (without cmpc.data/__init__, which pulls in torch)
STANDALONE = ("import importlib.util, sys; "
              "spec = importlib.util.spec_from_file_location('synthetic_alone', 'cmpc/data/synthetic/__init__.py', "
              "submodule_search_locations=['cmpc/data/synthetic']); "
              "m = importlib.util.module_from_spec(spec); sys.modules['synthetic_alone'] = m; "
              "spec.loader.exec_module(m); ")


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return syn.generate_image_benchmark(tmp_path_factory.mktemp("img") / "synthetic", **IMG)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    return syn.generate_video_benchmark(tmp_path_factory.mktemp("vid") / "synthetic_video", **VID)


def _load_refs(root):
    with open(root / "synthetic" / "refs(unc).p", "rb") as f:
        return pickle.load(f)


def _index(file_name):  # synthetic_<split>_<index>.jpg
    _, split, idx = Path(file_name).stem.split("_")
    return split, int(idx)


# ------------------------------------------------------------------------------------------------ images
def test_image_files_load_with_refer_fields(image_root):
    refs = _load_refs(image_root)
    inst = json.loads((image_root / "synthetic" / "instances.json").read_text())
    kinds = json.loads((image_root / "synthetic" / "kinds.json").read_text())
    assert isinstance(refs, list) and refs
    assert set(inst) >= {"images", "annotations", "categories"}
    assert [c["name"] for c in inst["categories"]] == list(syn.SHAPES)
    images = {im["id"]: im for im in inst["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    for im in inst["images"]:
        assert set(im) >= {"id", "file_name", "height", "width"}
        with Image.open(image_root / "images" / "synthetic" / im["file_name"]) as pic:
            assert pic.format == "JPEG" and pic.size == (im["width"], im["height"]) == (128, 128)
    for a in inst["annotations"]:
        assert set(a) >= {"id", "image_id", "category_id", "segmentation", "bbox", "area", "iscrowd"}
        assert isinstance(a["segmentation"], list) and len(a["segmentation"][0]) >= 6
    seen_splits, sent_ids = set(), []
    for r in refs:
        assert set(r) >= {"ref_id", "ann_id", "image_id", "category_id", "split", "file_name", "sent_ids",
                          "sentences", "kind"}
        seen_splits.add(r["split"])
        assert r["image_id"] in images and r["file_name"] == images[r["image_id"]]["file_name"]
        if r["kind"] == "negative":
            assert r["ann_id"] == -1
        else:
            assert anns[r["ann_id"]]["image_id"] == r["image_id"]
            assert anns[r["ann_id"]]["category_id"] == r["category_id"]
        assert r["sent_ids"] == [s["sent_id"] for s in r["sentences"]]
        for s in r["sentences"]:
            assert set(s) >= {"tokens", "raw", "sent_id", "sent"}
            assert s["sent"] == syn.clean_sentence(s["raw"]) and s["tokens"] == s["sent"].split()
            assert kinds[str(s["sent_id"])] == r["kind"]
            sent_ids.append(s["sent_id"])
    assert seen_splits == {"train", "val", "test"}
    assert len(set(sent_ids)) == len(sent_ids) == len(kinds)
    assert any(r["kind"] == "negative" for r in refs)


def test_polygons_decode_to_the_drawn_masks(image_root):
    inst = json.loads((image_root / "synthetic" / "instances.json").read_text())
    by_image = {}
    for a in inst["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for im in inst["images"]:
        split, index = _index(im["file_name"])
        s = syn.generate_image_sample(IMG["seed"], split, index, negative=IMG["negative"])
        anns = by_image[im["id"]]
        assert len(anns) == len(s.masks)
        for a, drawn in zip(anns, s.masks):
            m = mu.decode(mu.frPyObjects(a["segmentation"], im["height"], im["width"])).any(axis=2)
            assert np.array_equal(m, drawn)  # exact, not just IoU > 0.98
            assert a["area"] == drawn.sum() > 40
            ys, xs = np.nonzero(drawn)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert sum(m.astype(int) for m in s.masks).max() == 1  # objects never overlap
        jpg = np.asarray(Image.open(image_root / "images" / "synthetic" / im["file_name"]).convert("RGB"), float)
        assert np.abs(jpg - s.image).mean() < 4.0


def test_rle_option_gives_the_same_masks(tmp_path, image_root):
    root = syn.generate_image_benchmark(tmp_path / "rle", **{**IMG, "splits": {"train": 2}, "segmentation": "rle"})
    inst = json.loads((root / "synthetic" / "instances.json").read_text())
    poly = {a["id"]: a for a in json.loads((image_root / "synthetic" / "instances.json").read_text())["annotations"]}
    for a in inst["annotations"]:
        assert isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], str)
        m = mu.decode(a["segmentation"]).astype(bool)
        p = mu.decode(mu.frPyObjects(poly[a["id"]]["segmentation"], 128, 128)).any(axis=2)
        assert np.array_equal(m, p)  # same seed/params -> same first train images, same ann ids


def test_every_written_expression_resolves_to_its_target(image_root):
    scenes = syn.load_image_scenes(image_root)
    inst = json.loads((image_root / "synthetic" / "instances.json").read_text())
    anns = {a["id"]: a for a in inst["annotations"]}
    for scene in scenes.values():  # scenes.json agrees with the masks
        for o in scene.objects:
            x, y, w, h = anns[o.oid]["bbox"]
            assert abs(x + w / 2 - o.centres[0][0]) < o.radius and abs(y + h / 2 - o.centres[0][1]) < o.radius
            assert max(w, h) <= 2 * o.radius + 2
    n = Counter()
    for r in _load_refs(image_root):
        scene = scenes[r["image_id"]]
        target = None if r["ann_id"] == -1 else [o.oid for o in scene.objects].index(r["ann_id"])
        for s in r["sentences"]:
            for text in (s["raw"], s["sent"]):
                expr = syn.parse_expression(text)
                got = syn.resolve(scene, expr)
                assert got == (set() if target is None else {target}), (text, got)
                assert syn.kind_is_valid(scene, expr, r["kind"], target), text
            n[r["kind"]] += 1
    assert set(n) == {"entity", "attribute", "relation", "location", "negative"}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, image_root):
    again = syn.generate_image_benchmark(tmp_path / "again", **IMG)
    a, b = _digest(image_root), _digest(again)
    assert a == b and len(a) == 14 + 6  # 14 images, 4 files, stamp, marker
    other = _digest(syn.generate_image_benchmark(tmp_path / "other", **{**IMG, "seed": 4}))
    for name in ("synthetic/instances.json", "synthetic/refs(unc).p", "images/synthetic/synthetic_train_000000.jpg"):
        assert other[name] != a[name]


def test_same_bytes_in_a_fresh_process(tmp_path, image_root):
    code = STANDALONE + f"m.generate_image_benchmark(sys.argv[1], **{IMG!r})"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "p")], check=True, cwd=REPO, env=env)
    assert _digest(tmp_path / "p") == _digest(image_root)


def test_samples_depend_only_on_seed_split_index():
    a = syn.generate_image_sample(0, "train", 5)
    b = syn.generate_image_sample(0, "train", 5)
    c = syn.generate_image_sample(0, "val", 5)
    assert np.array_equal(a.image, b.image) and not np.array_equal(a.image, c.image)


def test_kind_shares_follow_the_weights():
    def shares(kinds, n, video=False):
        c = Counter()
        for i in range(n):
            s = (syn.generate_video_sample(1, "train", i, kinds=kinds, num_frames=4) if video
                 else syn.generate_image_sample(1, "train", i, kinds=kinds))
            for r in s.refs:
                c[r.kind] += len(r.sentences)
        total = sum(c.values())
        return {k: v / total for k, v in c.items()}

    eq = shares(None, 80)
    assert set(eq) == set(syn.IMAGE_KINDS) and all(0.17 < v < 0.33 for v in eq.values()), eq
    skew = shares({"entity": 3, "location": 1}, 40)
    assert set(skew) == {"entity", "location"} and 0.6 < skew["entity"] < 0.9, skew
    vid = shares(None, 30, video=True)
    assert set(vid) == set(syn.KINDS[:5]) and all(0.1 < v < 0.3 for v in vid.values()), vid


# ------------------------------------------------------------------------------------------------ videos
def test_video_layout_masks_and_expressions(video_root):
    kinds = json.loads((video_root / "kinds.json").read_text())
    scenes = syn.load_video_scenes(video_root)
    frames = [f"{5 * k:05d}" for k in range(6)]
    seen = Counter()
    for split, count in VID["splits"].items():
        meta = json.loads((video_root / split / "meta.json").read_text())["videos"]
        mexp = json.loads((video_root / "meta_expressions" / split / "meta_expressions.json").read_text())["videos"]
        assert len(meta) == len(mexp) == count and set(meta) == set(mexp)
        for vid, v in mexp.items():
            assert v["frames"] == frames and set(v) == {"expressions", "frames"}
            s = syn.generate_video_sample(VID["seed"], split, int(vid.split("_")[1]), num_frames=6,
                                          negative=VID["negative"])
            objs = meta[vid]["objects"]
            assert list(objs) == [str(i + 1) for i in range(len(s.scene.objects))]
            assert all(o["frames"] == frames and o["category"] in syn.SHAPES for o in objs.values())
            for k, fr in enumerate(frames):
                with Image.open(video_root / split / "Annotations" / vid / f"{fr}.png") as png:
                    assert png.mode == "P"
                    lab = np.array(png)
                assert np.array_equal(lab, s.labels[k])
                assert set(np.unique(lab)) == {0, *range(1, len(objs) + 1)}  # every object visible in every frame
                with Image.open(video_root / split / "JPEGImages" / vid / f"{fr}.jpg") as jpg:
                    assert jpg.size == (128, 128)
            scene = scenes[vid]
            for eid, e in v["expressions"].items():
                assert set(e) == {"exp", "obj_id"}
                kind = kinds[vid][eid]
                target = None if e["obj_id"] == "-1" else int(e["obj_id"]) - 1
                got = syn.resolve(scene, syn.parse_expression(e["exp"]))
                assert got == (set() if target is None else {target}), e
                assert syn.kind_is_valid(scene, syn.parse_expression(e["exp"]), kind, target)
                seen[kind] += 1
                if target is not None:  # the written target is the object drawn with that id
                    assert (s.labels[3] == target + 1).any()
    assert seen["action"] > 0


def test_video_determinism(tmp_path, video_root):
    assert _digest(syn.generate_video_benchmark(tmp_path / "v", **VID)) == _digest(video_root)
    other = syn.generate_video_benchmark(tmp_path / "w", **{**VID, "seed": 9})
    assert _digest(other)["meta_expressions/train/meta_expressions.json"] != \
        _digest(video_root)["meta_expressions/train/meta_expressions.json"]


def test_action_twins_differ_only_in_motion():
    for i in range(40):
        s = syn.generate_video_sample(2, "train", i)
        for r in s.refs:
            if r.kind != "action":
                continue
            t = s.scene.objects[r.target]
            look = (t.shape, t.colour, t.size, t.radius)
            twins = [o for o in s.scene.objects if (o.shape, o.colour, o.size, o.radius) == look]
            assert len(twins) >= 2 and len({syn.motion_label(o, 128) for o in twins}) == len(twins)
            return
    pytest.fail("no action expression in 40 clips")


def test_directional_relations_need_the_landmark():
    """"The circle left of the blue square" must not be answerable as "the leftmost circle" (docs/synthetic.md)."""
    subkinds = [syn.relation_subkind(s.scene, r.expression)
                for s in (syn.generate_image_sample(0, "train", i, kinds={"relation": 1}) for i in range(60))
                for r in s.refs]
    directional = [k for k in subkinds if k in ("shortcut", "decoy")]
    assert len(directional) >= 30 and directional.count("shortcut") / len(directional) < 0.45, subkinds
    assert set(subkinds) <= {"shortcut", "decoy", "near", "between"} and "near" in subkinds


def test_relation_gap_sets_the_target_landmark_distance():
    def gaps(relation_gap):
        out = []
        for i in range(30):
            s = syn.generate_image_sample(0, "train", i, kinds={"relation": 1}, relation_gap=relation_gap)
            r = s.refs[0]  # the designed expression: its target was placed at the drawn distance
            if r.expression.relation in resolver._AXIS_LOCATION:
                (lm,) = [o for o in s.scene.objects if resolver._matches(o, r.expression.landmarks[0])]
                t = s.scene.objects[r.target]
                along = resolver._axes(r.expression.relation, t.centres[0][0] - lm.centres[0][0],
                                  t.centres[0][1] - lm.centres[0][1])[0]
                out.append((along - t.radius - lm.radius) / 128 - syn.GAP)
        return np.array(out)
    near, far = gaps((0.0, 0.15)), gaps((0.25, 0.35))
    assert len(near) >= 8 and len(far) >= 8
    assert near.min() >= -1e-3 and near.max() <= 0.15 + 1e-3
    assert far.min() >= 0.25 - 1e-3 and far.max() <= 0.35 + 1e-3


# ------------------------------------------------------------------------------------------------ resolver
def _obj(shape, x, y, colour="red", size="small", r=9.0, centres=None):
    return syn.SceneObject(shape, colour, size, r, centres or [(x, y)])


def test_resolver_semantics_and_ambiguity():
    P, E = syn.Phrase, syn.Expression
    a, b, sq = _obj("circle", 20, 60), _obj("circle", 100, 60), _obj("square", 60, 62, colour="blue")
    scene = syn.Scene(128, [a, b, sq])
    assert syn.resolve(scene, E(P("circle"))) == {0, 1}
    assert syn.resolve(scene, E(P("circle"), location=("left",))) == {0}
    assert syn.resolve(scene, E(P("circle"), relation="right", landmarks=(P("square"),))) == {1}
    assert syn.resolve(scene, E(P("circle"), relation="left", landmarks=(P("square", "blue"),))) == {0}
    assert syn.resolve(scene, E(P("circle", "green"))) == set()
    assert syn.resolve(scene, E(P("circle"), relation="left", landmarks=(P("star"),))) is None  # no landmark
    close = syn.Scene(128, [_obj("circle", 20, 60), _obj("circle", 23, 100)])
    assert syn.resolve(close, E(P("circle"), location=("left",))) is None  # too close to call
    assert syn.resolve(close, E(P("circle"), location=("top",))) == {0}
    diag = syn.Scene(128, [_obj("circle", 20, 20), _obj("circle", 100, 100)])
    assert syn.resolve(diag, E(P("circle"), location=("top", "left"))) == {0}
    assert syn.resolve(diag, E(P("circle"), location=("top", "right"))) is None  # no object is both
    # a twin up-left of the landmark, less than 45 degrees off its axis, is neither clearly left of it nor clearly not
    unclear = syn.Scene(128, [_obj("circle", 30, 64), _obj("circle", 34, 44), _obj("square", 64, 64)])
    assert syn.resolve(unclear, E(P("circle"), relation="left", landmarks=(P("square"),))) is None
    # further off the axis (and clear of the landmark) it is above the square, not left of it: a decoy twin that is
    # further left than the target, so that "the leftmost circle" is not "the circle left of the square"
    decoy = syn.Scene(128, [_obj("circle", 40, 64), _obj("circle", 20, 15), _obj("square", 64, 64)])
    assert syn.resolve(decoy, E(P("circle"), relation="left", landmarks=(P("square"),))) == {0}
    assert syn.resolve(decoy, E(P("circle"), location=("left",))) == {1}
    assert syn.relation_subkind(decoy, E(P("circle"), relation="left", landmarks=(P("square"),))) == "decoy"
    assert syn.relation_subkind(scene, E(P("circle"), relation="right", landmarks=(P("square"),))) == "shortcut"
    between = syn.Scene(128, [_obj("star", 20, 64), _obj("square", 100, 64), _obj("circle", 60, 66),
                              _obj("circle", 60, 120)])
    expr = E(P("circle"), relation="between", landmarks=(P("star"), P("square")))
    assert syn.resolve(between, expr) == {2}


def test_shortcut_chance_of_each_kind():
    """What answering without the landmark (relations) or the position words (locations) gives: the location phrase
    of a directional relation is right (1) or a decoy's (0); near/between and locations pick a look-alike at random."""
    P, E = syn.Phrase, syn.Expression
    scene = syn.Scene(128, [_obj("circle", 20, 60), _obj("circle", 100, 60), _obj("square", 60, 62, colour="blue")])
    assert syn.shortcut_chance(scene, E(P("circle"), relation="right", landmarks=(P("square"),))) == 1.0
    decoy = syn.Scene(128, [_obj("circle", 40, 64), _obj("circle", 20, 15), _obj("square", 64, 64)])
    assert syn.shortcut_chance(decoy, E(P("circle"), relation="left", landmarks=(P("square"),))) == 0.0
    three = syn.Scene(128, [_obj("star", 20, 64), _obj("square", 100, 64), _obj("circle", 60, 66),
                            _obj("circle", 60, 120), _obj("circle", 10, 10, colour="blue")])
    between = E(P("circle", "red"), relation="between", landmarks=(P("star"), P("square")))
    assert syn.shortcut_chance(three, between) == 0.5  # two red circles: the blue one does not match
    assert syn.shortcut_chance(three, E(P("circle"), location=("bottom",))) == pytest.approx(1 / 3)
    assert syn.shortcut_chance(three, E(P("star"))) is None  # entity/attribute: no shortcut
    assert syn.shortcut_chance(three, E(P("circle", "blue"))) is None


def test_motion_labels():
    def lab(cs):
        return syn.motion_label(_obj("circle", 0, 0, centres=cs), 128)
    assert lab([(50, 50)] * 6) == "still"
    assert lab([(50 - 4 * k, 50) for k in range(6)]) == "left"
    assert lab([(50, 50 + 4 * k) for k in range(6)]) == "down"
    assert lab([(50, 50 - 12 * abs(np.sin(np.pi * k / 5))) for k in range(6)]) == "bounce"
    assert lab([(50 + 4 * k, 50 + 4 * k) for k in range(6)]) is None  # diagonal: no clear label


def test_parse_round_trip_and_errors():
    rng = np.random.default_rng(0)
    P, E = syn.Phrase, syn.Expression
    exprs = [E(P("circle", "red", "small")), E(P("square", None, "big")),
             E(P("star"), location=("bottom", "right")), E(P("cross", "blue"), location=("top",)),
             E(P("diamond"), relation="near", landmarks=(P("circle", "green"),)),
             E(P("triangle", "yellow"), relation="between", landmarks=(P("square"), P("star", None, "big"))),
             E(P("circle"), relation="left", landmarks=(P("square"),)),
             E(P("circle", "purple"), motion="bounce"), E(P("square"), motion="still"), E(P("star"), motion="up")]
    for e in exprs:
        for _ in range(30):
            text = syn.realize(e, rng, video=bool(e.motion))
            assert syn.parse_expression(text) == e, text
    for bad in ("the", "a red circle", "the circle left of", "the red blue circle", "the circle that is moving",
                "the leftmost circle moving left", "the circle between the square"):
        with pytest.raises(ValueError):
            syn.parse_expression(bad)


# ------------------------------------------------------------------------------------------------ atomicity
def test_ensure_skips_regenerates_and_is_atomic(tmp_path, monkeypatch):
    small = dict(splits={"train": 2, "val": 1, "test": 1}, progress=False)
    root = tmp_path / "syn"
    # a leftover temp dir (even one with a stamp) does not make the dataset look complete
    leftover = tmp_path / ".syn.tmp-999999999-dead"
    syn.generate_image_benchmark(leftover, **small)
    assert not root.exists()
    syn.ensure_image_benchmark(root, **small)
    stamp = root / "synthetic" / "COMPLETE.json"
    params = json.loads(stamp.read_text())["params"]
    assert params["splits"] == small["splits"] and params["version"] == syn.GENERATOR_VERSION
    assert not leftover.exists()  # stale temp of a dead process is cleaned up
    inode = (root / "synthetic" / "instances.json").stat().st_ino
    syn.ensure_image_benchmark(root, **small)  # identical params: nothing is rewritten
    assert (root / "synthetic" / "instances.json").stat().st_ino == inode
    stamp.unlink()  # no stamp -> regenerate
    syn.ensure_image_benchmark(root, **small)
    assert stamp.exists() and (root / "synthetic" / "instances.json").stat().st_ino != inode
    before = _digest(root)

    def boom(out, p, progress):  # generation dies half way
        (out / "synthetic").mkdir()
        (out / "synthetic" / "instances.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(refer_writer, "_write_images", boom)
    with pytest.raises(KeyboardInterrupt):
        syn.ensure_image_benchmark(root, **{**small, "seed": 1})
    assert _digest(root) == before  # the old complete dataset is untouched
    assert not list(tmp_path.glob(".syn.*"))  # and no temp dir is left behind
    with pytest.raises(KeyboardInterrupt):
        syn.ensure_image_benchmark(tmp_path / "fresh", **small)
    assert not (tmp_path / "fresh").exists()
    monkeypatch.undo()
    syn.ensure_image_benchmark(root, **{**small, "seed": 1})  # other params -> regenerated in place
    assert json.loads(stamp.read_text())["params"]["seed"] == 1


def test_foreign_folder_and_bad_params_raise_config_error(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a cmpc synthetic"):
        syn.ensure_image_benchmark(foreign, splits={"train": 1}, progress=False)
    assert (foreign / "notes.txt").exists()
    leftover = tmp_path / "leftover"  # a benchmark whose files were deleted, its derived cache/ kept
    (leftover / "cache" / "index").mkdir(parents=True)
    (leftover / "cache" / "vocab_synthetic_train_min1.txt").write_text("<pad>\n")
    syn.ensure_image_benchmark(leftover, splits={"train": 1}, progress=False)
    assert (leftover / MARKER).exists() and not (leftover / "cache").exists()  # stale derived files are gone
    for bad in (dict(kinds={"action": 1}), dict(kinds={"negative": 1}), dict(segmentation="png"),
                dict(max_objects=2), dict(splits={"train": -1}), dict(colour="red"), dict(negative=2.0),
                dict(relation_gap=[0.3, 0.1]), dict(relation_gap=0.2)):
        with pytest.raises(ConfigError):
            syn.ensure_image_benchmark(tmp_path / "x", progress=False, **bad)
    with pytest.raises(ConfigError):
        syn.ensure_video_benchmark(tmp_path / "v", num_frames=2, progress=False)


def test_generator_module_does_not_import_torch():
    code = (STANDALONE + "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert not [k for k in sys.modules if k.startswith('cmpc.data')]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
