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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .coords import CoordinateFusion
from .functional import l2_normalize
from .language import IMAGE_WORD_TYPES, WordClassifier, WordEncoder, Words, routing_words, weighted_words
from .perception import EntityPerception
from .relation import RelationAwareReasoning
from .tgfe import TextGuidedFeatureExchange
from .convlstm import ConvLSTM

LEVEL_NAMES = ("res3", "res4", "res5")


@dataclass
class Language:
    """What the levels need from the sentence, computed once per forward."""

    words: Words
    probs: torch.Tensor | None  # [B, T, n_types] (eq. 1), None without a word classifier
    entity: torch.Tensor | None  # q_e, eq. 2
    relation: torch.Tensor | None  # R = p_rel * L, eq. 5
    sentence: torch.Tensor  # s (eq. 11) with a word classifier, else the LSTM sentence vector
    exchange: torch.Tensor  # the sentence vector guiding TGFE: s (NW on) or the LSTM vector (NW off)


class CMPCLevel(nn.Module):
    """One visual level of CMPC-I: EP -> RAR -> output fusion."""

    def __init__(self, cfg, backbone_channels: int):
        super().__init__()
        self.coords = CoordinateFusion(backbone_channels, cfg.visual_dim)
        self.perception = (
            EntityPerception(cfg.visual_dim, cfg.word_dim, cfg.dim, cfg.fusion_heads, cfg.fusion_tanh)
            if cfg.entity_perception
            else None
        )
        mm_dim = cfg.dim if self.perception is not None else cfg.visual_dim
        # g = 0 graph convolutions is no reasoning at all: M- = M (table 10 g = 0 = table 5 row 2, both 49.06)
        self.reasoning = (
            RelationAwareReasoning(mm_dim, cfg.word_dim, cfg.gcn_layers, cfg.rar_path)
            if cfg.relation_aware_reasoning and cfg.gcn_layers > 0
            else None
        )
        self.cmf = cfg.cmf and self.perception is not None
        # M- joins the output unless it would repeat the first part: without RAR, M- = M (EP on) or X (EP off)
        self.carries_reasoned = self.reasoning is not None or (self.perception is not None and not self.cmf)
        parts = (mm_dim if self.cmf else cfg.visual_dim) + (mm_dim if self.carries_reasoned else 0)
        self.output = nn.Conv2d(parts + cfg.word_dim, cfg.out_dim, kernel_size=1)

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

    def output_parts(self, visual: torch.Tensor, multimodal: torch.Tensor, reasoned: torch.Tensor) -> list[torch.Tensor]:
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

    def __init__(self, cfg, backbone: nn.Module, vocab_size: int, embeddings=None):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        unknown = [name for name in cfg.levels if name not in LEVEL_NAMES]
        if unknown or not cfg.levels:
            raise ValueError(f"model.levels must be a non-empty subset of {list(LEVEL_NAMES)}, got {list(cfg.levels)}")
        self.level_index = [LEVEL_NAMES.index(name) for name in cfg.levels]
        self.words = WordEncoder(vocab_size, cfg.embed_dim, cfg.word_dim, embeddings, cfg.freeze_embeddings)
        needs_types = self.routes_words() or (cfg.tgfe and cfg.necessary_words)
        self.classifier = (
            WordClassifier(cfg.word_dim, cfg.word_classifier_dim, self.word_types, cfg.word_classifier_activation)
            if needs_types
            else None
        )
        self.levels = nn.ModuleList(self.level_class(cfg, backbone.out_channels[i]) for i in self.level_index)
        multi = len(self.levels) > 1
        self.exchange = (
            TextGuidedFeatureExchange(cfg.out_dim, cfg.word_dim, len(self.levels), cfg.tgfe_rounds, cfg.tgfe_normalize)
            if cfg.tgfe and multi and cfg.tgfe_rounds > 0
            else None
        )
        if cfg.convlstm:
            self.fusion = ConvLSTM(cfg.out_dim, cfg.convlstm_hidden, cfg.convlstm_kernel, peephole=cfg.convlstm_peephole)
            head_in = cfg.convlstm_hidden
        elif multi:
            self.fusion = nn.Sequential(nn.Conv2d(cfg.out_dim * len(self.levels), cfg.out_dim, 1), nn.ReLU())
            head_in = cfg.out_dim
        else:
            self.fusion = None
            head_in = cfg.out_dim
        self.head = nn.Conv2d(head_in, 1, kernel_size=3, padding=1)
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(cfg.out_dim, 1, kernel_size=3, padding=1) for _ in self.levels)
            if cfg.aux_heads and multi
            else None
        )

    # -- language -------------------------------------------------------------------------------
    def routes_words(self) -> bool:
        """Whether a reasoning stage weighs words by their type (EP, RAR; CMPC-V adds AAR)."""
        return bool(self.cfg.entity_perception or self.cfg.relation_aware_reasoning)

    def encode_language(self, tokens: torch.Tensor) -> Language:
        words = self.words(tokens)
        if self.classifier is None:
            return Language(words, None, None, None, words.sentence, words.sentence)
        probs = self.classifier(words)
        weight = self.classifier.weights
        # sentence vectors are L2-normalised like every other feature (released code): an unnormalised s would
        # dominate the per-position concatenation of eq. 11 and wash out the visual channels
        necessary = l2_normalize(weighted_words(words, weight(probs, "entity", "attribute", "relation")), dim=-1)  # eq. 11
        reasons = self.routes_words()
        return Language(
            words=words,
            probs=probs,
            entity=l2_normalize(weighted_words(words, weight(probs, "entity", "attribute")), dim=-1),  # eq. 2
            relation=routing_words(words, weight(probs, "relation"), self.cfg.routing_scale),  # eq. 5
            sentence=necessary if reasons else words.sentence,
            exchange=necessary if self.cfg.necessary_words else words.sentence,
        )

    # -- vision ---------------------------------------------------------------------------------
    def run_backbone(self, images: torch.Tensor) -> list[torch.Tensor]:
        """All backbone levels; no autograd graph through a frozen backbone."""
        trainable = any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            return self.backbone(images)

    def backbone_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The selected backbone levels, resized to a common (the first level's) resolution."""
        feats = self.run_backbone(images)
        feats = [feats[i] for i in self.level_index]
        size = feats[0].shape[-2:]
        return [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats]

    def forward(self, images: torch.Tensor, words: torch.Tensor, image_index: torch.Tensor | None = None) -> dict:
        """``images [U, 3, S, S]``, ``words [B, T]``; ``image_index [B]`` maps each sentence to its image
        when several sentences share one image (the backbone then runs once per image)."""
        feats = self.backbone_features(images)
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
