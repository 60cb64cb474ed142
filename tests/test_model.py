"""Behaviour of the CMPC-I network: stages, normalisations, fast == explicit RAR, padding, gradients, ablations."""

import pytest
import torch
from conftest import CONFIG_DIR
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cmpc.errors import ConfigError
from cmpc.models import build_model
from cmpc.models.convlstm import ConvLSTM
from cmpc.models.coords import spatial_coords
from cmpc.models.language import WordClassifier, WordEncoder, Words, routing_words
from cmpc.models.loss import referring_loss
from cmpc.models.relation import RelationAwareReasoning
from cmpc.models.tgfe import TextGuidedFeatureExchange

TINY = {
    "visual_dim": 24, "word_dim": 24, "embed_dim": 12, "dim": 24, "out_dim": 16,
    "word_classifier_dim": 8, "convlstm_hidden": 16, "tgfe_rounds": 2,
}
BACKBONE = {"name": "small", "widths": [8, 8, 16, 16], "blocks": [1, 1, 1, 1], "frozen": False, "frozen_bn": False}
VOCAB = 30


def tiny_cfg(experiment=None, **model):
    overrides = [f"experiment={experiment}"] if experiment else []
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    cfg.model.merge_with(TINY)
    cfg.model.merge_with(model)
    return cfg


def tiny_model(experiment=None, seed=0, **model):
    torch.manual_seed(seed)
    cfg = tiny_cfg(experiment, **model)
    return build_model(cfg.model, OmegaConf.create(BACKBONE), VOCAB).eval()


def n_params(module):
    return sum(p.numel() for p in module.parameters())


WORDS = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [0, 9, 10, 11, 12, 13, 14]])
IMAGES = torch.randn(2, 3, 32, 32)


def test_coordinate_map_matches_the_released_formula():
    o = spatial_coords(4, 5)
    assert o.shape == (8, 4, 5)
    h, w = 2, 3
    xmin, xmax = w / 5 * 2 - 1, (w + 1) / 5 * 2 - 1
    ymin, ymax = h / 4 * 2 - 1, (h + 1) / 4 * 2 - 1
    expected = torch.tensor([xmin, ymin, xmax, ymax, (xmin + xmax) / 2, (ymin + ymax) / 2, 1 / 5, 1 / 4])
    assert torch.allclose(o[:, h, w], expected)


def test_output_shapes_per_stage():
    model = tiny_model()
    out = model(IMAGES, WORDS)
    assert out["logits"].shape == (2, 1, 4, 4)  # stride 8
    assert [a.shape for a in out["aux_logits"]] == [(2, 1, 4, 4)] * 3
    assert out["word_probs"].shape == (2, 7, 4)
    feats = model.backbone_features(IMAGES)
    assert [f.shape[-2:] for f in feats] == [(4, 4)] * 3
    lang = model.encode_language(WORDS)
    assert lang.entity.shape == lang.sentence.shape == (2, 24)
    assert lang.relation.shape == (2, 7, 24)
    level = model.levels[0]
    visual = level.coords(feats[0])
    assert visual.shape == (2, 24, 4, 4)
    assert torch.allclose(visual.norm(dim=1), torch.ones(2, 4, 4), atol=1e-5)  # L2-normalised
    assert level.perceive(visual, lang).shape == (2, 24, 4, 4)
    assert level(feats[0], lang).shape == (2, 16, 4, 4)


def test_word_type_probabilities_sum_to_one_on_words_and_zero_on_padding():
    model = tiny_model()
    probs = model(IMAGES, WORDS)["word_probs"]
    mask = WORDS != 0
    assert torch.allclose(probs.sum(-1)[mask], torch.ones(int(mask.sum())), atol=1e-6)
    assert probs[~mask].abs().max() == 0


def test_rar_attention_is_normalised_and_explicit_adjacency_rows_sum_to_one():
    torch.manual_seed(0)
    rar = RelationAwareReasoning(dim=16, word_dim=12, layers=1)
    m = torch.randn(2, 16, 5, 6)
    words = torch.randn(2, 7, 12)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7], dtype=torch.bool)
    vertices = rar.vertex(m.flatten(2).transpose(1, 2))
    b1, b2 = rar.attention(vertices, words, mask)
    assert b1.shape == (2, 30, 7) and b2.shape == (2, 7, 30)
    assert torch.allclose(b1.sum(-1), torch.ones(2, 30), atol=1e-6)
    assert b1[0, :, :2].abs().max() == 0  # padding words get no attention
    assert torch.allclose(b2.sum(-1), torch.ones(2, 7), atol=1e-6)
    a = rar.adjacency(m, words, mask)
    assert a.shape == (2, 30, 30)
    assert torch.allclose(a.sum(-1), torch.ones(2, 30), atol=1e-5)
    assert (a >= 0).all()


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_fast_rar_equals_explicit_rar(layers):
    torch.manual_seed(1)
    fast = RelationAwareReasoning(dim=16, word_dim=12, layers=layers, path="fast")
    explicit = RelationAwareReasoning(dim=16, word_dim=12, layers=layers, path="explicit")
    explicit.load_state_dict(fast.state_dict())
    m, words = torch.randn(3, 16, 6, 6), torch.randn(3, 5, 12)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, :2] = False
    assert torch.allclose(fast(m, words, mask), explicit(m, words, mask), atol=1e-5)


def test_fast_path_never_builds_the_n_by_n_adjacency():
    torch.manual_seed(0)
    rar = RelationAwareReasoning(dim=8, word_dim=8, layers=1, path="fast")
    n = 40 * 40
    seen = []
    with torch.profiler.profile(record_shapes=True) as prof:
        rar(torch.randn(1, 8, 40, 40), torch.randn(1, 4, 8), torch.ones(1, 4, dtype=torch.bool))
    for event in prof.key_averages(group_by_input_shape=True):
        seen += [tuple(s) for s in event.input_shapes if isinstance(s, list)]
    assert not any(s[-2:] == (n, n) for s in seen if len(s) >= 2)


def test_model_fast_and_explicit_paths_agree_end_to_end():
    fast = tiny_model(rar_path="fast")
    explicit = tiny_model(rar_path="explicit")
    explicit.load_state_dict(fast.state_dict())
    assert torch.allclose(fast(IMAGES, WORDS)["logits"], explicit(IMAGES, WORDS)["logits"], atol=1e-5)


def test_padding_and_batch_company_do_not_change_a_sentence_output():
    model = tiny_model()
    sentence = [5, 6, 7, 8]
    short = torch.tensor([[0] * 2 + sentence])
    long = torch.tensor([[0] * 16 + sentence, [0] * 10 + list(range(2, 12))])
    image = IMAGES[:1]
    a = model(image, short)["logits"]
    b = model(torch.cat([image, IMAGES[1:]]), long)["logits"][:1]
    assert torch.allclose(a, b, atol=1e-5)


def test_word_encoder_rejects_an_empty_sentence():
    enc = WordEncoder(10, 4, 6)
    with pytest.raises(ValueError, match="no tokens"):
        enc(torch.tensor([[0, 0, 0]]))


def test_gradients_reach_the_word_classifier_and_embeddings():
    model = tiny_model().train()
    out = model(IMAGES, WORDS)
    loss, _ = referring_loss(out, (torch.rand(2, 32, 32) > 0.5).float())
    loss.backward()
    assert model.classifier.fc1.weight.grad.abs().sum() > 0
    assert model.classifier.fc2.weight.grad.abs().sum() > 0
    emb = model.words.embedding.weight.grad
    used = WORDS[WORDS != 0].unique()
    assert emb[used].abs().sum(-1).gt(0).all()
    assert emb[0].abs().sum() == 0  # the padding row never learns


def test_routing_words_eq5_and_peak_scaling():
    features = torch.randn(2, 4, 3)
    words = Words(features=features, mask=torch.ones(2, 4, dtype=torch.bool), sentence=features[:, -1])
    p = torch.tensor([[0.1, 0.4, 0.2, 0.0], [0.01, 0.02, 0.005, 0.01]])
    torch.testing.assert_close(routing_words(words, p, "probability"), features * p[..., None])  # eq. 5
    peak = routing_words(words, p, "peak")
    torch.testing.assert_close(peak[:, 1], features[:, 1])  # the most relational word keeps its full feature
    torch.testing.assert_close(peak[0, 2], features[0, 2] * 0.5)
    torch.testing.assert_close(routing_words(words, 0.01 * p, "peak"), peak)  # blind to the classifier's overall scale
    with pytest.raises(ConfigError, match=r"^model.routing_scale='share' is unknown: use one of probability, peak$"):
        routing_words(words, p, "share")


@pytest.mark.parametrize("scale", ["probability", "peak"])
def test_rar_output_depends_on_the_relation_probabilities_under_both_routing_scales(scale):
    model = tiny_model(routing_scale=scale).train()
    lang = model.encode_language(WORDS)
    reasoned = model.levels[0].reasoning(torch.randn(2, TINY["dim"], 4, 4), lang.relation, lang.words.mask)
    reasoned.square().mul(torch.randn_like(reasoned)).sum().backward()
    grads = model.classifier.fc2.weight.grad
    assert grads[model.word_types.index("relation")].abs().sum() > 0
    assert grads[model.word_types.index("entity")].abs().sum() > 0  # through the softmax of eq. 1


def test_switching_stages_off_removes_exactly_their_modules():
    full = tiny_model()
    n_full = n_params(full)
    without_rar = tiny_model(relation_aware_reasoning=False)
    rar = sum(n_params(level.reasoning) for level in full.levels)
    rar_concat = sum(level.output.weight.shape[0] * 24 for level in full.levels)  # M- channels of the output conv
    assert n_full - n_params(without_rar) == rar + rar_concat
    without_tgfe = tiny_model(tgfe=False)
    assert without_tgfe.exchange is None
    assert n_full - n_params(without_tgfe) == n_params(full.exchange)
    without_ep = tiny_model(entity_perception=False)
    assert all(level.perception is None for level in without_ep.levels)
    assert n_full - n_params(without_ep) == sum(n_params(level.perception) for level in full.levels)
    baseline = tiny_model(experiment="table5_row1")
    assert baseline.classifier is None and len(baseline.levels) == 1 and baseline.levels[0].reasoning is None


def test_tgfe_rounds_and_convlstm_shapes():
    torch.manual_seed(0)
    tgfe = TextGuidedFeatureExchange(dim=8, word_dim=6, levels=3, rounds=2)
    feats, sentence = [torch.randn(2, 8, 4, 4) for _ in range(3)], torch.randn(2, 6)
    out = tgfe(feats, sentence)
    assert len(tgfe.rounds) == 2 and [o.shape for o in out] == [f.shape for f in feats]
    # eq. 24 by hand for level 0 of round 1: own + sigmoid(c) * (other levels), c from [s; attention-pooled own]
    ex = tgfe.rounds[0][0]
    att = torch.softmax(torch.einsum("bc,bcn->bn", ex.query(sentence), ex.key(feats[0]).flatten(2)) / 8 ** 0.5, 1)
    g = torch.einsum("bn,bcn->bc", att, feats[0].flatten(2))
    gate = torch.sigmoid(ex.context(torch.cat([sentence, g], 1)))[:, :, None, None]
    assert torch.allclose(ex(feats[0], feats[1:], sentence), feats[0] + gate * (feats[1] + feats[2]), atol=1e-6)
    normalized = TextGuidedFeatureExchange(dim=8, word_dim=6, levels=3, rounds=2, normalize=True)
    assert torch.allclose(normalized(feats, sentence)[0].norm(dim=1), torch.ones(2, 4, 4), atol=1e-5)
    assert ConvLSTM(8, 5)(out).shape == (2, 5, 4, 4)


def test_word_classifier_is_eq1_softmax_over_types():
    clf = WordClassifier(6, 4, ("entity", "attribute", "relation", "unnecessary"))
    words = WordEncoder(10, 4, 6)(torch.tensor([[0, 3, 4]]))
    probs = clf(words)
    manual = torch.softmax(clf.fc2(torch.sigmoid(clf.fc1(words.features))), -1)
    assert torch.allclose(probs[0, 1:], manual[0, 1:])
    assert torch.allclose(clf.weights(probs, "entity", "attribute"), probs[..., 0] + probs[..., 1])


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_forward_under_cpu_autocast(dtype):
    model = tiny_model()
    with torch.autocast("cpu", dtype=dtype):
        out = model(IMAGES, WORDS)
    assert torch.isfinite(out["logits"].float()).all()


def test_every_experiment_config_builds_and_runs():
    from pathlib import Path

    for path in sorted(Path(CONFIG_DIR, "experiment").glob("*.yaml")):
        model = tiny_model(experiment=path.stem)
        out = model(IMAGES, WORDS)
        assert out["logits"].shape == (2, 1, 4, 4), path.stem


def test_shared_backbone_gives_the_same_output_as_repeated_images():
    model = tiny_model()
    words = torch.tensor([[0, 5, 6], [0, 7, 8], [9, 10, 11]])
    images = IMAGES
    index = torch.tensor([0, 0, 1])
    grouped = model(images, words, image_index=index)["logits"]
    repeated = model(images[index], words)["logits"]
    assert torch.allclose(grouped, repeated, atol=1e-5)


@pytest.mark.parametrize("tanh", [False, True])
def test_folded_entity_perception_equals_the_per_head_form(tanh):
    from cmpc.models.functional import l2_normalize
    from cmpc.models.perception import EntityPerception

    torch.manual_seed(0)
    ep = EntityPerception(visual_dim=12, word_dim=10, dim=8, heads=5, tanh=tanh)
    x, q = torch.randn(3, 12, 4, 5), torch.randn(3, 10)
    out = ep(x, q)
    assert out.shape == (3, 8, 4, 5)
    assert torch.allclose(out, l2_normalize(ep.per_head(x, q)), atol=1e-5)
