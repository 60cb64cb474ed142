"""Evaluation with the CMPC protocol (docs/reference.md 1.4, 2.1).

Every sentence is a sample. The final logits are upsampled to the letterboxed input size, mapped
back to the original image size (un-pad + bilinear resize) and thresholded at logit >= 0; IoU is
computed against the original-resolution ground truth. With ``crf=True`` DenseCRF refines the
sigmoid map at the padded input resolution (official parameters) in worker processes, and both
results are reported. Under DDP every rank evaluates a shard of whole images (all sentences of an image on
one rank, so that they share one backbone pass) and the per-sample intersections and unions are gathered
on every rank. With ``per_sample=True`` the result also says which dataset sample got which IoU (the pictures
that end a training run pick their samples from it: :mod:`cmpc.engine.report_pictures`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cmpc.data import collate_grouped
from cmpc.data.base import UnreadableTally
from cmpc.engine.distributed import DistInfo, gather_objects
from cmpc.engine.precision import autocast
from cmpc.engine.sampler import group_indices, shard_groups
from cmpc.engine.workers import worker_init
from cmpc.metrics import RefSegMetrics
from cmpc.models.functional import upsample_logits

log = logging.getLogger(__name__)


def uses_feature_cache(model) -> bool:
    """Whether ``model`` (or the module inside its DDP wrapper) keeps a feature cache
    (:class:`cmpc.models.feature_cache.FeatureCache`), so that its forward wants the batch's image keys. Models
    without one (your own, the tests' stand-ins) are called without the keyword."""
    return getattr(getattr(model, "module", model), "feature_cache", None) is not None


def model_inputs(batch: dict, device: torch.device, channels_last: bool = False, keys: bool = False) -> tuple:
    """``(images, words, image_index)`` for ``model(...)`` from a collated batch; with ``keys`` also a fourth item,
    ``image_keys``: the ``meta["group"]`` of the rows of ``images`` (the keys of the model's feature cache), None
    when a sample has none."""
    images = batch["clip"] if "clip" in batch else batch["image"]
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    index = batch.get("image_index")
    inputs = (images, batch["words"].to(device, non_blocking=True), None if index is None else index.to(device))
    if not keys:
        return inputs
    groups = [meta.get("group") for meta in batch.get("meta", ())]
    # a grouped batch keeps each group's first image, in order of first appearance (cmpc.data.collate_grouped)
    image_keys = None if not groups or None in groups else groups if index is None else list(dict.fromkeys(groups))
    return (*inputs, image_keys)


class _Numbered(Dataset):
    """The samples ``indices`` of ``dataset``, each model sample's ``meta["index"]`` set to its index in ``dataset``
    (unreadable samples pass through as they are)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        sample = self.dataset[self.indices[i]]
        if isinstance(sample, dict):
            sample["meta"]["index"] = self.indices[i]
        return sample


@torch.no_grad()
def predict_logits(model, batch: dict, device: torch.device, amp: str = "off",
                   channels_last: bool = False) -> torch.Tensor:
    """Final logits upsampled to the input size, ``[B, S, S]`` float32 on the CPU."""
    with autocast(device, amp):
        logits = model(*model_inputs(batch, device, channels_last, keys=uses_feature_cache(model)))["logits"]
    return upsample_logits(logits.float(), batch["target"].shape[-2:])[:, 0].cpu()


def evaluate(model, dataset, *, device, info: DistInfo = DistInfo(), batch_size: int = 16, num_workers: int = 0,
             amp: str = "off", crf: bool = False, crf_workers: int | None = None, video: bool = False,
             progress: bool = True, desc: str = "eval", per_sample: bool = False) -> dict:
    """Metrics of ``model`` on ``dataset``: ``{"metrics", "by_kind", "unreadable"}`` and, with CRF, ``{"crf",
    "crf_by_kind"}``. Samples whose files cannot be read are left out of the metrics and counted in
    ``unreadable`` (each reason logged as a warning).

    ``per_sample=True`` adds ``"samples"``: ``{"index": int64 [N] (positions in ``dataset``, ascending), "iou":
    float64 [N] (the IoU each got, empty/empty = 1, without CRF), "kind": [N] (``meta["kind"]``, None for
    datasets without kinds)}`` over the N evaluated samples, on every rank."""
    device = torch.device(device)
    model.eval()
    shard = _Numbered(dataset, range(len(dataset)) if info.world_size == 1 else
                      shard_groups(group_indices(dataset), info.rank, info.world_size))
    # neighbouring sentences of the same image share one backbone pass
    loader = DataLoader(shard, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_grouped,
                        worker_init_fn=worker_init())
    make = RefSegMetrics.video if video else RefSegMetrics
    plain, refined = make(), make()
    pool = None
    if crf:
        from cmpc.crf import CRFPool

        pool = CRFPool(crf_workers)
    letterbox = dataset.letterbox
    unreadable = UnreadableTally()
    indices: list[int] = []  # dataset position of each sample given to `plain`, in order
    try:
        for batch in tqdm(loader, desc=desc, disable=not (progress and info.is_main), leave=False):
            if unreadable.add(batch):
                continue
            logits = predict_logits(model, batch, device, amp)
            for score, gt, meta in zip(logits, batch["gt"], batch["meta"]):
                plain.update(letterbox.invert(score, gt.shape) >= 0, gt, kind=meta.get("kind"))
                indices.append(meta["index"])
            if pool is not None:
                frames = batch["clip"][:, batch["clip"].shape[1] // 2] if "clip" in batch else batch["image"]
                frames = frames[batch["image_index"]]
                images = [letterbox.denormalize(t) for t in frames]
                masks = pool.map(images, [torch.sigmoid(s).numpy() for s in logits])
                for mask, gt, meta in zip(masks, batch["gt"], batch["meta"]):
                    score = letterbox.invert(mask.astype(np.float32), gt.shape)
                    refined.update(score >= 0.5, gt, kind=meta.get("kind"))
    finally:
        if pool is not None:
            pool.close()
    results = {"unreadable": sum(gather_objects(len(unreadable), info))}
    for line in unreadable.report(desc):
        log.warning(line)
    for key, metrics in (("metrics", plain), ("crf", refined)):
        if key == "crf" and not crf:
            continue
        merged = RefSegMetrics.from_state(*gather_objects(metrics.state_dict(), info))
        results[key] = merged.compute()
        results[f"{key}_by_kind" if key == "crf" else "by_kind"] = merged.compute_by_kind()
        if key == "metrics" and per_sample:
            index = np.concatenate([np.asarray(i, dtype=np.int64) for i in gather_objects(indices, info)])
            order = np.argsort(index, kind="stable")
            kinds = merged.state_dict()["kinds"]
            results["samples"] = {"index": index[order], "iou": merged.ious()[order],
                                  "kind": [kinds[i] for i in order]}
    return results
