"""Run under ``torchrun``: every experiment config trains 2 DDP steps at tiny widths.

    torchrun --nproc_per_node=2 tests/ddp_experiments.py OUT.jsonl            # gloo on the CPU (tests/test_devices.py)
    torchrun --nproc_per_node=1 tests/ddp_experiments.py OUT.jsonl cuda       # NCCL, one process per GPU (gpu_check.sh)

For each ``configs/experiment/*.yaml`` the model is built from the composed config at tiny widths, wrapped the
way the trainer wraps it (:func:`cmpc.engine.distributed.data_parallel` after the unused-parameter probe) and
trained 2 steps on a grouped synthetic batch (3-frame clips for CMPC-V), each rank on its own half. Rank 0
writes one JSON line per config (and one for a model given a module it never calls) to ``argv[1]``: whether
DDP needed ``find_unused_parameters``, the losses, and the largest difference of the trained weights between
the ranks (0 when DDP synchronised them).
"""

import functools
import gc
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir

from cmpc.engine.distributed import DistInfo, data_parallel, parameters_without_gradient
from cmpc.engine.optim import build_optimizer
from cmpc.engine.trainer import batch_loss, train_step
from cmpc.models import build_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.visual_dim=8", "model.word_dim=8", "model.embed_dim=8", "model.dim=8", "model.out_dim=8",
        "model.word_classifier_dim=4", "model.convlstm_hidden=8", "backbone=small", "backbone.widths=[4,4,8,8]",
        "backbone.blocks=[1,1,1,1]", "trainer.num_workers=0", "device=cpu"]
VOCAB, SIZE, FRAMES = 20, 32, 3


def batch_for(rank: int, video: bool) -> dict:
    """This rank's 2 sentences about 1 image (or clip), different on each rank."""
    g = torch.Generator().manual_seed(rank)
    shape = (1, FRAMES, 3, SIZE, SIZE) if video else (1, 3, SIZE, SIZE)
    words = torch.zeros(2, 6, dtype=torch.long)
    words[0, 2:], words[1, 4:] = torch.randint(2, VOCAB, (4,), generator=g), torch.randint(2, VOCAB, (2,), generator=g)
    target = torch.zeros(2, SIZE, SIZE)
    target[0, 4:20, 4:20], target[1, 16:, 10:] = 1, 1
    return {"clip" if video else "image": torch.randn(shape, generator=g), "words": words, "target": target,
            "image_index": torch.zeros(2, dtype=torch.long)}


def first_loss(model, batch: dict, t, device) -> torch.Tensor:
    """The loss of ``batch`` (the probe's backward pass)."""
    return batch_loss(model, batch, t, device)[0]


def main(out: str, device_type: str = "cpu") -> None:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    lines = []
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        names = [path.stem for path in sorted((ROOT / "configs" / "experiment").glob("*.yaml"))]
        for name in [*names, "spare_module"]:  # + a model with a parameter that gets no gradient
            cfg = compose("train", overrides=[f"experiment={'table9_full' if name == 'spare_module' else name}", *TINY])
            torch.manual_seed(0)  # the same initial weights on both ranks, as the trainer's seed_everything
            model = build_model(cfg.model, cfg.backbone, VOCAB)
            if name == "spare_module":
                model.spare = torch.nn.Linear(2, 2)  # never called in forward
            model = model.to(device).train()
            t = cfg.trainer
            batch = batch_for(info.rank, cfg.model.name == "cmpc_v")
            unused = parameters_without_gradient(model, functools.partial(first_loss, model, batch, t, device))
            net = data_parallel(model, info, device, unused)
            optimizer = build_optimizer(model, t)
            scaler = torch.amp.GradScaler(device.type, enabled=False)
            losses = [float(train_step(net, batch, optimizer, scaler, t, device)[0]) for _ in range(2)]
            flat = torch.cat([p.detach().flatten() for p in model.parameters()])
            others = [torch.zeros_like(flat) for _ in range(info.world_size)]
            dist.all_gather(others, flat)
            spread = max(float((o - flat).abs().max()) for o in others)
            lines.append({"experiment": name, "find_unused": net.find_unused_parameters, "unused": len(unused),
                          "losses": losses, "rank_spread": spread})
            del net, optimizer, model  # free each DDP reducer (and its communication hooks) while the group lives
            gc.collect()
    if info.is_main:
        Path(out).write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    dist.barrier()  # no rank tears the group down while the other still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
