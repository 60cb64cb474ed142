"""Check a dataset's files, print its statistics next to the published ones, and build the caches.

    python scripts/prepare_data.py dataset=unc dataset.root=/data/refer
    python scripts/prepare_data.py dataset=a2d dataset.root=/data/a2d extract_frames=true
    python scripts/prepare_data.py dataset=unc dataset.glove=/data/glove.840B.300d.txt

For every split of the dataset: the number of images/videos, objects, sentences and samples, the entries skipped
with their reasons, the sentences longer than ``max_words`` tokens (cut to their first ``max_words``), and the
files that cannot be read: every image / frame a split lists is opened once (a progress bar; a one-off check),
and each unreadable one is listed by path with its reason (training and evaluation skip and count those samples);
then the published counts of the full dataset, the vocabulary of the training split (written under
``dataset.cache_dir``) and, when ``dataset.glove`` is set, the GloVe matrix cache. The index of every split is
cached too, so that training starts without re-reading the annotation files. ``extract_frames=true`` (A2D)
writes the PNG frames the clips need to ``Release/frames`` (measured on a 150-frame 320x480 clip: decoding a
5-frame clip from the mp4 costs 20-80 ms, reading 5 PNGs ~20 ms).
Skipped entries and unreadable files do not stop it (exit status 0); a missing or corrupt annotation file does,
with ``error: <what is missing and where to get it>`` and exit status 2.
See data/README.md.
"""

from __future__ import annotations

import logging

import hydra
from tqdm import tqdm

from cmpc.cli import friendly_errors, quiet_third_party_logs
from cmpc.data import build_dataset, build_glove, build_vocab, dataset_class, vocab_path
from cmpc.data.base import ReferringDataset
from cmpc.data.text import MAX_WORDS, tokens_cut
from cmpc.engine.config_check import check_dataset_root
from cmpc.errors import CmpcError

# Published counts of the full datasets (papers, refer API demo, CRIS per-split ref counts: docs/reference.md 3a, 1.5).
EXPECTED = {
    "unc": {"all": "142,209 expressions / 50,000 objects / 19,994 images",
            "train": "120,624 expressions / 42,404 objects / 16,994 images",
            "val": "10,834 expressions / 3,811 objects / 1,500 images",
            "testA": "5,657 expressions / 1,975 objects / 750 images",
            "testB": "5,095 expressions / 1,810 objects / 750 images"},
    "unc+": {"all": "141,564 expressions / 49,856 objects / 19,992 images",
             "train": "120,191 expressions / 42,278 objects / 16,992 images",
             "val": "10,758 expressions / 3,805 objects / 1,500 images",
             "testA": "5,726 expressions / 1,975 objects / 750 images",
             "testB": "4,889 expressions / 1,798 objects / 750 images"},
    "gref": {"all": "104,560 expressions / 54,822 objects / 26,711 images (Google test split unreleased)",
             "train": "85,474 expressions / 44,822 objects", "val": "9,536 expressions / 5,000 objects"},
    "gref_umd": {"all": "95,010 expressions / 49,822 objects / 25,799 images",
                 "train": "80,512 expressions / 42,226 objects / 21,899 images",
                 "val": "4,896 expressions / 2,573 objects / 1,300 images",
                 "test": "9,602 expressions / 5,023 objects / 2,600 images"},
    "referit": {"all": "130,525 expressions / 96,654 objects / 19,894 images (ReferItGame; text_objseg keeps "
                       "trainval + test)",
                "trainval": "59,976 sentences / 49,515 regions / 9,995 images",
                "test": "60,105 sentences / 49,730 regions / 9,994 images"},
    "refclef": {"all": "130,525 expressions / 96,654 objects / 19,894 images"},
    "a2d": {"all": "3,782 videos / 6,655 sentences", "train": "3,036 videos", "test": "746 videos"},
    "jhmdb": {"all": "928 videos / 928 sentences", "test": "928 videos, 3 frames each = 2,784 samples"},
    "ytvos": {"all": "3,975 videos / 27,899 expressions", "train": "3,471 videos",
              "valid": "202 videos (no public masks)"},
}

log = logging.getLogger("prepare_data")


def _splits(d: dict, cls: type[ReferringDataset]) -> list[str]:
    out = []
    for s in (d.get("train_split"), d.get("eval_split"), d.get("test_split"), *cls.SPLITS):
        if s and s not in out:
            out.append(str(s))
    return out


def _check_files(ds: ReferringDataset, split: str, out) -> int:
    """Open every image / frame the split lists (progress bar); print the unreadable ones; their number."""
    def progress(items, total):
        return tqdm(items, total=total, desc=f"{split}: reading files", unit="file", leave=False)

    bad = ds.check_files(progress)
    for u in bad:
        out(f"  {'':<9}   unreadable (skipped by training and evaluation): {u.reason}")
    return len(bad)


def prepare(dcfg, extract_frames: bool = False, out=print) -> dict:
    """Check, count and cache one dataset (``dcfg`` = the ``dataset`` config node); returns the counts."""
    d = dict(dcfg) if isinstance(dcfg, dict) else _container(dcfg)
    cls = dataset_class(d.get("name"))
    out(f"dataset {d['name']} at {d.get('root')}")
    required = {d.get("train_split"), d.get("eval_split")}
    table, built = {}, {}
    for split in _splits(d, cls):
        try:
            ds = build_dataset(d, split, vocab=None)
        except CmpcError as e:
            if split in required:
                raise
            out(f"  {split:<9} not available ({e})")
            continue
        built[split] = ds
        table[split] = ds.counts()
        table[split]["skipped"] = sum(ds.skipped.values())
        max_words = int(d.get("max_words", MAX_WORDS))
        cut = sum(tokens_cut(s, max_words) > 0 for s in ds.sentences())
        lines = [f"  {'':<9}   skipped {n:,}: {reason}" for reason, n in sorted(ds.skipped.items())]
        if cut:
            lines.append(f"  {'':<9}   cut {cut:,} sentence(s) longer than max_words={max_words} tokens to their "
                         f"first {max_words} tokens (as the official code)")
        table[split]["unreadable"] = _check_files(ds, split, lines.append)
        table[split]["cut"] = cut
        row = "  ".join(f"{k} {v:,}" for k, v in table[split].items())
        out(f"  {split:<9} {row}")
        for line in lines:
            out(line)
    exp = EXPECTED.get(d["name"])
    if exp:
        out("published counts of the full dataset:")
        for k, v in exp.items():
            out(f"  {k:<9} {v}")
    vocab = build_vocab(d)
    where = d.get("vocab") or vocab_path(d)
    out(f"vocabulary: {len(vocab):,} words ({where})")
    if d.get("glove"):
        stats: dict = {}
        build_glove(d, vocab, stats=stats)
        out(f"GloVe {d['glove']}: {stats.get('found', 0):,} of {stats.get('total', 0):,} words found, "
            f"{stats.get('dim')}-d{' (cached)' if stats.get('cached') else ''}")
    if extract_frames:
        if not hasattr(cls, "extract_frames"):
            out(f"extract_frames: nothing to extract for {d['name']}")
        for split, ds in built.items():
            if hasattr(ds, "extract_frames"):
                written, present = ds.extract_frames()
                out(f"frames for {split}: {written:,} PNGs written, {present:,} already present "
                    f"({ds.frames_dir})")
    return table


def _container(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


@hydra.main(version_base="1.3", config_path="../configs", config_name="prepare_data")
@friendly_errors
def main(cfg) -> None:
    quiet_third_party_logs()
    check_dataset_root(cfg.dataset)
    prepare(cfg.dataset, extract_frames=bool(cfg.get("extract_frames", False)))


if __name__ == "__main__":
    main()
