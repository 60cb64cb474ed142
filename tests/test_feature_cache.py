"""The fixed backbone's feature cache (trainer.feature_cache_mb): the same features, the backbone skipped for known
images, a memory limit that holds, keys that follow grouped batches, and training that does not change."""

import json

import pytest
import torch
from test_model import IMAGES, VOCAB, WORDS, tiny_cfg
from test_training import compose_cfg, tiny_overrides

from cmpc.data import collate, collate_grouped
from cmpc.engine.evaluate import model_inputs, uses_feature_cache
from cmpc.engine.trainer import train
from cmpc.models import build_model
from cmpc.models.backbone import SmallResNet
from cmpc.models.feature_cache import FeatureCache, is_fixed

FIXED = {"name": "small", "widths": [8, 8, 16, 16], "blocks": [1, 1, 1, 1], "frozen": True, "frozen_bn": True}


class Counted(torch.nn.Module):
    """A backbone that counts the images it runs on."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone, self.images = backbone, 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.backbone(x)


def fixed_backbone():
    torch.manual_seed(0)
    return Counted(SmallResNet(widths=(8, 8, 16, 16), frozen=True, frozen_bn=True).train())


def test_cached_rows_equal_the_backbone_and_known_images_skip_it():
    net, images = fixed_backbone(), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        reference = net.backbone(images)
        cache = FeatureCache(max_mb=1)
        first = cache(net, images[[0, 1, 0]], ["a", "b", "a"])  # a key twice in one batch: computed once
        assert net.images == 2 and (cache.misses, cache.hits, len(cache)) == (2, 1, 2)
        second = cache(net, images[[2, 1, 0]], ["c", "b", "a"])
        assert net.images == 3 and (cache.misses, cache.hits, len(cache)) == (3, 3, 3)
    for got, rows in ((first, [0, 1, 0]), (second, [2, 1, 0])):
        assert [g.shape for g in got] == [r[rows].shape for r in reference]
        for g, r in zip(got, reference):
            torch.testing.assert_close(g, r[rows], rtol=1e-5, atol=1e-6)
    per_image = sum(r[:1].numel() * r.element_size() for r in reference)
    assert cache.bytes == 3 * per_image


def test_a_full_cache_still_gives_every_image_its_own_features():
    net, images = fixed_backbone(), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        reference = net.backbone(images)
        per_image = sum(r[:1].numel() * r.element_size() for r in reference)
        cache = FeatureCache(max_mb=1.5 * per_image / 2**20)  # room for one image
        cache(net, images[:2], ["a", "b"])
        assert len(cache) == 1 and cache.bytes == per_image <= cache.max_bytes
        got = cache(net, images[[1, 2, 0]], ["b", "c", "a"])  # b and c did not fit: computed again
        assert net.images == 4 and len(cache) == 1
    for g, r in zip(got, reference):
        torch.testing.assert_close(g, r[[1, 2, 0]], rtol=1e-5, atol=1e-6)


def test_wrong_key_counts_and_limits_are_refused():
    net = fixed_backbone()
    with pytest.raises(ValueError, match="2 keys for 3 images"):
        FeatureCache(1)(net, torch.randn(3, 3, 32, 32), ["a", "b"])
    with pytest.raises(ValueError, match="max_mb > 0"):
        FeatureCache(0)


def test_only_a_fixed_backbone_counts_as_fixed():
    assert is_fixed(SmallResNet(frozen=True, frozen_bn=True))
    assert not is_fixed(SmallResNet(frozen=True, frozen_bn=False))  # BatchNorm statistics move in training
    assert not is_fixed(SmallResNet(frozen=False, frozen_bn=True))


@pytest.mark.parametrize("grouped", [False, True])
def test_the_model_gives_the_same_logits_from_cached_features(grouped):
    torch.manual_seed(0)
    model = build_model(tiny_cfg().model, FIXED, VOCAB).eval()
    words = torch.cat([WORDS, WORDS[:1]])
    index = torch.tensor([0, 1, 0]) if grouped else None
    images = IMAGES if grouped else IMAGES[[0, 1, 0]]
    keys = ["x", "y"] if grouped else ["x", "y", "x"]
    with torch.no_grad():
        plain = model(images, words, index, keys)["logits"]  # no cache set: keys are ignored
        model.feature_cache = FeatureCache(4)
        first = model(images, words, index, keys)["logits"]
        again = model(images, words, index, keys)["logits"]
    assert model.feature_cache.misses == 2 and len(model.feature_cache) == 2
    torch.testing.assert_close(first, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(again, first)  # the second pass reads the cache only


def test_model_inputs_name_the_images_in_their_order():
    def sample(group, word):
        return {"image": torch.full((3, 4, 4), float(word)), "words": torch.tensor([word]),
                "target": torch.zeros(4, 4), "gt": None, "meta": {"group": group}}

    cpu = torch.device("cpu")
    samples = [sample("b", 1), sample("a", 2), sample("b", 1), sample("c", 3)]
    grouped = collate_grouped(samples)
    images, _, index, keys = model_inputs(grouped, cpu, keys=True)
    assert keys == ["b", "a", "c"] and images[:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0]
    assert index.tolist() == [0, 1, 0, 2]
    assert model_inputs(collate(samples), cpu, keys=True)[3] == ["b", "a", "b", "c"]
    assert len(model_inputs(collate(samples), cpu)) == 3  # a model without a cache is called as before
    del samples[0]["meta"]["group"]
    assert model_inputs(collate(samples), cpu, keys=True)[3] is None  # a sample without a key: no cache


def test_only_a_model_with_a_cache_is_given_the_keys():
    model = build_model(tiny_cfg().model, FIXED, VOCAB)
    assert not uses_feature_cache(model)
    model.feature_cache = FeatureCache(1)
    assert uses_feature_cache(model)
    wrapper = torch.nn.Module()
    wrapper.module = model  # as DistributedDataParallel holds it
    assert uses_feature_cache(wrapper)
    assert not uses_feature_cache(torch.nn.Linear(2, 2))


def test_training_with_the_cache_gives_the_same_losses_and_metrics(tmp_path):
    data = tmp_path / "data"
    fixed = ["backbone.frozen=true", "backbone.frozen_bn=true", "trainer.eval_every=3"]
    runs = {mb: train(compose_cfg(tiny_overrides(data, steps=6, extra=[*fixed, f"trainer.feature_cache_mb={mb}"])),
                      tmp_path / f"cache{mb}") for mb in (0, 64)}
    torch.testing.assert_close(runs[64]["history"], runs[0]["history"], rtol=1e-4, atol=0)
    assert runs[64]["test"]["metrics"].keys() == runs[0]["test"]["metrics"].keys()
    for name, value in runs[0]["test"]["metrics"].items():
        assert runs[64]["test"]["metrics"][name] == pytest.approx(value, abs=1e-3), name
    stats = json.loads((tmp_path / "cache64" / "metrics.json").read_text())["timing"]["feature_cache"]
    # 6 training images, 3 validation and 3 test images, each computed once; 6 steps of 4 sentences revisit some
    assert stats["misses"] == stats["images"] <= 12 and stats["hits"] > 0
    assert "feature_cache" not in json.loads((tmp_path / "cache0" / "metrics.json").read_text())["timing"]
    trainable = train(compose_cfg(tiny_overrides(data, steps=1, extra=["trainer.feature_cache_mb=64"])),
                      tmp_path / "trainable")  # backbone=small trains: no cache
    assert "feature_cache" not in trainable["timing"]


def test_an_images_features_do_not_depend_on_the_batch_it_came_in():
    """A resumed run's cache starts empty and meets its images in other batches than the first run did: the bits must
    not change (oneDNN computes a batch of one with other kernels: last-bit differences at the main job's widths)."""
    torch.manual_seed(0)
    net = SmallResNet(widths=(16, 32, 64, 128), frozen=True, frozen_bn=True).to(memory_format=torch.channels_last)
    images = torch.randn(3, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        together = FeatureCache(16)(net, images, ["a", "b", "c"])
        apart = FeatureCache(16)
        apart(net, images[:1], ["a"])
        apart(net, images[1:], ["b", "c"])
        later = apart(net, images, ["a", "b", "c"])  # all three from the cache now
    assert all(torch.equal(x, y) for x, y in zip(together, later))
