"""Segment what a sentence refers to in an image or a video:
``python scripts/predict.py checkpoint=PATH image=photo.jpg text="the man on the left"``
``python scripts/predict.py checkpoint=PATH video=clip.mp4 text="the dog jumping"`` (a video file or a folder of frames)

The image (and every frame of a folder) is read upright, as a viewer shows it (EXIF orientation applied), in any
mode PIL opens (data/README.md, "Image files"); a sentence longer than the model's ``max_words`` tokens is cut
to its first ``max_words`` with a warning.

Images: writes ``<out>_overlay.png`` (mask over the image, sentence as title) and ``<out>_mask.png`` (0/255).
Videos (a CMPC-V checkpoint): every frame is the centre of its own clip; writes ``<out>_overlay.gif`` and
``<out>_masks/<frame>.png``.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from cmpc.cli import friendly_errors, quiet_third_party_logs
from cmpc.data import Letterbox
from cmpc.data.base import read_image, read_video, resolve_offsets
from cmpc.data.text import tokens_cut
from cmpc.engine.builders import load_trained, newest_checkpoint
from cmpc.engine.config_check import check_predict_config
from cmpc.engine.distributed import resolve_device
from cmpc.engine.rundir import register_resolver
from cmpc.engine.video import segment_frames
from cmpc.viz import overlay, save_png, write_gif

register_resolver()  # ${cmpc_run_dir:...} in hydra.run.dir


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
@friendly_errors
def main(cfg) -> None:
    quiet_third_party_logs()
    check_predict_config(cfg)
    path = Path(cfg.checkpoint) if cfg.checkpoint else newest_checkpoint(cfg.paths.runs)
    device = resolve_device(cfg.device)
    model, trained, vocab = load_trained(path, device)
    ds = trained.dataset
    letterbox = Letterbox(ds.input_size, ds.mean)
    words = vocab.encode(str(cfg.text), ds.max_words)
    if cut := tokens_cut(str(cfg.text), ds.max_words):
        print(f"warning: the sentence has {cut} token(s) more than the model reads (dataset.max_words="
              f"{ds.max_words}); only the first {ds.max_words} are used", file=sys.stderr)
    source = Path(cfg.image if cfg.image is not None else cfg.video)
    out = Path(cfg.out) if cfg.out else Path(HydraConfig.get().runtime.output_dir) / f"{source.stem}_cmpc"
    out.parent.mkdir(parents=True, exist_ok=True)
    frames = [read_image(source, upright=True)] if cfg.image is not None else read_video(source)
    tensors = [(letterbox.image(f), f.shape[:2]) for f in frames]
    offsets = resolve_offsets(ds.num_frames, ds.get("frame_offsets"), ds.get("frame_stride", 1)) if cfg.video else [0]
    masks = segment_frames(model, tensors.__getitem__, len(frames), offsets, words, letterbox, device)
    if cfg.image is not None:
        save_png(f"{out}_overlay.png", overlay(frames[0], masks[0], title=str(cfg.text)))
        save_png(f"{out}_mask.png", masks[0].astype("uint8") * 255)
        print(f"{int(masks[0].sum())} pixels ({100 * masks[0].mean():.1f}%) selected; "
              f"wrote {out}_overlay.png and {out}_mask.png")
        return
    (mask_dir := Path(f"{out}_masks")).mkdir(exist_ok=True)
    for i, mask in enumerate(masks):
        save_png(mask_dir / f"{i:05d}.png", mask.astype("uint8") * 255)
    write_gif(f"{out}_overlay.gif", [overlay(f, m, title=str(cfg.text)) for f, m in zip(frames, masks)])
    print(f"segmented {len(frames)} frames; wrote {out}_overlay.gif and {mask_dir}/")


if __name__ == "__main__":
    main()
