"""ReferIt in the text_objseg packaging, as used by CMPC (docs/reference.md sections 1.5 and 3b).

Layout under ``root``:

* ``referit_query_<split>.json``: ``{"<imgid>_<regionid>": [sentence, ...]}`` (CMPC trains on ``trainval`` and
  tests on ``test``; ``train``/``val``/``all`` files work the same way if present);
* ``images/<imgid>.jpg`` (SAIAPR-TC12 photos);
* ``mask/<imgid>_<regionid>.mat`` with ``segimg_t``, where **value 0 is the object** (text_objseg's
  ``load_referit_gt_mask``).

Every sentence is one sample. Entries whose image or mask file is missing, with a malformed key, or with an
empty sentence are skipped and counted.
"""

from __future__ import annotations

import os

import numpy as np

from cmpc.data.base import RawSample, ReferringDataset, read_mat_array, require_dir, require_file
from cmpc.data.refer import load_json
from cmpc.data.text import has_words
from cmpc.errors import DatasetError


def load_referit_mask(path) -> np.ndarray:
    """bool mask of a text_objseg ``.mat`` file (``segimg_t == 0``)."""
    how = "re-extract referitdata.tar.gz (data/README.md#referit)"
    return read_mat_array(path, "segimg_t", "ReferIt mask", how) == 0


class ReferItDataset(ReferringDataset):
    name = "referit"
    ANCHOR = "referit"
    SPLITS = ("trainval", "test")

    def __init__(self, root, split, vocab=None, *, query_dir: str = ".", image_dir: str = "images",
                 mask_dir: str = "mask", **common):
        super().__init__(root, split, vocab, **common)
        self.query_path = self.root / query_dir / f"referit_query_{self.split}.json"
        self.image_dir = self.root / image_dir
        self.mask_dir = self.root / mask_dir
        require_file(self.query_path, f"ReferIt query file for split '{self.split}'", self.ANCHOR)
        require_dir(self.image_dir, "ReferIt image", self.ANCHOR)
        require_dir(self.mask_dir, "ReferIt mask", self.ANCHOR)
        self.use_index(self.cached_index(self._build_index, [self.query_path, self.image_dir, self.mask_dir],
                                         {}))

    def _build_index(self) -> dict:
        queries = load_json(self.query_path)
        if not isinstance(queries, dict):
            raise DatasetError(f"{self.query_path} is not a {{region: [sentences]}} object; re-download it")
        images = set(os.listdir(self.image_dir))
        masks = set(os.listdir(self.mask_dir))
        skipped: dict[str, int] = {}

        def skip(reason, n=1):
            skipped[reason] = skipped.get(reason, 0) + n

        items = []
        for key in sorted(queries):
            sents = queries[key]
            if isinstance(sents, str):
                sents = [sents]
            n = len(sents) if isinstance(sents, list) else 1
            parts = str(key).split("_")
            if len(parts) != 2 or not all(parts) or not isinstance(sents, list):
                skip("malformed query entry (key is not '<imgid>_<regionid>' or value not a list)", n)
                continue
            img_id = parts[0]
            if f"{img_id}.jpg" not in images:
                skip("image file missing", n)
                continue
            if f"{key}.mat" not in masks:
                skip("mask file missing", n)
                continue
            for j, s in enumerate(sents):
                if not isinstance(s, str) or not has_words(s):
                    skip("empty sentence (no words)")
                    continue
                items.append((img_id, key, j, s))
        if not items and skipped:
            raise DatasetError(f"no usable ReferIt sample in {self.query_path} (skipped: {skipped}); check "
                               f"{self.image_dir} and {self.mask_dir} (data/README.md#referit)")
        return {"items": items, "skipped": skipped}

    def load(self, index: int) -> RawSample:
        img_id, region, j, text = self.items[index]
        image = self.read_image(self.image_dir / f"{img_id}.jpg")
        mask = load_referit_mask(self.mask_dir / f"{region}.mat")
        meta = {"dataset": self.name, "split": self.split, "image_id": img_id, "ref_id": region,
                "sent_id": j, "kind": None, "group": f"{self.name}/{img_id}",
                "sample_id": f"{self.name}/{self.split}/{region}/{j}"}
        return RawSample(frames=[image], center=0, mask=mask, sentence=text, meta=meta)

    def group_key(self, index: int) -> str:
        return f"{self.name}/{self.items[index][0]}"

    def available_splits(self) -> list[str]:
        d = self.query_path.parent
        return sorted(p.name[len("referit_query_"):-len(".json")] for p in d.glob("referit_query_*.json"))

    def sentences(self) -> list[str]:
        return [it[3] for it in self.items]

    def counts(self) -> dict[str, int]:
        return {"images": len({it[0] for it in self.items}), "objects": len({it[1] for it in self.items}),
                "sentences": len(self.items), "samples": len(self.items)}
