"""Words: embeddings, LSTM word features and the soft word-type classifier (paper 3.1.1, 3.1.2, eq. 1).

Sentences arrive as ``[B, T]`` token ids, left-padded with 0 (the official layout, docs/reference.md 1.2).
The LSTM reads each sentence from its first real token (the batch is re-aligned to right padding, and an
LSTM's output at a token does not depend on what follows it), so a sentence gives the same word features
whatever its padding and whatever else is in the batch; the released code used batch element 0's padding
for the whole batch (bs=1), a deliberate deviation documented in ``docs/reproduction.md``. No packed
sequences: the lengths never leave the device (no host sync, no ``torch.compile`` graph break). The LSTM
always runs in float32, also under autocast (oneDNN has no bf16 LSTM on CPUs without AVX-512, and the
recurrence is a negligible share of the cost). Word features are L2-normalised as in the released code.

``kind="bilstm"`` (``model.word_encoder``, not in the paper, docs/model.md) adds a backward direction: two LSTMs
of C_l / 2 each, concatenated, so that a word's feature has also read the words after it. The backward LSTM
reads the sentence reversed, which for a left-padded sentence is simply the token row flipped (its words
first, reversed, then the padding), so it never reads padding before a word either.

Word types (eq. 1) are learnt only through the segmentation loss: ``p_t = softmax(W2 s(W1 l_t + b1) + b2)``.
Image models use 4 types (entity, attribute, relation, unnecessary), video models 5 (+ action).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cmpc.errors import ConfigError, check_choice
from cmpc.models.functional import l2_normalize

WORD_ENCODERS = ("lstm", "bilstm")
ROUTINGS = ("relation", "relation_and_landmark")  # model.routing_words: what routes RAR's graph (eq. 5)
ROUTING_SCALES = ("probability", "peak")  # model.routing_scale: how the word-type probabilities weight them
IMAGE_WORD_TYPES = ("entity", "attribute", "relation", "unnecessary")
VIDEO_WORD_TYPES = ("entity", "attribute", "relation", "action", "unnecessary")


@dataclass
class Words:
    """Encoded sentence: per-word features, padding mask and a sentence vector."""

    features: torch.Tensor  # [B, T, C_l], zero at padding
    mask: torch.Tensor  # [B, T] bool, True at real tokens
    sentence: torch.Tensor  # [B, C_l], LSTM state after the last real token (bilstm: + backward state after the first)


class WordEncoder(nn.Module):
    """Embedding (optionally GloVe-initialised) followed by an LSTM over the real tokens.

    Args:
        vocab_size: number of word ids (``<pad>`` = 0).
        embed_dim: embedding width (GloVe: 300).
        hidden_dim: C_l, width of the word features and of the sentence vector.
        embeddings: optional ``[vocab_size, embed_dim]`` initial vectors; ``ValueError`` for another shape.
        freeze_embeddings: keep the embeddings fixed.
        kind: ``"lstm"``, the paper's one-directional LSTM of width C_l (module ``lstm``), or ``"bilstm"``, a
            forward LSTM ``lstm`` and a backward LSTM ``lstm_reverse`` of C_l / 2 each, concatenated (not in the
            paper; docs/model.md). ``ConfigError`` for another kind, or ``bilstm`` with an odd C_l.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden_dim: int,
        embeddings: np.ndarray | torch.Tensor | None = None,
        freeze_embeddings: bool = False,
        kind: str = "lstm",
    ):
        super().__init__()
        check_choice("model.word_encoder", kind, WORD_ENCODERS)
        if kind == "bilstm" and hidden_dim % 2:
            raise ConfigError(f"model.word_encoder=bilstm splits model.word_dim into two directions of half its "
                              f"width: set an even model.word_dim (got {hidden_dim})")
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
        width = hidden_dim if kind == "lstm" else hidden_dim // 2
        self.lstm = nn.LSTM(embed_dim, width, batch_first=True)  # the paper's LSTM; bilstm: its forward direction
        self.lstm_reverse = nn.LSTM(embed_dim, width, batch_first=True) if kind == "bilstm" else None

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
        out = run_lstm(self.lstm, self.embedding(right_padded))  # [B, T, C]; padding only after the words
        # Back to the left-padded layout: output column t comes from right-padded column (t - (T - len_b)).
        back = (positions[None, :] - shift) % steps
        features = torch.gather(out, 1, back[..., None].expand(-1, -1, out.shape[-1]))
        last = features[:, -1]  # left padding: every sentence ends in the last column (the state after its last token)
        if self.lstm_reverse is not None:
            # a left-padded row flipped is its words reversed, then the padding: the backward LSTM reads the last
            # word first and padding only after the first word; flipped back, column t has read words t..end
            backward = run_lstm(self.lstm_reverse, self.embedding(tokens.flip(1))).flip(1)  # [B, T, C_l / 2]
            first = torch.gather(backward, 1, shift[..., None].expand(-1, -1, backward.shape[-1]))[:, 0]
            features = torch.cat([features, backward], dim=-1)
            last = torch.cat([last, first], dim=-1)  # forward state after the last word, backward after the first
        features = l2_normalize(features, dim=-1) * mask[..., None]
        return Words(features=features, mask=mask, sentence=l2_normalize(last, dim=-1))


def run_lstm(lstm: nn.LSTM, embedded: torch.Tensor) -> torch.Tensor:
    """Outputs ``[B, T, hidden]`` of ``lstm`` on ``embedded [B, T, E]``, always in float32 (also under autocast)."""
    with torch.autocast(embedded.device.type, enabled=False):
        out, _ = lstm(embedded.float())
    return out


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


def relation_routing(p_relation: torch.Tensor, p_object: torch.Tensor, routing: str) -> torch.Tensor:
    """The per-word weight ``[B, T]`` that routes RAR's graph, the ``p_rel_t`` of eq. 5.

    ``routing="relation"`` is eq. 5 as written: ``p_relation``. ``"relation_and_landmark"`` (not in the paper,
    ``model.routing_words``, docs/model.md) adds the entity and attribute words that follow a relation word,
    the landmark's phrase ("blue square" in "the circle left of the blue square"):
    ``w_t = p_rel_t + a_t p_obj_t`` with ``a_t = 1 - prod_{s<t} (1 - p_rel_s)``, the probability that an earlier
    word is relational (word types taken as independent). ``w_t`` stays in [0, 1] since the types' probabilities
    sum to 1 at most; padding (all probabilities 0) changes no ``a_t``, so the weight does not depend on padding.

    Args:
        p_relation: ``[B, T]`` relation probability of every word (eq. 1), 0 at padding.
        p_object: ``[B, T]`` entity + attribute probability of every word, 0 at padding.
        routing: ``"relation"`` or ``"relation_and_landmark"``; ``ConfigError`` otherwise.
    """
    check_choice("model.routing_words", routing, ROUTINGS)
    if routing == "relation":
        return p_relation  # eq. 5
    none_yet = torch.cumprod(1 - p_relation, dim=1)  # prod_{s<=t} (1 - p_rel_s)
    after = 1 - torch.cat([torch.ones_like(none_yet[:, :1]), none_yet[:, :-1]], dim=1)  # a_t, exclusive of t
    return p_relation + after * p_object


def routing_words(words: Words, weights: torch.Tensor, scale: str) -> torch.Tensor:
    """Words weighted for routing graph edges, ``[B, T, C]`` (eq. 5 ``r_t = p_t l_t``; AR of table 7).

    ``scale="probability"`` is eq. 5 as written; ``"peak"`` divides the weights by the sentence's largest, so that
    only the words' relative weights matter and the classifier cannot fade the graph out (docs/model.md).
    """
    if scale == "peak":
        weights = weights / weights.amax(dim=1, keepdim=True).clamp_min(1e-6)
    else:
        check_choice("model.routing_scale", scale, ROUTING_SCALES)
    return words.features * weights[..., None].to(words.features.dtype)
