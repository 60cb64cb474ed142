"""Generate the built-in synthetic referring segmentation benchmark and (optionally) its sample figures.

    python scripts/make_synthetic.py root=data/synthetic                         # images (refer layout)
    python scripts/make_synthetic.py root=data/synthetic_video video=true        # videos (Refer-YouTube-VOS layout)
    python scripts/make_synthetic.py root=data/synthetic stats=true grid=docs/img/synthetic_grid.png
    python scripts/make_synthetic.py root=data/far splits='{train: 0, val: 0, test: 400}' kinds='{relation: 1}' \
        relation_gap='[0.2, 0.35]'

Hydra ``key=value`` overrides of ``configs/make_synthetic.yaml``, whose generator keys mirror
:func:`cmpc.data.synthetic.generate_image_benchmark` / ``generate_video_benchmark``. Generation is skipped when
``root`` already holds a complete benchmark made with the same parameters (``force=true`` regenerates).
``grid=PATH`` draws sample pictures (expression as title, target outlined) from the written files; with
``video=true`` it draws frame rows of action expressions. See docs/synthetic.md.

The former ``--root PATH --video --train N ...`` flags still work for now: they print one deprecation line with
the equivalent command and run it.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import textwrap
from pathlib import Path

import hydra
import numpy as np
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmpc.cli import friendly_errors  # noqa: E402
from cmpc.data import synthetic as syn  # noqa: E402
from cmpc.errors import ConfigError  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "make_synthetic.yaml"
# keys of configs/make_synthetic.yaml passed on to the generator when not null
GENERATOR_KEYS = ("seed", "image_size", "num_frames", "splits", "kinds", "min_objects", "max_objects",
                  "expressions_per_image", "expressions_per_video", "negative", "relation_gap", "segmentation")


def make(cfg: dict) -> Path:
    """Generate (or find) the benchmark ``cfg`` (a plain dict of configs/make_synthetic.yaml) describes; print the
    statistics and write the figure it asks for. Raises :class:`ConfigError` for a missing root or bad values."""
    if not cfg.get("root"):
        raise ConfigError("make_synthetic: root is not set; pass the output folder, e.g. root=data/synthetic")
    params = {k: cfg[k] for k in GENERATOR_KEYS if cfg.get(k) is not None}
    if cfg["video"]:
        fn = syn.generate_video_benchmark if cfg["force"] else syn.ensure_video_benchmark
    else:
        fn = syn.generate_image_benchmark if cfg["force"] else syn.ensure_image_benchmark
    root = fn(cfg["root"], progress=bool(cfg["progress"]), **params)
    print(f"benchmark ready: {root}")
    if cfg["stats"]:
        print(syn.format_statistics(syn.benchmark_statistics(root)))
    if cfg["grid"]:
        (video_figure if cfg["video"] else image_grid)(root, cfg["grid"])
        print(f"wrote {cfg['grid']}")
    return root


# ------------------------------------------------------------------------------------ deprecated --flags
def _legacy_parser():
    ap = argparse.ArgumentParser(prog="make_synthetic.py (deprecated flags; use key=value)")
    ap.add_argument("--root", required=True)
    ap.add_argument("--video", action="store_true")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--frames", type=int, default=None)
    for split in ("train", "val", "test", "valid"):
        ap.add_argument(f"--{split}", type=int, default=None)
    ap.add_argument("--min-objects", type=int, default=None)
    ap.add_argument("--max-objects", type=int, default=None)
    ap.add_argument("--kinds", default=None)
    ap.add_argument("--negative", type=float, default=None)
    ap.add_argument("--relation-gap", type=float, nargs=2, default=None)
    ap.add_argument("--segmentation", choices=("polygon", "rle"), default=None)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--stats", action="store_true")
    ap.add_argument("--grid", default=None)
    ap.add_argument("--quiet", action="store_true")
    return ap


LEGACY_FLAGS = {opt for action in _legacy_parser()._actions for opt in action.option_strings} - {"-h", "--help"}


def is_legacy(argv) -> bool:
    """Whether ``argv`` uses the former ``--root``-style flags."""
    return any(a.split("=", 1)[0] in LEGACY_FLAGS for a in argv)


def legacy_overrides(argv) -> dict:
    """The config values (keys of configs/make_synthetic.yaml) that the former flags ``argv`` stand for; split
    counts not given keep their defaults, as the flags did."""
    a = _legacy_parser().parse_args(argv)
    values = {"root": a.root, "video": a.video, "seed": a.seed, "image_size": a.image_size,
              "num_frames": a.frames, "min_objects": a.min_objects, "max_objects": a.max_objects,
              "negative": a.negative, "relation_gap": a.relation_gap, "segmentation": a.segmentation,
              "force": a.force, "stats": a.stats, "grid": a.grid, "progress": not a.quiet}
    if a.kinds is not None:
        try:
            values["kinds"] = json.loads(a.kinds)
        except ValueError:
            raise ConfigError(f"--kinds {a.kinds!r} is not JSON; write kinds='{{entity: 1}}' instead") from None
    names = ("train", "valid") if a.video else ("train", "val", "test")
    wrong = [n for n in ("train", "val", "test", "valid") if n not in names and getattr(a, n) is not None]
    if wrong:
        raise ConfigError(f"--{wrong[0]} is not a split of the {'video' if a.video else 'image'} benchmark; "
                          f"its splits are {list(names)}")
    given = {n: getattr(a, n) for n in names}
    if any(v is not None for v in given.values()):
        defaults = (syn.VIDEO_DEFAULTS if a.video else syn.IMAGE_DEFAULTS)["splits"]
        values["splits"] = {n: (v if v is not None else defaults[n]) for n, v in given.items()}
    return {k: v for k, v in values.items() if v is not None}


def _override_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_override_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_override_value(x) for x in v) + "]"
    if isinstance(v, str) and not re.fullmatch(r"[\w./-]+", v):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(v)


def legacy_main(argv) -> None:
    """Run the former flags: one deprecation line (with the equivalent command), then :func:`make`."""
    base = OmegaConf.to_container(OmegaConf.load(CONFIG))
    base = {k: v for k, v in base.items() if k not in ("defaults", "hydra")}
    values = legacy_overrides(argv)
    changed = {k: v for k, v in values.items() if v != base.get(k)}
    command = " ".join(shlex.quote(f"{k}={_override_value(v)}") for k, v in changed.items())
    print(f"make_synthetic.py: the --flags are deprecated; run: python scripts/make_synthetic.py {command}",
          file=sys.stderr)
    make({**base, **values})


@hydra.main(version_base="1.3", config_path="../configs", config_name="make_synthetic")
@friendly_errors
def main(cfg) -> None:
    make(OmegaConf.to_container(cfg, resolve=True))


def _save_small_png(fig, path):
    """Save a matplotlib figure as a 256-colour PNG (keeps the noisy sample pictures small)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    im = Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    im.save(path, optimize=True)


def image_grid(root, path, n=12, cols=4, split="test"):
    """Sample pictures: ``n`` expressions of ``split`` (kinds in turn), expression as title, target outlined."""
    import pickle

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from pycocotools import mask as mu

    root = Path(root)
    inst = json.loads((root / "synthetic" / "instances.json").read_text())
    with open(root / "synthetic" / "refs(unc).p", "rb") as f:
        refs = pickle.load(f)
    images = {im["id"]: im for im in inst["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    by_kind = {}
    for r in refs:
        if r["split"] == split:
            by_kind.setdefault(r["kind"], []).append(r)
    picks, i = [], 0
    while len(picks) < n and any(i < len(v) for v in by_kind.values()):
        for k in sorted(by_kind):
            if i < len(by_kind[k]) and len(picks) < n:
                picks.append(by_kind[k][i * 7 % len(by_kind[k])])
        i += 1
    rows = (len(picks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.1, rows * 2.75), dpi=80)
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, r in zip(np.ravel(axes), picks):
        im = images[r["image_id"]]
        img = np.array(Image.open(root / "images" / "synthetic" / im["file_name"]).convert("RGB"))
        ax.imshow(img, interpolation="nearest")
        if r["ann_id"] in anns:
            seg = anns[r["ann_id"]]["segmentation"]
            rle = mu.frPyObjects(seg, im["height"], im["width"]) if isinstance(seg, list) else seg
            m = mu.decode(rle)
            m = m.max(axis=2) if m.ndim == 3 else m
            ax.contour(m, levels=[0.5], colors="white", linewidths=1.6)
            ax.contour(m, levels=[0.5], colors="black", linewidths=0.6)
        title = "\n".join(textwrap.wrap(r["sentences"][0]["raw"], 30))
        ax.set_title(f"[{r['kind']}]\n{title}", fontsize=7)
    fig.tight_layout(pad=0.3)
    _save_small_png(fig, path)
    plt.close(fig)


def video_figure(root, path, rows=2, split="valid"):
    """Frame rows of ``rows`` action expressions of ``split``; the target is outlined in every frame."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    root = Path(root)
    kinds = json.loads((root / "kinds.json").read_text())
    mexp = json.loads((root / "meta_expressions" / split / "meta_expressions.json").read_text())["videos"]
    picks = [(vid, eid) for vid, v in mexp.items() for eid in v["expressions"] if kinds[vid][eid] == "action"]
    picks = picks[:: max(1, len(picks) // rows)][:rows]
    if not picks:
        raise syn.DatasetError(f"no action expression in {split}; generate more clips")
    K = len(mexp[picks[0][0]]["frames"])
    fig, axes = plt.subplots(len(picks), K, figsize=(K * 1.45, len(picks) * 1.85), dpi=80, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.02, wspace=0.04, hspace=0.45)
    for row, (vid, eid) in zip(axes, picks):
        e = mexp[vid]["expressions"][eid]
        for k, (ax, fr) in enumerate(zip(row, mexp[vid]["frames"])):
            img = np.array(Image.open(root / split / "JPEGImages" / vid / f"{fr}.jpg").convert("RGB"))
            lab = np.array(Image.open(root / split / "Annotations" / vid / f"{fr}.png"))
            ax.imshow(img, interpolation="nearest")
            m = (lab == int(e["obj_id"])).astype(np.uint8)
            if m.any():
                ax.contour(m, levels=[0.5], colors="white", linewidths=1.4)
                ax.contour(m, levels=[0.5], colors="black", linewidths=0.5)
            ax.set_title(f"{fr}" + (" (annotated)" if k == K // 2 else ""), fontsize=7)
            ax.axis("off")
        pos = row[0].get_position()
        fig.text(pos.x0, pos.y1 + 0.9 * (1 - fig.subplotpars.top) / len(picks) + 0.02,
                 f"[action] \"{e['exp']}\"  ({vid}, obj_id {e['obj_id']})", fontsize=9)
    _save_small_png(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    if is_legacy(sys.argv[1:]):
        friendly_errors(legacy_main)(sys.argv[1:])
    else:
        main()
