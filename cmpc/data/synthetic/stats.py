"""Reading a generated benchmark back: its scenes (for the resolver) and per-split counts by kind."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

from cmpc.errors import DatasetError

from .scene import scene_from_json
from .vocabulary import KINDS


def _load_json(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing; (re)generate with scripts/make_synthetic.py root=...") from None
    except ValueError as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); delete the folder and regenerate it") from None


def load_image_scenes(root) -> dict:
    """{image_id: Scene} from ``root/synthetic/scenes.json`` (object ``oid`` = ann_id)."""
    data = _load_json(Path(root) / "synthetic" / "scenes.json")
    return {int(k): scene_from_json([{**o, "oid": o["ann_id"]} for o in v["objects"]], v["size"])
            for k, v in data.items()}


def load_video_scenes(root) -> dict:
    """{video_id: Scene} from ``root/scenes.json`` (object ``oid`` = obj_id string)."""
    data = _load_json(Path(root) / "scenes.json")
    return {k: scene_from_json([{**o, "oid": o["obj_id"]} for o in v["objects"]], v["size"]) for k, v in data.items()}


def benchmark_statistics(root) -> list:
    """Per-split counts for a generated benchmark (image or video layout, detected from the files)."""
    root = Path(root)
    rows = []
    if (root / "synthetic" / "instances.json").exists():
        inst = _load_json(root / "synthetic" / "instances.json")
        try:
            with open(root / "synthetic" / "refs(unc).p", "rb") as f:
                refs = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError) as e:
            raise DatasetError(f"cannot read refs(unc).p under {root} ({e}); "
                               "delete the folder and regenerate it") from None
        kinds = _load_json(root / "synthetic" / "kinds.json")
        img_split = {}
        for r in refs:
            img_split[r["image_id"]] = r["split"]
        n_obj = {}
        for a in inst["annotations"]:
            n_obj[a["image_id"]] = n_obj.get(a["image_id"], 0) + 1
        for split in dict.fromkeys(r["split"] for r in refs):
            ids = [i for i, s in img_split.items() if s == split]
            row = {"split": split, "images": len(ids), "objects": sum(n_obj.get(i, 0) for i in ids),
                   "refs": sum(1 for r in refs if r["split"] == split)}
            sids = [sid for r in refs if r["split"] == split for sid in r["sent_ids"]]
            row["expressions"] = len(sids)
            for k in KINDS:
                row[k] = sum(1 for sid in sids if kinds[str(sid)] == k)
            rows.append(row)
        return rows
    if (root / "meta_expressions").is_dir():
        kinds = _load_json(root / "kinds.json")
        for edir in sorted((root / "meta_expressions").iterdir()):
            split = edir.name
            mexp = _load_json(edir / "meta_expressions.json")["videos"]
            meta = _load_json(root / split / "meta.json")["videos"]
            row = {"split": split, "videos": len(mexp), "frames": sum(len(v["frames"]) for v in mexp.values()),
                   "objects": sum(len(v["objects"]) for v in meta.values()),
                   "expressions": sum(len(v["expressions"]) for v in mexp.values())}
            for k in KINDS:
                row[k] = sum(1 for vid in mexp for e in kinds[vid].values() if e == k)
            rows.append(row)
        order = {"train": 0, "val": 1, "valid": 1, "test": 2}
        return sorted(rows, key=lambda r: (order.get(r["split"], 3), r["split"]))
    raise DatasetError(f"{root} holds no synthetic benchmark; "
                       f"generate one with scripts/make_synthetic.py root={root}")


def format_statistics(rows) -> str:
    """Markdown table of :func:`benchmark_statistics` rows (kind columns that are all zero are dropped)."""
    if not rows:
        return ""
    cols = [c for c in rows[0] if c not in KINDS] + [k for k in KINDS if any(r.get(k) for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)
