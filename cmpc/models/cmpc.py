"""CMPC-I (paper 3.1 + 3.3) and the table-5 baselines, assembled from the paper's modules.

Per visual level (Res3/Res4/Res5): coordinate fusion (3.1.1) -> Entity Perception (EP, eqs. 2-4)
-> Relation-Aware Reasoning (RAR, eqs. 5-10) -> output fusion ``Y = ReLU(Conv1x1([M or X; M-; s]))``
(eq. 11 and the concatenation after it; ``cmf`` picks M (the "CMF" variant) or X). Then TGFE
(eqs. 22-24) exchanges information between levels, a ConvLSTM fuses them and a 3x3 conv predicts
the mask logits at stride 8. Each level also has an auxiliary head (released code).

Switching a stage off removes its module: with ``entity_perception=False`` the multimodal map is
the visual feature itself; without RAR (or with ``gcn_layers=0``) the reasoned map M- is M itself, so
EP always reaches the output; with EP and RAR both off a level is the table-5 baseline: the visual
feature concatenated with the LSTM sentence vector. A single level (``levels: [res5]``) without
ConvLSTM/TGFE gives table-5 rows 1-6.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cmpc.errors import ConfigError, check_choice
from cmpc.models.convlstm import ConvLSTM
from cmpc.models.coords import CoordinateFusion
from cmpc.models.feature_cache import FeatureCache
from cmpc.models.functional import l2_normalize
from cmpc.models.language import (
    IMAGE_WORD_TYPES,
    ROUTING_SCALES,
    ROUTINGS,
    WordClassifier,
    WordEncoder,
    Words,
    relation_routing,
    routing_words,
    weighted_words,
)
from cmpc.models.perception import EntityPerception
from cmpc.models.relation import RelationAwareReasoning
from cmpc.models.tgfe import TextGuidedFeatureExchange

LEVEL_NAMES = ("res3", "res4", "res5")


@dataclass
class Language:
    """What the levels need from the sentence, computed once per forward."""

    words: Words
    probs: torch.Tensor | None  # [B, T, n_types] (eq. 1), None without a word classifier
    entity: torch.Tensor | None  # q_e, eq. 2
    relation: torch.Tensor | None  # R = p_rel * L, eq. 5 (model.routing_words: + landmark words)
    sentence: torch.Tensor  # s (eq. 11) with a word classifier, else the LSTM sentence vector
    exchange: torch.Tensor  # the sentence vector guiding TGFE: s (NW on) or the LSTM vector (NW off)


class CMPCLevel(nn.Module):
    """One visual level of CMPC-I: EP -> RAR -> output fusion.

    Args:
        backbone_channels: channels of this level's backbone feature map ``[B, C, h, w]``.
        visual_dim: C_v, channels after the 1x1 coordinate fusion (paper 3.1.1; 1000).
        word_dim: C_l, channels of the word features and sentence vectors (LSTM hidden size; 1000).
        dim: C_m, channels of the multimodal map M (EP, eqs. 3-4) and of RAR (1000).
        out_dim: channels of the level output Y (eq. 11 and the concatenation after it; released code 500).
        entity_perception: build the EP stage (eqs. 2-4, table 5); without it M is the visual feature X.
        fusion_heads: r, bilinear fusion heads of EP (eq. 4; 5).
        fusion_tanh: tanh on both bilinear factors (released code) instead of eq. 3 as printed.
        relation_aware_reasoning: build the RAR stage (eqs. 5-10, table 5).
        gcn_layers: g, graph convolutions in RAR (table 10); 0 builds no RAR (M- = M).
        rar_path: ``"fast"`` (``A M = B1 (B2 M)``, never N x N) or ``"explicit"`` (builds A; reference).
        cmf: concatenate M (the "CMF" variant, eq. 11) rather than X into Y; needs EP.
    """

    def __init__(self, backbone_channels: int, *, visual_dim: int = 1000, word_dim: int = 1000, dim: int = 1000,
                 out_dim: int = 500, entity_perception: bool = True, fusion_heads: int = 5, fusion_tanh: bool = False,
                 relation_aware_reasoning: bool = True, gcn_layers: int = 1, rar_path: str = "fast",
                 cmf: bool = True):
        super().__init__()
        self.coords = CoordinateFusion(backbone_channels, visual_dim)
        self.perception = (
            EntityPerception(visual_dim, word_dim, dim, fusion_heads, fusion_tanh)
            if entity_perception
            else None
        )
        mm_dim = dim if self.perception is not None else visual_dim
        self.mm_dim, self.word_dim = mm_dim, word_dim  # widths of M and of the words (read by CMPC-V's AAR)
        # g = 0 graph convolutions is no reasoning at all: M- = M (table 10 g = 0 = table 5 row 2, both 49.06)
        self.reasoning = (
            RelationAwareReasoning(mm_dim, word_dim, gcn_layers, rar_path)
            if relation_aware_reasoning and gcn_layers > 0
            else None
        )
        self.cmf = cmf and self.perception is not None
        # M- joins the output unless it would repeat the first part: without RAR, M- = M (EP on) or X (EP off)
        self.carries_reasoned = self.reasoning is not None or (self.perception is not None and not self.cmf)
        parts = (mm_dim if self.cmf else visual_dim) + (mm_dim if self.carries_reasoned else 0)
        self.output = nn.Conv2d(parts + word_dim, out_dim, kernel_size=1)

    def perceive(self, visual: torch.Tensor, lang: Language) -> torch.Tensor:
        return visual if self.perception is None else self.perception(visual, lang.entity)

    def fuse(self, parts: list[torch.Tensor], lang: Language) -> torch.Tensor:
        """``Y = ReLU(Conv1x1([parts; repeated s]))`` (eq. 11 and the concatenation after it)."""
        b, _, h, w = parts[0].shape
        sentence = lang.sentence[:, :, None, None].expand(b, -1, h, w)
        return torch.relu(self.output(torch.cat([*parts, sentence], dim=1)))

    def reason(self, multimodal: torch.Tensor, lang: Language) -> torch.Tensor:
        """``M- [B, C_m, H, W]``: RAR's graph convolutions on M (eqs. 5-10); M itself without RAR or with g = 0."""
        if self.reasoning is None:
            return multimodal
        return self.reasoning(multimodal, lang.relation, lang.words.mask)

    def output_parts(self, visual: torch.Tensor, multimodal: torch.Tensor,
                     reasoned: torch.Tensor) -> list[torch.Tensor]:
        """``[M (CMF) or X; M-]``, the maps that eq. 11's concatenation puts before ``s``.

        Without RAR, M- = M, so EP still reaches the output when CMF is off (table 5 rows 2 and 9 = EP whose M
        reaches Y without graph layers, as table 10's g = 0); with CMF on, M is already the first part and a second
        copy would only re-parameterise the same 1x1 conv, so it is left out. The baseline (EP and RAR off) is ``[X]``.
        """
        first = multimodal if self.cmf else visual
        return [first, reasoned] if self.carries_reasoned else [first]

    def forward(self, feats: torch.Tensor, lang: Language) -> torch.Tensor:
        visual = self.coords(feats)
        multimodal = self.perceive(visual, lang)
        return self.fuse(self.output_parts(visual, multimodal, self.reason(multimodal, lang)), lang)


class CMPCImage(nn.Module):
    """CMPC-I and its ablations (tables 5, 8, 9, 10); the baseline is the same class with EP/RAR off."""

    word_types = IMAGE_WORD_TYPES
    level_class = CMPCLevel

    def __init__(self, backbone: nn.Module, vocab_size: int, embeddings: torch.Tensor | None = None, *,
                 levels: Sequence[str] = LEVEL_NAMES, visual_dim: int = 1000, word_dim: int = 1000,
                 embed_dim: int = 300, dim: int = 1000, out_dim: int = 500, freeze_embeddings: bool = False,
                 word_classifier_dim: int = 500, word_classifier_activation: str = "sigmoid",
                 entity_perception: bool = True, fusion_heads: int = 5, fusion_tanh: bool = False,
                 relation_aware_reasoning: bool = True, gcn_layers: int = 1, rar_path: str = "fast",
                 routing_scale: str = "probability", routing_words: str = "relation", word_encoder: str = "lstm",
                 cmf: bool = True, tgfe: bool = True, tgfe_rounds: int = 3,
                 tgfe_normalize: bool = False, necessary_words: bool = True, convlstm: bool = True,
                 convlstm_hidden: int = 500, convlstm_kernel: int = 1, convlstm_peephole: bool = False,
                 aux_heads: bool = True):
        """The defaults are the paper's CMPC-I (``configs/model/cmpc_i.yaml``, paper 4.1.3 and docs/model.md);
        :func:`cmpc.models.build_model` passes the keys of ``configs/model/*.yaml`` as these keywords.

        Args:
            backbone: a :class:`~cmpc.models.backbone.Backbone`; ``backbone(images [U, 3, S, S])`` gives the
                levels ``res2..res5`` and ``backbone.out_channels`` their channels.
            vocab_size: number of word ids (``<pad>`` = 0).
            embeddings: optional ``[vocab_size, embed_dim]`` initial word vectors (GloVe), else random.
            levels: backbone levels used, a non-empty subset of ``("res3", "res4", "res5")``; one level = the
                single-level rows of table 5. Raises ``ValueError`` otherwise.
            visual_dim, word_dim, dim, out_dim, entity_perception, fusion_heads, fusion_tanh,
                relation_aware_reasoning, gcn_layers, rar_path, cmf: per level, see :class:`CMPCLevel`.
            embed_dim: word embedding size (GloVe 840B: 300).
            freeze_embeddings: keep the embeddings fixed (the released code fine-tunes them).
            word_classifier_dim: C_n, hidden width of the word-type classifier (eq. 1; 500).
            word_classifier_activation: ``"sigmoid"`` (eq. 1 as printed) or ``"relu"`` (released code).
            routing_scale: how word-type probabilities scale the routing words of RAR (eq. 5):
                ``"probability"`` (``r_t = p_t l_t``) or ``"peak"`` (``p_t / max p``; docs/model.md).
            routing_words: which words route RAR (eq. 5): ``"relation"`` (the paper: ``p_rel``) or
                ``"relation_and_landmark"`` (not in the paper: also the entity/attribute words after a relation
                word, :func:`~cmpc.models.language.relation_routing`; docs/model.md). ``ConfigError`` otherwise.
            word_encoder: ``"lstm"`` (the paper's one-directional LSTM) or ``"bilstm"`` (not in the paper: two
                directions of ``word_dim / 2``, :class:`~cmpc.models.language.WordEncoder`; docs/model.md).
                ``ConfigError`` otherwise, or for ``bilstm`` with an odd ``word_dim``.
            tgfe: build Text-Guided Feature Exchange (eqs. 22-24, table 5); needs two or more levels.
            tgfe_rounds: n, exchange rounds (table 8; paper 3, released code 2); 0 = off.
            tgfe_normalize: L2-normalise each exchanged level (released code) instead of eq. 24 as printed.
            necessary_words: TGFE guided by s (eq. 11, "NW") rather than the LSTM sentence vector (table 9).
            convlstm: fuse the levels with a ConvLSTM (table 5 "CLSTM"); otherwise concatenation + 1x1 conv.
            convlstm_hidden: ConvLSTM cell channels (paper 500).
            convlstm_kernel: ConvLSTM kernel size in cells (released code 1).
            convlstm_peephole: peephole connections in the ConvLSTM cell (released code; the paper does not
                mention them), see :class:`~cmpc.models.convlstm.ConvLSTM`.
            aux_heads: one auxiliary 3x3 mask head per level (released code; with two or more levels).
        """
        super().__init__()
        self.backbone = backbone
        self.feature_cache: FeatureCache | None = None  # set by the trainer (trainer.feature_cache_mb)
        unknown = [name for name in levels if name not in LEVEL_NAMES]
        if unknown or not levels:
            raise ConfigError(f"model.levels must be a non-empty subset of {list(LEVEL_NAMES)}, got {list(levels)}")
        self.level_names = tuple(levels)
        self.level_index = [LEVEL_NAMES.index(name) for name in levels]
        self.entity_perception, self.relation_aware_reasoning = entity_perception, relation_aware_reasoning
        self.necessary_words, self.routing_scale = necessary_words, routing_scale
        check_choice("model.routing_words", routing_words, ROUTINGS)
        check_choice("model.routing_scale", routing_scale, ROUTING_SCALES)
        self.routing = routing_words
        self.words = WordEncoder(vocab_size, embed_dim, word_dim, embeddings, freeze_embeddings, word_encoder)
        needs_types = self.routes_words() or (tgfe and necessary_words)
        self.classifier = (
            WordClassifier(word_dim, word_classifier_dim, self.word_types, word_classifier_activation)
            if needs_types
            else None
        )
        level_options = dict(visual_dim=visual_dim, word_dim=word_dim, dim=dim, out_dim=out_dim,
                             entity_perception=entity_perception, fusion_heads=fusion_heads, fusion_tanh=fusion_tanh,
                             relation_aware_reasoning=relation_aware_reasoning, gcn_layers=gcn_layers,
                             rar_path=rar_path, cmf=cmf)
        self.levels = nn.ModuleList(
            self.level_class(backbone.out_channels[i], **level_options, **self.level_extras()) for i in self.level_index
        )
        multi = len(self.levels) > 1
        self.exchange = (
            TextGuidedFeatureExchange(out_dim, word_dim, len(self.levels), tgfe_rounds, tgfe_normalize)
            if tgfe and multi and tgfe_rounds > 0
            else None
        )
        if convlstm:
            self.fusion = ConvLSTM(out_dim, convlstm_hidden, convlstm_kernel, peephole=convlstm_peephole)
            head_in = convlstm_hidden
        elif multi:
            self.fusion = nn.Sequential(nn.Conv2d(out_dim * len(self.levels), out_dim, 1), nn.ReLU())
            head_in = out_dim
        else:
            self.fusion = None
            head_in = out_dim
        self.head = nn.Conv2d(head_in, 1, kernel_size=3, padding=1)
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(out_dim, 1, kernel_size=3, padding=1) for _ in self.levels)
            if aux_heads and multi
            else None
        )

    def level_extras(self) -> dict:
        """Keywords that a subclass's ``level_class`` takes beyond :class:`CMPCLevel`'s (none here)."""
        return {}

    # -- language -------------------------------------------------------------------------------
    def routes_words(self) -> bool:
        """Whether a reasoning stage weighs words by their type (EP, RAR; CMPC-V adds AAR)."""
        return bool(self.entity_perception or self.relation_aware_reasoning)

    def encode_language(self, tokens: torch.Tensor) -> Language:
        words = self.words(tokens)
        if self.classifier is None:
            return Language(words, None, None, None, words.sentence, words.sentence)
        probs = self.classifier(words)
        weight = self.classifier.weights
        # sentence vectors are L2-normalised like every other feature (released code): an unnormalised s would
        # dominate the per-position concatenation of eq. 11 and wash out the visual channels
        # eq. 11
        necessary = l2_normalize(weighted_words(words, weight(probs, "entity", "attribute", "relation")), dim=-1)
        reasons = self.routes_words()
        return Language(
            words=words,
            probs=probs,
            entity=l2_normalize(weighted_words(words, weight(probs, "entity", "attribute")), dim=-1),  # eq. 2
            relation=routing_words(words, self.relation_weights(probs), self.routing_scale),  # eq. 5
            sentence=necessary if reasons else words.sentence,
            exchange=necessary if self.necessary_words else words.sentence,
        )

    def relation_weights(self, probs: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` weights of the words that route RAR (eq. 5's ``p_rel``, or with ``routing_words=
        relation_and_landmark`` also the landmark's words), from the word types ``probs [B, T, n_types]``."""
        weight = self.classifier.weights
        return relation_routing(weight(probs, "relation"), weight(probs, "entity", "attribute"), self.routing)

    # -- vision ---------------------------------------------------------------------------------
    def run_backbone(self, images: torch.Tensor, keys: Sequence | None = None) -> list[torch.Tensor]:
        """All backbone levels; no autograd graph through a frozen backbone. With ``keys`` (one per image) and a
        :attr:`feature_cache`, the levels of images seen before come from the cache."""
        trainable = any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            if keys is None or self.feature_cache is None:
                return self.backbone(images)
            return self.feature_cache(self.backbone, images, keys)

    def backbone_features(self, images: torch.Tensor, keys: Sequence | None = None) -> list[torch.Tensor]:
        """The selected backbone levels, resized to a common (the first level's) resolution."""
        feats = self.run_backbone(images, keys)
        feats = [feats[i] for i in self.level_index]
        size = feats[0].shape[-2:]
        return [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                for f in feats]

    def forward(self, images: torch.Tensor, words: torch.Tensor, image_index: torch.Tensor | None = None,
                image_keys: Sequence | None = None) -> dict:
        """``images [U, 3, S, S]``, ``words [B, T]``; ``image_index [B]`` maps each sentence to its image
        when several sentences share one image (the backbone then runs once per image); ``image_keys`` (U
        hashables, ``meta["group"]``) name the images for the :attr:`feature_cache` (ignored without one)."""
        feats = self.backbone_features(images, image_keys)
        if image_index is not None:
            feats = [f[image_index] for f in feats]
        lang = self.encode_language(words)
        levels = [level(f, lang) for level, f in zip(self.levels, feats)]
        return self.predict(levels, lang)

    def predict(self, levels: list[torch.Tensor], lang: Language) -> dict:
        aux = [head(y) for head, y in zip(self.aux_heads, levels)] if self.aux_heads is not None else []
        if self.exchange is not None:
            levels = self.exchange(levels, lang.exchange)
        if isinstance(self.fusion, ConvLSTM):
            fused = self.fusion(levels)
        elif self.fusion is not None:
            fused = self.fusion(torch.cat(levels, dim=1))
        else:
            fused = levels[0]
        return {"logits": self.head(fused), "aux_logits": aux, "word_probs": lang.probs}
