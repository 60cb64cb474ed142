"""Can Relation-Aware Reasoning tell twins apart by their landmark at all? A feature-level check.

    python benchmarks/rar_toy.py [--steps 3000] [--seeds 0 1 2] [--grid 12] [--word-encoder bilstm]
                                 [--routing-words relation_and_landmark]

The real CMPC-I model (one level, no TGFE/ConvLSTM, its 3x3 mask head) on toy scenes whose "backbone" is a
one-hot map of object types on a ``grid x grid`` board: a landmark, the target and its twin (same type) and up to
two other objects; the sentence is "the <type> <left|right|above|below> of the <type>". The target is >= 2 cells
from its landmark in the named direction and at most 1 cell off its axis; the twin is not, and in half of the
scenes it is a *decoy*, further in that direction than the target but off the axis (so "the leftmost" is wrong).
Without RAR nothing but the coordinates and a 3x3 neighbourhood reaches a position, so only the absolute position
can help; with RAR the graph (eqs. 5-10) can carry the landmark to the target. Reported per model: how often the
target's logit beats its twin's on held-out scenes (decoy / other twins; 0.5 = coin flip), and for RAR the edge
mass from the target onto the landmark over a uniform edge's (as ``benchmarks/rar_attention.py``).
``--models oracle`` gives RAR the routing (every word's ``B2`` row on the landmark) and leaves the rest to learn.
``--word-encoder`` and ``--routing-words`` set the non-paper options ``model.word_encoder`` and
``model.routing_words`` (docs/model.md) for every model.
docs/synthetic.md reports the figures.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from torch import nn

from cmpc.models.cmpc import CMPCImage
from cmpc.models.language import ROUTINGS, WORD_ENCODERS
from cmpc.models.loss import mask_bce

TYPES = 6
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "above": (0, -1), "below": (0, 1)}
WORDS = ["<pad>", "the", "of", *DIRECTIONS, *(f"type{k}" for k in range(TYPES))]


class OneHotBackbone(nn.Module):
    """Passes the one-hot type map through as every backbone level."""

    def __init__(self):
        super().__init__()
        self.out_channels = [TYPES] * 3

    def forward(self, images):
        return [images] * 3


def axes(offset, direction):
    """(along, across) of an offset from the landmark for a direction."""
    dx, dy = direction
    return offset[0] * dx + offset[1] * dy, abs(offset[0] * dy - offset[1] * dx)


def toy_scene(rng, grid):
    """``(one-hot [TYPES, g, g], tokens, target cell, twin cell, landmark cell, decoy?)``."""
    while True:
        a, b = rng.choice(TYPES, 2, replace=False)
        name = list(DIRECTIONS)[rng.integers(4)]
        direction = DIRECTIONS[name]
        cells = rng.integers(grid, size=(64, 2))
        landmark = cells[0]
        holds = [axes(c - landmark, direction) for c in cells]
        targets = [i for i, (along, across) in enumerate(holds) if along >= 2 and across <= 1]
        if not targets:
            continue
        target = cells[targets[0]]
        decoy = bool(rng.random() < 0.5)
        t_along = holds[targets[0]][0]
        ok = [i for i, (along, across) in enumerate(holds) if not (along >= 1 and across <= 1) and (
            (along > t_along and across >= 3) if decoy else True)
            and tuple(cells[i]) not in (tuple(landmark), tuple(target))]
        if not ok:
            continue
        twin = cells[ok[0]]
        board = np.zeros((TYPES, grid, grid), np.float32)
        for k, (x, y) in ((b, landmark), (a, target), (a, twin)):
            board[k, y, x] = 1
        for _ in range(rng.integers(3)):  # other objects, never of the target's or the landmark's type
            x, y = rng.integers(grid, size=2)
            if board[:, y, x].sum() == 0:
                board[rng.choice([k for k in range(TYPES) if k not in (a, b)]), y, x] = 1
        words = ["the", f"type{a}", name, "of", "the", f"type{b}"]
        return board, [WORDS.index(w) for w in words], tuple(target), tuple(twin), tuple(landmark), decoy


def batch(rng, grid, n):
    scenes = [toy_scene(rng, grid) for _ in range(n)]
    boards = torch.from_numpy(np.stack([s[0] for s in scenes]))
    tokens = torch.tensor([s[1] for s in scenes])
    target = torch.zeros(n, grid, grid)
    for i, s in enumerate(scenes):
        target[i, s[2][1], s[2][0]] = 1
    return boards, tokens, target, scenes


def toy_model(rar: bool, **options) -> CMPCImage:
    """The paper's CMPC-I (the constructor's defaults) at toy widths, one level, no TGFE/ConvLSTM; ``options``:
    further CMPCImage keywords (``word_encoder``, ``routing_words``)."""
    return CMPCImage(OneHotBackbone(), len(WORDS), levels=["res5"], visual_dim=64, word_dim=64, embed_dim=32, dim=64,
                     out_dim=64, word_classifier_dim=32, tgfe=False, convlstm=False, aux_heads=False,
                     routing_scale="peak", relation_aware_reasoning=rar, **options)


class OracleRouting:
    """Replaces ``B2`` (eq. 8) by the answer: every word attends to the landmark's cell; ``B1`` stays learnt."""

    def __init__(self, reasoning):
        self.learnt, self.cells = reasoning.attention, None
        reasoning.attention = self

    def __call__(self, vertices, relation_words, mask):
        b1, b2 = self.learnt(vertices, relation_words, mask)
        oracle = torch.zeros_like(b2)
        oracle[torch.arange(len(self.cells)), :, self.cells] = 1.0
        return b1, oracle


def landmark_cells(scenes, grid) -> torch.Tensor:
    return torch.tensor([s[4][1] * grid + s[4][0] for s in scenes])


def landmark_mass(model, boards, tokens, scenes) -> float:
    """Mean edge mass from the target cell onto the landmark cell over a uniform edge's."""
    captured = {}
    level = model.levels[0]
    hook = level.reasoning.register_forward_pre_hook(lambda m, args: captured.__setitem__("args", args))
    model(boards, tokens)
    hook.remove()
    adjacency = level.reasoning.adjacency(*captured["args"])
    grid = boards.shape[-1]
    rows = torch.tensor([s[2][1] * grid + s[2][0] for s in scenes])
    cols = landmark_cells(scenes, grid)
    return float(adjacency[torch.arange(len(scenes)), rows, cols].mean() * grid * grid)


def run(kind: str, seed: int, steps: int, grid: int, lr: float, **options) -> dict:
    """Train and evaluate one toy model: ``kind`` = rar | no-rar | oracle (RAR with :class:`OracleRouting`);
    ``options``: keywords of :func:`toy_model`, also reported."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rar = kind != "no-rar"
    model = toy_model(rar, **options)
    oracle = OracleRouting(model.levels[0].reasoning) if kind == "oracle" else None
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        boards, tokens, target, scenes = batch(rng, grid, 64)
        if oracle is not None:
            oracle.cells = landmark_cells(scenes, grid)
        loss = mask_bce(model(boards, tokens)["logits"], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    boards, tokens, _, scenes = batch(np.random.default_rng(10_000 + seed), grid, 2000)
    if oracle is not None:
        oracle.cells = landmark_cells(scenes, grid)
    with torch.no_grad():
        logits = model(boards, tokens)["logits"][:, 0]
        wins = {True: [], False: []}
        for i, s in enumerate(scenes):
            wins[s[5]].append(bool(logits[i, s[2][1], s[2][0]] > logits[i, s[3][1], s[3][0]]))
        out = {"model": kind, **options, "seed": seed, "steps": steps, "decoy": round(float(np.mean(wins[True])), 3),
               "other": round(float(np.mean(wins[False])), 3)}
        if rar:
            out["target->landmark"] = round(landmark_mass(model, boards, tokens, scenes), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--grid", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--models", nargs="+", choices=("rar", "no-rar", "oracle"), default=["rar", "no-rar"],
                    help="oracle: RAR whose words all attend to the landmark (B2 given, B1 learnt)")
    ap.add_argument("--word-encoder", choices=WORD_ENCODERS, default="lstm", help="model.word_encoder (docs/model.md)")
    ap.add_argument("--routing-words", choices=ROUTINGS, default="relation", help="model.routing_words (docs/model.md)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    for seed in a.seeds:
        for kind in a.models:
            options = dict(word_encoder=a.word_encoder, routing_words=a.routing_words)
            print(json.dumps(run(kind, seed, a.steps, a.grid, a.lr, **options)), flush=True)


if __name__ == "__main__":
    main()
