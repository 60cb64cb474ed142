"""Parameter count (trainable vs frozen) and FLOPs of a CMPC network at its input size:
```python scripts/summary.py [model=cmpc_i] [experiment=...] [dataset.input_size=320]``;
CMPC-V: ``python scripts/summary.py dataset=a2d`` (clips of ``dataset.num_frames`` frames).

FLOPs are counted by ``torch.utils.flop_counter`` (2 per multiply-add, convolutions and matrix products).
"""

import time

import hydra
import torch
from torch.utils.flop_counter import FlopCounterMode

from cmpc.cli import friendly_errors
from cmpc.models import build_model


def count(module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in module.parameters()) - trainable


@hydra.main(version_base="1.3", config_path="../configs", config_name="summary")
@friendly_errors
def main(cfg) -> None:
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.backbone, cfg.vocab_size)
    size, b = cfg.dataset.input_size, cfg.batch_size
    k = cfg.dataset.num_frames  # video datasets feed clips of K frames
    images = torch.randn(b, k, 3, size, size) if k > 1 else torch.randn(b, 3, size, size)
    words = torch.randint(2, cfg.vocab_size, (b, cfg.dataset.max_words))
    rows = [("backbone", *count(model.backbone))]
    rows += [(name, *count(child)) for name, child in model.named_children() if name != "backbone"]
    total = count(model)
    print(f"model={cfg.model.name} backbone={cfg.backbone.name} input={size}x{size} frames={k} batch={b} "
          f"vocab={cfg.vocab_size}\n")
    print("| part | trainable | frozen |\n|---|---:|---:|")
    for name, trainable, frozen in rows + [("**total**", *total)]:
        print(f"| {name} | {trainable:,} | {frozen:,} |")
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images, words)
    flops = counter.get_flop_counts()
    total_flops = counter.get_total_flops()
    by_module = {}
    for key, ops in flops.items():  # keys like "CMPCImage.levels.0.perception": count each top-level part once
        parts = key.split(".")
        if len(parts) == 2 or (len(parts) == 3 and parts[2].isdigit()):
            by_module[parts[1]] = by_module.get(parts[1], 0) + sum(ops.values())
    print(f"\nforward FLOPs: {total_flops / 1e9:.1f} G")
    for name, value in sorted(by_module.items(), key=lambda kv: -kv[1]):
        print(f"  {name}: {value / 1e9:.2f} G")
    if cfg.backward:
        model.train()
        start = time.perf_counter()
        out = model(images, words)
        loss = out["logits"].float().mean() + sum(a.float().mean() for a in out["aux_logits"])
        loss.backward()
        grads = sum(p.grad is not None for p in model.parameters() if p.requires_grad)
        print(f"\nforward+backward: {time.perf_counter() - start:.2f} s on {torch.get_num_threads()} CPU threads; "
              f"{grads} trainable tensors received gradients")


if __name__ == "__main__":
    main()
