"""A tiny untrained checkpoint in the format train.py writes (config, vocabulary, weights), in seconds."""

import torch
from conftest import CONFIG_DIR
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cmpc.data import Vocabulary
from cmpc.engine.builders import build_model_for

TINY = ["model.visual_dim=16", "model.word_dim=16", "model.dim=16", "model.out_dim=16", "model.word_classifier_dim=8",
        "model.convlstm_hidden=16", "model.tgfe_rounds=1", "backbone=small", "backbone.widths=[8,16,16,16]",
        "dataset.input_size=64", "model.glove=false", "device=cpu"]
WORDS = "the a red blue green circle square triangle left right of above below big small ball moving".split()


def tiny_checkpoint(path, video=False, extra=(), seed=0):
    """Write a checkpoint of an untrained tiny CMPC-I (``video``: CMPC-V, 3-frame clips) to ``path``."""
    overrides = [*TINY, *(["dataset=synthetic_video", "dataset.num_frames=3"] if video else []), *extra]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    vocab = Vocabulary(WORDS)
    torch.manual_seed(seed)
    model = build_model_for(cfg, vocab)
    torch.save({"model": model.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True), "vocab": vocab.words},
               path)
    return path
