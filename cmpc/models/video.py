"""CMPC-V (paper 3.2 + 3.3): the CMPC-I levels run on a clip, plus Action-Aware Reasoning.

Input ``images [B, K, 3, S, S]``, a clip whose centre frame ``K // 2`` is the annotated one (a
``[B, 3, S, S]`` batch is read as 1-frame clips). Per visual level (3.2.1-3.2.2):
coordinate fusion and Entity Perception on every frame (``M_V``), Relation-Aware Reasoning on the
centre frame only (``M-_ctr``), Action-Aware Reasoning over the K frames (eqs. 12-21,
:mod:`cmpc.models.action`) giving the temporal context ``P^_V`` of the centre frame, and the level
output ``Y_V = ReLU(Conv1x1([M_ctr; M-_ctr; P^_V; s]))`` (last paragraph of 3.2.2; ``cmf=false``
puts the visual feature ``X_ctr`` in place of ``M_ctr``, the released code's variant, docs/reference.md 1.6).
TGFE, ConvLSTM and the heads are CMPC-I's (:class:`~cmpc.models.cmpc.CMPCImage.predict`), so the
output dict is the image model's, for the centre frame, with 5 word types (``VIDEO_WORD_TYPES``).

Sentence vectors: ``q_e`` (eq. 2), ``R`` (eq. 5) and ``s`` (eq. 11, entity + attribute + relation
words, as printed) are CMPC-I's; CMPC-V adds ``q_a`` (eq. 12, L2-normalised like ``q_e`` and ``s``) and
the action words ``p_act * L`` that route the AR adjacency of table 7.

Backbones: a 2-D backbone sees the K frames folded into the batch (paper 3.2.1). Without AAR only
the centre frame is used downstream, so only the centre frame goes through the backbone (same
output, K times cheaper). A temporal backbone (I3D) gets the clip as ``[B, 3, K, S, S]`` and returns
levels ``[B, C, T', h, w]`` with T' <= K (temporal strides 2/4/8); every level is resized to the
stride-8 grid and its T' temporal cells are the level's "frames". Its centre is the cell holding
input frame ``K // 2`` when the clip is cut into T' equal parts, ``(K // 2) * T' // K`` (K = 8:
cells 2/1/0 of T' = 4/2/1, the cells centred on frame 4 under I3D's 'SAME' padding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from cmpc.models.action import ActionAwareReasoning
from cmpc.models.cmpc import CMPCImage, CMPCLevel, Language
from cmpc.models.functional import l2_normalize
from cmpc.models.language import VIDEO_WORD_TYPES, routing_words, weighted_words


@dataclass
class VideoLanguage(Language):
    """CMPC-I's sentence vectors plus the action words of AAR."""

    action: torch.Tensor | None = None  # q_a, eq. 12
    action_words: torch.Tensor | None = None  # p_act * L, the routers of AR (table 7)


class CMPCVideoLevel(CMPCLevel):
    """One visual level of CMPC-V: EP on every frame -> RAR on the centre frame -> AAR -> output fusion.

    Args:
        backbone_channels: channels of this level's backbone feature map.
        action_aware_reasoning: build the AAR stage (eqs. 12-21, table 6); without it the level is CMPC-I's on
            the centre frame.
        aar_adjacency: temporal graph edges: ``"dr"`` = direct relevance (eqs. 16-17, paper) or ``"ar"`` =
            action words as routers, like RAR (table 7).
        aar_gcn_layers: graph convolutions over the K frame vertices (eq. 18: one).
        aar_values: what eq. 21 projects: ``"reasoned"`` = P-_V after the graph convolution (3.2.2 text) or
            ``"vertices"`` = P~_V (eq. 21 as printed).
        level_options: the keywords of :class:`~cmpc.models.cmpc.CMPCLevel` (widths, EP, RAR, ``cmf``).
    """

    def __init__(self, backbone_channels: int, *, action_aware_reasoning: bool = True, aar_adjacency: str = "dr",
                 aar_gcn_layers: int = 1, aar_values: str = "reasoned", **level_options):
        super().__init__(backbone_channels, **level_options)
        self.action = (
            ActionAwareReasoning(self.mm_dim, self.word_dim, aar_adjacency, aar_gcn_layers, aar_values)
            if action_aware_reasoning
            else None
        )
        if self.action is not None:  # the output fusion also takes P^_V
            self.output = nn.Conv2d(self.output.in_channels + self.mm_dim, self.output.out_channels, kernel_size=1)

    def forward(self, feats: torch.Tensor, lang: VideoLanguage, center: int | None = None) -> torch.Tensor:
        """``feats [B, K, C, h, w]`` (backbone level of the clip), ``center`` = index of the annotated
        frame in K (default ``K // 2``) -> ``Y_V [B, out_dim, h, w]`` of the centre frame."""
        b, k = feats.shape[:2]
        center = k // 2 if center is None else center
        if self.action is None:  # nothing looks at the other frames
            feats, k, center = feats[:, center : center + 1], 1, 0
        visual = self.coords(feats.flatten(0, 1))  # X_F of every frame
        per_frame = replace(lang, entity=None if lang.entity is None else lang.entity.repeat_interleave(k, 0))
        multimodal = self.perceive(visual, per_frame).unflatten(0, (b, k))  # M_V (EP on every frame)
        m_ctr = multimodal[:, center]
        reasoned = self.reason(m_ctr, lang)  # M-_ctr (RAR, centre frame only)
        parts = self.output_parts(visual.unflatten(0, (b, k))[:, center], m_ctr, reasoned)
        if self.action is not None:
            parts.append(self.action(multimodal, reasoned, lang.action, lang.action_words, lang.words.mask))  # P^_V
        return self.fuse(parts, lang)


class CMPCVideo(CMPCImage):
    """CMPC-V and its ablations (tables 6, 7): CMPC-I with clip inputs and the AAR stage."""

    word_types = VIDEO_WORD_TYPES
    level_class = CMPCVideoLevel

    def __init__(self, backbone: nn.Module, vocab_size: int, embeddings: torch.Tensor | None = None, *,
                 action_aware_reasoning: bool = True, aar_adjacency: str = "dr", aar_gcn_layers: int = 1,
                 aar_values: str = "reasoned", **image_options):
        """The defaults are the paper's CMPC-V (``configs/model/cmpc_v.yaml``); :func:`cmpc.models.build_model`
        passes the keys of the model config as keywords.

        Args:
            backbone: a 2-D :class:`~cmpc.models.backbone.Backbone` (frames folded into the batch) or a temporal
                one (``backbone.temporal``, I3D: ``[U, 3, K, S, S]`` in, levels ``[U, C, T', h, w]`` out).
            vocab_size, embeddings: as for :class:`~cmpc.models.cmpc.CMPCImage`.
            action_aware_reasoning, aar_adjacency, aar_gcn_layers, aar_values: the AAR stage of every level,
                see :class:`CMPCVideoLevel` (eqs. 12-21, tables 6 and 7).
            image_options: every keyword of :class:`~cmpc.models.cmpc.CMPCImage` (widths, stages, TGFE, ConvLSTM).
        """
        # plain attributes, set before nn.Module.__init__ because CMPCImage.__init__ builds the levels with them
        self.action_aware_reasoning = action_aware_reasoning
        self.aar_options = dict(action_aware_reasoning=action_aware_reasoning, aar_adjacency=aar_adjacency,
                                aar_gcn_layers=aar_gcn_layers, aar_values=aar_values)
        super().__init__(backbone, vocab_size, embeddings, **image_options)

    def level_extras(self) -> dict:
        return self.aar_options

    def routes_words(self) -> bool:
        return super().routes_words() or bool(self.action_aware_reasoning)

    def encode_language(self, tokens: torch.Tensor) -> VideoLanguage:
        lang = super().encode_language(tokens)
        base = {f.name: getattr(lang, f.name) for f in fields(lang)}
        if lang.probs is None:
            return VideoLanguage(**base)
        p_act = self.classifier.weights(lang.probs, "action")
        return VideoLanguage(
            **base,
            action=l2_normalize(weighted_words(lang.words, p_act), dim=-1),  # eq. 12, L2-normalised like q_e and s
            action_words=routing_words(lang.words, p_act, self.routing_scale),
        )

    def clip_features(self, clips: torch.Tensor, keys: Sequence | None = None) -> list[tuple[torch.Tensor, int]]:
        """``clips [U, K, 3, S, S]`` -> per selected level ``(features [U, K', C, h, w], centre index)``,
        all levels on one spatial grid (see the module docstring for K' and the centre); ``keys`` (U, one per
        clip) name the clips for the feature cache."""
        u, k = clips.shape[:2]
        center = k // 2
        if not self.backbone.temporal:
            if not self.action_aware_reasoning:
                clips, k, center = clips[:, center : center + 1], 1, 0
            frame_keys = None if keys is None else [(key, j) for key in keys for j in range(k)]
            return [(f.unflatten(0, (u, k)), center)
                    for f in self.backbone_features(clips.flatten(0, 1), frame_keys)]
        feats = self.run_backbone(clips.transpose(1, 2), keys)  # [U, 3, K, S, S] -> levels [U, C, T', h, w]
        size = tuple(math.ceil(s / self.backbone.stride) for s in clips.shape[-2:])
        out = []
        for f in (feats[i] for i in self.level_index):
            t = f.shape[2]
            f = f.transpose(1, 2).flatten(0, 1)
            if tuple(f.shape[-2:]) != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            out.append((f.unflatten(0, (u, t)), center * t // k))
        return out

    def forward(self, images: torch.Tensor, words: torch.Tensor, image_index: torch.Tensor | None = None,
                image_keys: Sequence | None = None) -> dict:
        """``images [U, K, 3, S, S]`` (or ``[U, 3, S, S]`` = 1-frame clips), ``words [B, T]``;
        ``image_index [B]`` maps each sentence to its clip (the backbone then runs once per clip); ``image_keys``
        (U hashables, ``meta["group"]``) name the clips for the feature cache (ignored without one)."""
        clips = images if images.dim() == 5 else images[:, None]
        feats = self.clip_features(clips, image_keys)
        if image_index is not None:
            feats = [(f[image_index], c) for f, c in feats]
        lang = self.encode_language(words)
        levels = [level(f, lang, c) for level, (f, c) in zip(self.levels, feats)]
        return self.predict(levels, lang)
