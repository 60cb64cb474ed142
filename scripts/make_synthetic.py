"""Generate the built-in synthetic referring segmentation benchmark and (optionally) its sample figures.

    python scripts/make_synthetic.py --root data/synthetic                      # images (refer layout)
    python scripts/make_synthetic.py --root data/synthetic_video --video        # videos (Refer-YouTube-VOS layout)
    python scripts/make_synthetic.py --root data/synthetic --stats --grid docs/img/synthetic_grid.png

Generation is skipped when ``root`` already holds a complete benchmark made with the same parameters
(``--force`` regenerates). ``--grid`` draws sample pictures (expression as title, target outlined) from the
written files; with ``--video`` it draws frame rows of action expressions. See docs/synthetic.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmpc.data import synthetic as syn  # noqa: E402
from cmpc.errors import CmpcError  # noqa: E402


def _parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="output folder (created; replaced if it holds an older benchmark)")
    ap.add_argument("--video", action="store_true", help="generate the video benchmark instead of the image one")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=None, help="frames per clip (videos; default 8)")
    ap.add_argument("--train", type=int, default=None, help="number of training images/clips")
    ap.add_argument("--val", type=int, default=None, help="number of val images (images)")
    ap.add_argument("--test", type=int, default=None, help="number of test images (images)")
    ap.add_argument("--valid", type=int, default=None, help="number of valid clips (videos)")
    ap.add_argument("--min-objects", type=int, default=None)
    ap.add_argument("--max-objects", type=int, default=None)
    ap.add_argument("--kinds", default=None, help='JSON weights, e.g. \'{"entity": 1, "relation": 2}\'')
    ap.add_argument("--negative", type=float, default=None, help="share of images/clips with a negative expression")
    ap.add_argument("--relation-gap", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                    help="extra target-landmark distance of left/right/above/below, fractions of the side")
    ap.add_argument("--segmentation", choices=("polygon", "rle"), default=None, help="images: mask encoding")
    ap.add_argument("--force", action="store_true", help="regenerate even if an identical benchmark exists")
    ap.add_argument("--stats", action="store_true", help="print the statistics table (markdown)")
    ap.add_argument("--grid", default=None, help="write a PNG of sample pictures to this path")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def _params(a):
    p = {"seed": a.seed, "image_size": a.image_size, "min_objects": a.min_objects, "max_objects": a.max_objects,
         "negative": a.negative, "relation_gap": a.relation_gap}
    if a.kinds is not None:
        try:
            p["kinds"] = json.loads(a.kinds)
        except ValueError:
            raise syn.ConfigError(f"--kinds {a.kinds!r} is not JSON; write e.g. '{{\"entity\": 1}}'") from None
    defaults = syn.VIDEO_DEFAULTS if a.video else syn.IMAGE_DEFAULTS
    names = ("train", "valid") if a.video else ("train", "val", "test")
    given = {n: getattr(a, n) for n in names}
    if any(v is not None for v in given.values()):
        p["splits"] = {n: (v if v is not None else defaults["splits"][n]) for n, v in given.items()}
    if a.video:
        p["num_frames"] = a.frames
        if a.val is not None or a.test is not None or a.segmentation is not None:
            raise syn.ConfigError("--val/--test/--segmentation are for images; videos use --train/--valid")
    else:
        p["segmentation"] = a.segmentation
        if a.valid is not None or a.frames is not None:
            raise syn.ConfigError("--valid/--frames are for videos; add --video")
    return {k: v for k, v in p.items() if v is not None}


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


def main(argv=None):
    a = _parse_args(argv)
    try:
        params = _params(a)
        if a.video:
            fn = syn.generate_video_benchmark if a.force else syn.ensure_video_benchmark
        else:
            fn = syn.generate_image_benchmark if a.force else syn.ensure_image_benchmark
        root = fn(a.root, progress=not a.quiet, **params)
        print(f"benchmark ready: {root}")
        if a.stats:
            print(syn.format_statistics(syn.benchmark_statistics(root)))
        if a.grid:
            (video_figure if a.video else image_grid)(root, a.grid)
            print(f"wrote {a.grid}")
    except CmpcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
