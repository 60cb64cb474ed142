"""Behaviour of the CMPC-V network (AAR, eqs. 12-21) and of full-video inference / J&F evaluation."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIG_DIR
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cmpc.data import build_dataset, build_vocab
from cmpc.engine.video import evaluate_videos, segment_video
from cmpc.errors import ConfigError
from cmpc.models import build_model
from cmpc.models.action import ActionAwareReasoning, DirectRelevanceGraph
from cmpc.models.language import VIDEO_WORD_TYPES
from cmpc.models.loss import referring_loss
from cmpc.models.relation import RelationAwareReasoning
from cmpc.models.video import CMPCVideo

TINY = {
    "visual_dim": 24, "word_dim": 24, "embed_dim": 12, "dim": 24, "out_dim": 16,
    "word_classifier_dim": 8, "convlstm_hidden": 16, "tgfe_rounds": 1, "glove": False,
}
BACKBONE = {"name": "small", "widths": [8, 8, 16, 16], "blocks": [1, 1, 1, 1], "frozen": False, "frozen_bn": False}
VOCAB = 30
ACTION = VIDEO_WORD_TYPES.index("action")


def tiny_model(experiment=None, seed=0, backbone=BACKBONE, vocab=VOCAB, **model):
    overrides = ["model=cmpc_v"] + ([f"experiment={experiment}"] if experiment else [])
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    cfg.model.merge_with({**TINY, **model})
    torch.manual_seed(seed)
    return build_model(cfg.model, OmegaConf.create(backbone), vocab).eval()


def n_params(module):
    return sum(p.numel() for p in module.parameters())


WORDS = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [0, 9, 10, 11, 12, 13, 14]])
CLIPS = torch.randn(2, 5, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_output_and_stage_shapes():
    model = tiny_model()
    assert isinstance(model, CMPCVideo) and model.classifier.types == VIDEO_WORD_TYPES
    out = model(CLIPS, WORDS)
    assert out["logits"].shape == (2, 1, 4, 4)  # centre frame, stride 8
    assert [a.shape for a in out["aux_logits"]] == [(2, 1, 4, 4)] * 3
    assert out["word_probs"].shape == (2, 7, 5)
    feats = model.clip_features(CLIPS)
    assert [(f.shape, c) for f, c in feats] == [((2, 5, 8 if i == 0 else 16, 4, 4), 2) for i in range(3)]
    lang = model.encode_language(WORDS)
    assert lang.action.shape == (2, 24) and lang.action_words.shape == (2, 7, 24)
    p_act = out["word_probs"][..., ACTION]
    q_a = torch.einsum("bt,btc->bc", p_act, lang.words.features)  # eq. 12
    assert torch.allclose(lang.action, q_a / q_a.norm(dim=-1, keepdim=True), atol=1e-5)
    assert model.routing_scale == "peak"  # the synthetic configs (docs/model.md, "Routing words")
    peak = p_act / p_act.amax(dim=1, keepdim=True)
    assert torch.allclose(lang.action_words, lang.words.features * peak[..., None], atol=1e-6)  # AR routers (table 7)
    level = model.levels[0]
    assert level(feats[0][0], lang, 2).shape == (2, 16, 4, 4)
    aar = level.action
    m_v = torch.randn(2, 5, 24, 4, 4)
    assert aar(m_v, m_v[:, 2], lang.action, lang.action_words, lang.words.mask).shape == (2, 24, 4, 4)


@pytest.mark.parametrize("adjacency", ["dr", "ar"])
def test_aar_softmax_normalisations(adjacency):
    torch.manual_seed(0)
    aar = ActionAwareReasoning(dim=16, word_dim=12, adjacency=adjacency)
    frames, q_a = torch.randn(2, 5, 30, 16), torch.randn(2, 12)
    words, mask = torch.randn(2, 7, 12), torch.ones(2, 7, dtype=torch.bool)
    d_v = aar.frame_attention(frames, q_a)  # eq. 14: over HW, per frame
    assert d_v.shape == (2, 5, 30) and torch.allclose(d_v.sum(-1), torch.ones(2, 5), atol=1e-6)
    scores = aar.frame_key(frames) @ aar.action_query(q_a)[:, None, :, None]
    assert torch.allclose(d_v, torch.softmax(scores[..., 0] / 4.0, dim=-1), atol=1e-6)  # 1/sqrt(C_m), C_m = 16
    vertices = (d_v[:, :, None] @ frames)[:, :, 0]
    a_v = aar.adjacency(vertices, words, mask)  # eq. 17 (DR) / eq. 9 with action words (AR): rows sum to 1
    assert a_v.shape == (2, 5, 5) and (a_v >= 0).all()
    assert torch.allclose(a_v.sum(-1), torch.ones(2, 5), atol=1e-5)
    reasoned = aar.reason(vertices, words, mask)
    assert reasoned.shape == (2, 5, 16)
    e_v = aar.projection(reasoned, torch.randn(2, 30, 16))  # eq. 20: each position's weights over K sum to 1
    assert e_v.shape == (2, 5, 30) and torch.allclose(e_v.sum(1), torch.ones(2, 30), atol=1e-6)
    assert isinstance(aar.graph, DirectRelevanceGraph if adjacency == "dr" else RelationAwareReasoning)


def test_dr_graph_convolution_is_eq18():
    torch.manual_seed(0)
    graph = DirectRelevanceGraph(8)
    p = torch.randn(1, 4, 8)
    a = torch.softmax((graph.query(p) @ graph.key(p).transpose(1, 2)) / 8**0.5, dim=-1)
    expected = torch.relu(graph.norms[0](((a + torch.eye(4)) @ p) @ graph.gcn[0].weight.T))
    assert torch.allclose(graph(p), expected, atol=1e-5)


@pytest.mark.parametrize("adjacency", ["dr", "ar"])
def test_temporal_graph_is_permutation_equivariant_over_non_centre_frames(adjacency):
    model = tiny_model(aar_adjacency=adjacency)
    base = model(CLIPS, WORDS)["logits"]
    shuffled = model(CLIPS[:, [4, 3, 2, 0, 1]], WORDS)["logits"]  # centre (index 2) stays in place
    assert torch.allclose(base, shuffled, atol=1e-5)
    moved_centre = model(CLIPS[:, [2, 3, 0, 4, 1]], WORDS)["logits"]
    assert not torch.allclose(base, moved_centre, atol=1e-3)  # the centre frame is what is segmented
    other = CLIPS.clone()
    other[:, 0] = torch.randn_like(other[:, 0])
    assert not torch.allclose(base, model(other, WORDS)["logits"], atol=1e-4)  # AAR looks at the other frames


def test_without_aar_only_the_centre_frame_matters():
    model = tiny_model(action_aware_reasoning=False)
    other = CLIPS.clone()
    other[:, [0, 1, 3, 4]] = torch.randn_like(other[:, [0, 1, 3, 4]])
    assert torch.allclose(model(CLIPS, WORDS)["logits"], model(other, WORDS)["logits"], atol=1e-6)


@pytest.mark.parametrize("adjacency", ["dr", "ar"])
def test_a_single_frame_clip_works_and_equals_an_image_batch(adjacency):
    model = tiny_model(aar_adjacency=adjacency)
    one = model(CLIPS[:, 2:3], WORDS)
    assert one["logits"].shape == (2, 1, 4, 4) and torch.isfinite(one["logits"]).all()
    assert torch.allclose(one["logits"], model(CLIPS[:, 2], WORDS)["logits"], atol=1e-6)


def test_every_video_experiment_builds_and_runs():
    names = sorted(p.stem for p in Path(CONFIG_DIR, "experiment").glob("table[67]_*.yaml"))
    assert names == [f"table6_row{i}" for i in range(1, 6)] + ["table7_ar", "table7_dr"]
    for name in names:
        model = tiny_model(experiment=name)
        assert isinstance(model, CMPCVideo), name
        out = model(CLIPS[:, 1:4], WORDS)
        assert out["logits"].shape == (2, 1, 4, 4), name
        has_aar = name in ("table6_row5", "table7_ar", "table7_dr")
        assert all((level.action is not None) == has_aar for level in model.levels), name
    assert tiny_model("table7_ar").levels[0].action.adjacency_kind == "ar"
    assert tiny_model("table6_row1").classifier is None and len(tiny_model("table6_row1").levels) == 1


def test_switching_aar_off_removes_exactly_its_module():
    full = tiny_model()
    without = tiny_model(action_aware_reasoning=False)
    assert all(level.action is None for level in without.levels)
    aar = sum(n_params(level.action) for level in full.levels)
    concat = sum(level.output.weight.shape[0] * 24 for level in full.levels)  # P^ channels of the output conv
    assert n_params(full) - n_params(without) == aar + concat


def test_gradients_reach_the_action_word_probabilities():
    def action_grad(model):
        out = model.train()(CLIPS, WORDS)
        out["word_probs"].retain_grad()
        loss, _ = referring_loss(out, (torch.rand(2, 32, 32) > 0.5).float())
        loss.backward()
        return out["word_probs"].grad[..., ACTION][WORDS != 0]

    assert action_grad(tiny_model()).abs().gt(0).all()
    assert action_grad(tiny_model(aar_adjacency="ar")).abs().gt(0).all()
    assert action_grad(tiny_model(action_aware_reasoning=False)).abs().max() == 0  # only AAR reads p_act


def test_aar_options_are_checked_and_eq21_values_switch():
    with pytest.raises(ConfigError, match=r"^model.aar_adjacency='xx' is unknown: use one of dr, ar$"):
        tiny_model(aar_adjacency="xx")
    with pytest.raises(ConfigError, match=r"^model.aar_values='all' is unknown: use one of reasoned, vertices$"):
        tiny_model(aar_values="all")
    reasoned = tiny_model(aar_values="reasoned")
    vertices = tiny_model(aar_values="vertices")
    vertices.load_state_dict(reasoned.state_dict())
    assert not torch.allclose(reasoned(CLIPS, WORDS)["logits"], vertices(CLIPS, WORDS)["logits"], atol=1e-4)


def test_i3d_levels_become_frames_with_the_centre_cell():
    i3d = {"name": "i3d", "weights": None, "frozen": True, "frozen_bn": True}
    model = tiny_model(backbone=i3d)
    clips = torch.randn(1, 8, 3, 32, 32)
    feats = model.clip_features(clips)
    assert [(f.shape[1], c) for f, c in feats] == [(4, 2), (2, 1), (1, 0)]  # T' = K/2, K/4, K/8; frame 4's cell
    assert all(f.shape[-2:] == (4, 4) for f, _ in feats)  # resized to the stride-8 grid
    assert model(clips, WORDS[:1])["logits"].shape == (1, 1, 4, 4)


def test_segment_video_and_evaluate_videos_on_a_generated_set(tmp_path):
    cfg = {"name": "synthetic_video", "root": str(tmp_path / "vid"), "train_split": "valid", "input_size": 32,
           "num_frames": 3, "frames_per_expression": 1,
           "generate": {"image_size": 64, "num_frames": 4, "splits": {"valid": 2}, "kinds": {"action": 1}}}
    vocab = build_vocab(cfg)
    ds = build_dataset(cfg, "valid", vocab)
    model = tiny_model(vocab=len(vocab))
    expression = next(ds.iter_expressions())
    masks = segment_video(model, expression, ds.letterbox, "cpu", batch_size=3)
    assert len(masks) == len(expression.frames) == 4
    assert all(m.dtype == bool and m.shape == (64, 64) for m in masks)
    frames, center = expression.clip_at(0)  # frames [0, 0, 1]: the clip of frame 0, clamped at the start
    with torch.no_grad():
        logits = model(ds.letterbox.clip(frames)[None], vocab.encode(expression.sentence)[None])["logits"]
    score = torch.nn.functional.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_array_equal(masks[0], (ds.letterbox.invert(score, (64, 64)) >= 0).numpy())
    result = evaluate_videos(model, ds, "cpu", batch_size=4, progress=False)
    n = sum(1 for _ in ds.iter_expressions())
    assert result["expressions"] == n and result["without_gt"] == 0
    assert set(result["jf"]) == {"J", "F", "JF", "n"} and 0 <= result["jf"]["JF"] <= 1
    assert list(result["jf_by_kind"]) == ["action"] and result["metrics"]["n"] == 4 * n
    assert "mAP" in result["metrics"] and "prec@0.95" in result["metrics"]


def test_sentences_sharing_a_clip_give_the_same_output_as_repeated_clips():
    model = tiny_model()
    words = torch.tensor([[0, 5, 6], [0, 7, 8], [9, 10, 11]])
    index = torch.tensor([0, 0, 1])
    grouped = model(CLIPS, words, image_index=index)["logits"]
    assert torch.allclose(grouped, model(CLIPS[index], words)["logits"], atol=1e-5)
