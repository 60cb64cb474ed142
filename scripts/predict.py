"""Segment what a sentence refers to in one image:
``python scripts/predict.py checkpoint=PATH image=photo.jpg text="the man on the left"``.

Writes ``<out>_overlay.png`` (mask over the image, sentence as title) and ``<out>_mask.png`` (0/255).
"""

from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig

from cmpc.cli import friendly_errors, quiet_third_party_logs
from cmpc.data import Letterbox
from cmpc.data.base import read_image
from cmpc.engine.builders import load_trained, newest_checkpoint
from cmpc.engine.distributed import resolve_device
from cmpc.models.functional import upsample_logits
from cmpc.viz import overlay, save_png


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
@friendly_errors
def main(cfg) -> None:
    quiet_third_party_logs()
    path = Path(cfg.checkpoint) if cfg.checkpoint else newest_checkpoint(cfg.paths.runs)
    device = resolve_device(cfg.device)
    model, trained, vocab = load_trained(path, device)
    image = read_image(cfg.image)
    letterbox = Letterbox(trained.dataset.input_size, trained.dataset.mean)
    words = vocab.encode(str(cfg.text), trained.dataset.max_words)[None].to(device)
    with torch.no_grad():
        logits = model(letterbox.image(image)[None].to(device), words)["logits"]
    size = (letterbox.size, letterbox.size)
    mask = (letterbox.invert(upsample_logits(logits.float(), size)[0, 0].cpu(), image.shape[:2]) >= 0).numpy()
    out = Path(cfg.out) if cfg.out else Path(HydraConfig.get().runtime.output_dir) / f"{Path(cfg.image).stem}_cmpc"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(f"{out}_overlay.png", overlay(image, mask, title=str(cfg.text)))
    save_png(f"{out}_mask.png", mask.astype("uint8") * 255)
    print(f"{int(mask.sum())} pixels ({100 * mask.mean():.1f}%) selected; wrote {out}_overlay.png and {out}_mask.png")


if __name__ == "__main__":
    main()
