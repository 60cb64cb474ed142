"""Words: embeddings, LSTM word features and the soft word-type classifier (paper 3.1.1, 3.1.2, eq. 1).

Sentences arrive as ``[B, T]`` token ids, left-padded with 0 (the official layout, docs/reference.md 1.2).
The LSTM reads each sentence from its first real token (the batch is re-aligned to right padding, and an
LSTM's output at a token does not depend on what follows it), so a sentence gives the same word features
whatever its padding and whatever else is in the batch; the released code used batch element 0's padding
for the whole batch (bs=1), a deliberate deviation documented in ``docs/reproduction.md``. No packed
sequences: the lengths never leave the device (no host sync, no ``torch.compile`` graph break). The LSTM
always runs in float32, also under autocast (oneDNN has no bf16 LSTM on CPUs without AVX-512, and the
recurrence is a negligible share of the cost). Word features are L2-normalised as in the released code.

Word types (eq. 1) are learnt only through the segmentation loss: ``p_t = softmax(W2 s(W1 l_t + b1) + b2)``.
Image models use 4 types (entity, attribute, relation, unnecessary), video models 5 (+ action).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cmpc.models.functional import l2_normalize

IMAGE_WORD_TYPES = ("entity", "attribute", "relation", "unnecessary")
VIDEO_WORD_TYPES = ("entity", "attribute", "relation", "action", "unnecessary")


@dataclass
class Words:
    """Encoded sentence: per-word features, padding mask and a sentence vector."""

    features: torch.Tensor  # [B, T, C_l], zero at padding
    mask: torch.Tensor  # [B, T] bool, True at real tokens
    sentence: torch.Tensor  # [B, C_l], LSTM state after the last real token


class WordEncoder(nn.Module):
    """Embedding (optionally GloVe-initialised) followed by an LSTM over the real tokens."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden_dim: int,
        embeddings: np.ndarray | torch.Tensor | None = None,
        freeze_embeddings: bool = False,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        if embeddings is not None:
            weights = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
            if tuple(weights.shape) != (vocab_size, embed_dim):
                raise ValueError(
                    f"embedding matrix has shape {tuple(weights.shape)}, expected {(vocab_size, embed_dim)}"
                )
            with torch.no_grad():
                self.embedding.weight.copy_(weights)
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> Words:
        """``tokens [B, T]`` left-padded ids -> :class:`Words`. Raises ValueError for a sentence without tokens
        (on a GPU or under ``torch.compile`` the check is asynchronous: a device-side assert)."""
        mask = tokens != 0
        lengths = mask.sum(dim=1)
        check_nonempty(lengths)
        steps = tokens.shape[1]
        # Left-padded -> right-padded: token j of sentence b sits at column (T - len_b + j).
        positions = torch.arange(steps, device=tokens.device)
        shift = (steps - lengths)[:, None]
        right_padded = torch.gather(tokens, 1, (positions[None, :] + shift) % steps)  # [B, T]
        with torch.autocast(tokens.device.type, enabled=False):
            out, _ = self.lstm(self.embedding(right_padded).float())  # [B, T, C_l]; padding only after the words
        # Back to the left-padded layout: output column t comes from right-padded column (t - (T - len_b)).
        back = (positions[None, :] - shift) % steps
        features = torch.gather(out, 1, back[..., None].expand(-1, -1, out.shape[-1]))
        last = features[:, -1]  # left padding: every sentence ends in the last column (the state after its last token)
        features = l2_normalize(features, dim=-1) * mask[..., None]
        return Words(features=features, mask=mask, sentence=l2_normalize(last, dim=-1))


def check_nonempty(lengths: torch.Tensor) -> None:
    """Raise ValueError when a sentence has no tokens; asynchronous (no host sync) on a GPU or while compiling."""
    message = "a sentence in the batch has no tokens; every sample needs at least one word"
    if lengths.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool((lengths == 0).any()):
            raise ValueError(message)
    else:
        torch._assert_async(lengths.min() > 0, message)


class WordClassifier(nn.Module):
    """Soft word types, eq. 1: ``p_t = softmax(W2 act(W1 l_t + b1) + b2)``; zero rows at padding.

    The paper writes a sigmoid for ``act``; the released code used a ReLU (``activation`` option).
    """

    def __init__(self, word_dim: int, hidden_dim: int, types: tuple[str, ...], activation: str = "sigmoid"):
        super().__init__()
        if activation not in ("sigmoid", "relu"):
            raise ValueError(f"word classifier activation must be sigmoid or relu, got {activation!r}")
        self.types = tuple(types)
        self.fc1 = nn.Linear(word_dim, hidden_dim)  # W1, b1
        self.fc2 = nn.Linear(hidden_dim, len(self.types))  # W2, b2
        self.act = nn.Sigmoid() if activation == "sigmoid" else nn.ReLU()

    def forward(self, words: Words) -> torch.Tensor:
        probs = torch.softmax(self.fc2(self.act(self.fc1(words.features))), dim=-1)  # eq. 1
        return probs * words.mask[..., None]

    def weights(self, probs: torch.Tensor, *types: str) -> torch.Tensor:
        """Sum of the probabilities of the named types, ``[B, T]``."""
        return sum(probs[..., self.types.index(name)] for name in types)


def weighted_words(words: Words, weights: torch.Tensor) -> torch.Tensor:
    """``sum_t w_t l_t``: a sentence vector from per-word weights ``[B, T]`` (eqs. 2, 11, 12)."""
    return torch.einsum("bt,btc->bc", weights.to(words.features.dtype), words.features)


def routing_words(words: Words, weights: torch.Tensor, scale: str) -> torch.Tensor:
    """Words weighted for routing graph edges, ``[B, T, C]`` (eq. 5 ``r_t = p_t l_t``; AR of table 7).

    ``scale="probability"`` is eq. 5 as written; ``"peak"`` divides the weights by the sentence's largest, so that
    only the words' relative weights matter and the classifier cannot fade the graph out (docs/model.md).
    """
    if scale == "peak":
        weights = weights / weights.amax(dim=1, keepdim=True).clamp_min(1e-6)
    elif scale != "probability":
        raise ValueError(f"model.routing_scale must be probability or peak, got {scale!r}")
    return words.features * weights[..., None].to(words.features.dtype)
