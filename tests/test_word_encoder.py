"""The two non-paper options of the language side (docs/model.md): ``model.word_encoder=bilstm`` (a bidirectional
word LSTM of the same width) and ``model.routing_words=relation_and_landmark`` (RAR also routed by the landmark's
words). Shapes, padding invariance, gradients, the default left bit-identical, bad values as one ConfigError."""

import pytest
import torch
from test_model import IMAGES, TINY, tiny_model
from test_video_model import tiny_model as video_model
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cmpc.errors import ConfigError
from cmpc.models import build_model
from cmpc.models.language import WordEncoder, relation_routing
from cmpc.models.loss import referring_loss

OPTIONS = [{"word_encoder": "bilstm"}, {"routing_words": "relation_and_landmark"}]
OPTION_IDS = ["bilstm", "relation_and_landmark"]
# the keys of the paper's word encoder in checkpoints written before the options existed
OLD_WORD_KEYS = ["embedding.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0"]


def clip_images():
    torch.manual_seed(3)
    return torch.randn(2, 3, 3, 32, 32)


def test_bilstm_equals_a_packed_bidirectional_lstm_of_half_width_per_direction():
    torch.manual_seed(0)
    enc = WordEncoder(20, 6, 8, kind="bilstm")
    tokens = torch.tensor([[0, 0, 0, 4, 5, 6], [7, 8, 9, 10, 11, 12], [0, 0, 0, 0, 0, 3]])
    words = enc(tokens)
    assert words.features.shape == (3, 6, 8) and words.sentence.shape == (3, 8)
    assert words.features[tokens == 0].abs().max() == 0
    reference = torch.nn.LSTM(6, 4, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name, value in enc.lstm.named_parameters():
            getattr(reference, name).copy_(value)
            getattr(reference, f"{name}_reverse").copy_(getattr(enc.lstm_reverse, name))
    lengths = (tokens != 0).sum(1)
    right = torch.stack([torch.cat([t[t != 0], t[t == 0]]) for t in tokens])
    packed = pack_padded_sequence(enc.embedding(right), lengths, batch_first=True, enforce_sorted=False)
    out, (h_n, _) = reference(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=6)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(words.features[b, 6 - n:], torch.nn.functional.normalize(out[b, :n], dim=-1))
        # forward state after the last word, backward state after the first word
        sentence = torch.nn.functional.normalize(torch.cat([h_n[0, b], h_n[1, b]]), dim=-1)
        torch.testing.assert_close(words.sentence[b], sentence)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert enc(tokens).features.dtype == torch.float32  # both directions run in float32


@pytest.mark.parametrize("kind", ["lstm", "bilstm"])
def test_word_features_do_not_depend_on_padding_or_batch_company(kind):
    torch.manual_seed(0)
    enc = WordEncoder(20, 6, 8, kind=kind)
    sentence = [4, 9, 5, 17]
    bare = enc(torch.tensor([sentence]))  # no padding at all
    padded = enc(torch.tensor([[0] * 13 + sentence, [0] * 8 + list(range(2, 11))]))
    torch.testing.assert_close(padded.features[0, -4:], bare.features[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(padded.sentence[0], bare.sentence[0], atol=1e-6, rtol=0)
    assert padded.features[0, :13].abs().max() == 0


def test_bilstm_words_read_what_follows_them_and_the_lstm_words_do_not():
    torch.manual_seed(0)
    a, b = torch.tensor([[0, 4, 9, 5, 17]]), torch.tensor([[0, 4, 9, 5, 3]])  # differ in the last word only
    uni, bi = WordEncoder(20, 6, 8), WordEncoder(20, 6, 8, kind="bilstm")
    torch.testing.assert_close(uni(a).features[:, :4], uni(b).features[:, :4], atol=0, rtol=0)
    assert (bi(a).features[0, 1] - bi(b).features[0, 1]).abs().max() > 1e-4  # the first word knows the last


def test_relation_and_landmark_routes_the_object_words_after_a_relation_word():
    p_rel = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.1, 0.0, 0.5, 0.0, 0.0, 0.0]])
    p_obj = torch.tensor([[0.0, 0.1, 0.9, 0.0, 0.0, 0.6, 0.8], [0.0, 0.1, 0.9, 0.2, 0.0, 0.6, 0.8]])
    assert torch.equal(relation_routing(p_rel, p_obj, "relation"), p_rel)  # eq. 5
    routed = relation_routing(p_rel, p_obj, "relation_and_landmark")
    # "the circle left of the blue square": the target's noun (before "left") stays out, the landmark joins
    torch.testing.assert_close(routed[0], torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.6, 0.8]))
    after = torch.tensor([0.0, 0.0, 0.1, 0.1, 1 - 0.9 * 0.5, 1 - 0.9 * 0.5, 1 - 0.9 * 0.5])  # 1 - prod_{s<t}(1 - p)
    torch.testing.assert_close(routed[1], p_rel[1] + after * p_obj[1])
    # left padding (all types 0) changes nothing
    pad = torch.zeros(2, 5)
    padded = relation_routing(torch.cat([pad, p_rel], 1), torch.cat([pad, p_obj], 1), "relation_and_landmark")
    torch.testing.assert_close(padded[:, 5:], routed, atol=0, rtol=0)
    # word types from a softmax: the weight stays in [0, 1]; a saturated relation word keeps gradients finite
    probs = torch.softmax(torch.randn(64, 9, 4) * 5, dim=-1)
    probs[0, 2] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    probs.requires_grad_(True)
    weight = relation_routing(probs[..., 2], probs[..., 0] + probs[..., 1], "relation_and_landmark")
    assert weight.min() >= 0 and weight.max() <= 1 + 1e-6
    weight.sum().backward()
    assert torch.isfinite(probs.grad).all()


@pytest.mark.parametrize("video", [False, True], ids=["cmpc_i", "cmpc_v"])
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_options_keep_the_output_shapes_and_padding_invariance_and_fast_equals_explicit(options, video):
    build = video_model if video else tiny_model
    images = clip_images() if video else IMAGES
    fast = build(**options)
    explicit = build(rar_path="explicit", **options)
    explicit.load_state_dict(fast.state_dict())
    sentence = [5, 6, 7, 8, 9, 10]
    short = torch.tensor([sentence, [0, 0] + sentence[:4]])
    long = torch.tensor([[0] * 14 + sentence, [0] * 16 + sentence[:4]])
    with torch.no_grad():
        out = fast(images, short)
        assert out["logits"].shape == (2, 1, 4, 4) and out["word_probs"].shape[:2] == (2, 6)
        torch.testing.assert_close(fast(images, long)["logits"], out["logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(explicit(images, short)["logits"], out["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_gradients_reach_every_parameter_of_the_options(options):
    model = tiny_model(**options).train()
    words = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [0, 9, 10, 11, 12, 13, 14]])
    loss, _ = referring_loss(model(IMAGES, words), (torch.rand(2, 32, 32) > 0.5).float())
    loss.backward()
    for name, p in model.words.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.classifier.fc2.weight.grad.abs().sum(1).gt(0).all()  # every word type's row
    if "word_encoder" in options:
        reverse = [k.replace("lstm.", "lstm_reverse.") for k in OLD_WORD_KEYS[1:]]
        assert sorted(model.words.state_dict()) == sorted(OLD_WORD_KEYS + reverse)  # the paper's keys kept
        assert model.words.lstm.hidden_size == model.words.lstm_reverse.hidden_size == TINY["word_dim"] // 2


def test_the_landmark_routing_reaches_rar_through_the_entity_probabilities():
    """With relation_and_landmark, RAR's input R depends on the entity probability of the words after the
    relation word; with the paper's routing it does not (eq. 5)."""
    words = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [0, 9, 10, 11, 12, 13, 14]])
    gradient = {}
    for routing in ("relation", "relation_and_landmark"):
        model = tiny_model(routing_words=routing).train()
        probs = model.classifier(model.words(words)).detach().requires_grad_(True)
        model.relation_weights(probs).sum().backward()
        gradient[routing] = probs.grad[..., model.word_types.index("entity")]
    assert gradient["relation"].abs().max() == 0
    assert gradient["relation_and_landmark"][:, -1].abs().min() > 0  # the last word follows the others


def test_the_default_is_the_paper_model_bit_for_bit_with_the_old_checkpoint_keys():
    default = tiny_model()
    explicit = tiny_model(word_encoder="lstm", routing_words="relation")
    a, b = default.state_dict(), explicit.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(k for k in a if k.startswith("words.")) == sorted(f"words.{k}" for k in OLD_WORD_KEYS)
    assert default.words.lstm.hidden_size == TINY["word_dim"] and default.words.lstm_reverse is None
    words = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [0, 9, 10, 11, 12, 13, 14]])
    with torch.no_grad():
        assert torch.equal(default(IMAGES, words)["logits"], explicit(IMAGES, words)["logits"])


def test_bad_option_values_are_one_config_error_line():
    backbone = {"name": "small", "widths": [8, 8, 16, 16], "blocks": [1, 1, 1, 1]}
    cases = [({"word_encoder": "gru"}, r"^model.word_encoder='gru' is unknown: use one of lstm, bilstm$"),
             ({"word_encoder": "bilstm", "word_dim": 25}, r"set an even model.word_dim \(got 25\)"),
             ({"routing_words": "landmark"}, r"^model.routing_words='landmark' is unknown: use one of relation, "),
             ({"routing_scale": "max"}, r"^model.routing_scale='max' is unknown: use one of probability, peak$"),
             ({"rar_path": "slow"}, r"^model.rar_path='slow' is unknown: use one of fast, explicit$"),
             ({"convlstm_kernel": 4}, r"^model.convlstm_kernel=4 must be an odd integer >= 1"),
             ({"levels": ["res9"]}, r"^model.levels must be a non-empty subset of")]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            build_model({"name": "cmpc_i", **TINY, **options}, backbone, 30)
        assert "\n" not in str(err.value)


def test_train_config_check_names_a_bad_option_before_any_data_is_read():
    from test_hostile_inputs import _train_cfg

    from cmpc.engine.config_check import check_train_config

    for key, value in (("word_encoder", "gru"), ("routing_words", "landmarks")):
        cfg = _train_cfg(**{f"model.{key}": value})
        with pytest.raises(ConfigError, match=rf"model.{key}='{value}' is unknown: use one of"):
            check_train_config(cfg)


def test_both_options_compile_to_one_training_graph():
    torch._dynamo.config.allow_rnn = True  # as cmpc.engine.trainer.compile_model
    model = tiny_model(word_encoder="bilstm", routing_words="relation_and_landmark").train()
    words = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [0, 9, 10, 11, 12, 13, 14]])
    explained = torch._dynamo.explain(model)(IMAGES, words, torch.tensor([0, 1]))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
