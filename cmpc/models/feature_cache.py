"""The fixed backbone's features of images already seen, kept in memory (``trainer.feature_cache_mb``).

The paper fixes its CNN ("Parameters of CNN backbone are fixed", 4.1.3): with frozen weights and frozen BatchNorm
statistics the backbone is a fixed function of its input, so an image's features are the same every epoch and
computing them once is exact. On the CPU main job the fixed small backbone was ~9 ms of a ~100 ms step
(docs/performance.md, "Feature cache").
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor


def is_fixed(backbone: torch.nn.Module) -> bool:
    """Whether ``backbone`` is a fixed function of its input in training: no parameter trains and BatchNorm keeps
    its running statistics (``backbone.frozen`` and ``backbone.frozen_bn``, :class:`~cmpc.models.backbone.Backbone`)."""
    return bool(getattr(backbone, "frozen_bn", False)) and not any(p.requires_grad for p in backbone.parameters())


class FeatureCache:
    """Backbone levels per image key, up to ``max_mb`` MiB; once full, further images are computed on every call
    (nothing is evicted, so what is cached does not depend on how long the run is).

    Keys are ``meta["group"]`` of the dataset samples (one image, or one video frame with its fixed clip
    offsets: :meth:`cmpc.data.base.ReferringDataset.group_key`), the key that already lets grouped batches run
    the backbone once per image. The cache is right only when the same key always brings the same pixels (the
    datasets here have no random augmentation) and the backbone is fixed (:func:`is_fixed`): the trainer uses it
    only then.

    Args:
        max_mb: memory limit in MiB (2**20 bytes) of the stored feature tensors; > 0.

    Attributes:
        hits, misses: rows served without running the backbone / images the backbone ran on.
        bytes: bytes held.
    """

    def __init__(self, max_mb: float) -> None:
        if not max_mb > 0:
            raise ValueError(f"FeatureCache needs max_mb > 0, got {max_mb!r}")
        self.max_bytes = int(max_mb * 2**20)
        self.bytes = 0
        self.hits = self.misses = 0
        self.entries: dict[Hashable, list[Tensor]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    @torch.compiler.disable  # dictionary bookkeeping: run eagerly under torch.compile
    def __call__(self, backbone: Callable[[Tensor], list[Tensor]], images: Tensor,
                 keys: Sequence[Hashable]) -> list[Tensor]:
        """The backbone's levels of ``images``: each new key's image computed alone and kept, known keys' rows
        taken from the cache.

        Args:
            backbone: ``images [N, ...] -> levels``, each level ``[N, ...]``.
            images: ``[N, ...]``, row ``i`` being the image of ``keys[i]`` (a key may repeat).
            keys: N hashable keys.

        Returns:
            The levels ``[N, ...]`` as the backbone gives them for each image alone (computed once per new key).

        Raises:
            ValueError: ``len(keys) != images.shape[0]``.
        """
        if len(keys) != images.shape[0]:
            raise ValueError(f"FeatureCache got {len(keys)} keys for {images.shape[0]} images")
        new: dict[Hashable, int] = {}  # key -> first row, for keys not cached
        for row, key in enumerate(keys):
            if key not in self.entries:
                new.setdefault(key, row)
        fresh: dict[Hashable, list[Tensor]] = {}
        for key, row in new.items():
            # one image at a time: oneDNN computes a batch of one with other kernels than larger batches (last-bit
            # differences), so an image's features must not depend on the batch it first came in; then a resumed
            # run, whose cache starts empty, computes the same bits as the uninterrupted one
            levels = backbone(images[row : row + 1])
            fresh[key] = levels
            size = sum(f.numel() * f.element_size() for f in levels)
            if self.bytes + size <= self.max_bytes:
                self.entries[key] = levels
                self.bytes += size
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        rows = [fresh[key] if key in fresh else self.entries[key] for key in keys]
        return [torch.cat([levels[i] for levels in rows]) for i in range(len(rows[0]))]
