"""cmpc.crf: DenseCRF with the official CMPC parameters, clamping, and the process pool."""

import sys

import cv2
import numpy as np
import pytest

from cmpc.crf import CRFPool, dense_crf, unary_energy


def disk_scene(seed=0, h=72, w=96):
    """A bright noisy disk on a dark noisy background (non-square, to catch a width/height swap)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - 36) ** 2 + (xx - 44) ** 2 <= 20**2
    img = np.where(disk, 200.0, 50.0)[..., None] + rng.normal(0, 10, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), disk


def blurred_prob(disk, sigma=6.0):
    blur = cv2.GaussianBlur(disk.astype(np.float64), (0, 0), sigma)
    return 0.1 + 0.8 * blur / blur.max()


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("seed", [0, 1])
def test_crf_sharpens_blurred_boundary(seed):
    img, disk = disk_scene(seed)
    prob = blurred_prob(disk)
    out = dense_crf(img, prob)
    assert out.dtype == bool and out.shape == disk.shape
    base = iou(prob >= 0.5, disk)
    assert iou(out, disk) > base + 0.05
    assert iou(out, disk) > 0.95


def test_clamp_prevents_nan_at_zero_and_one():
    u = unary_energy(np.array([[0.0, 0.5, 1.0]]), eps=1e-5)
    assert u.shape == (2, 1, 3) and u.dtype == np.float32 and np.isfinite(u).all()
    np.testing.assert_allclose(u[:, 0, 1], [np.log(2), np.log(2)], rtol=1e-6)
    np.testing.assert_allclose(u[1, 0, 0], -np.log(1e-5), rtol=1e-6)  # p = 0 clamped to eps
    img, disk = disk_scene()
    assert not dense_crf(img, np.zeros(disk.shape)).any()
    assert dense_crf(img, np.ones(disk.shape)).all()
    with np.errstate(divide="raise", invalid="raise"):
        hard = dense_crf(img, disk.astype(np.float64))  # only 0 and 1: log(0) without the clamp
    assert iou(hard, disk) > 0.95


def test_input_validation():
    img, disk = disk_scene()
    with pytest.raises(ValueError, match="does not match"):
        dense_crf(img, np.zeros((10, 10)))
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(img.astype(np.float32), blurred_prob(disk))
    with pytest.raises(ValueError, match="NaN"):
        dense_crf(img, np.full(disk.shape, np.nan))


def test_missing_pydensecrf_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    img, disk = disk_scene()
    with pytest.raises(ImportError, match="pip install pydensecrf2"):
        dense_crf(img, blurred_prob(disk))


def test_pool_matches_serial_and_keeps_order():
    scenes = [disk_scene(seed, h=40 + 8 * seed, w=48) for seed in range(4)]
    images = [s[0] for s in scenes]
    probs = [blurred_prob(s[1], sigma=3) for s in scenes]
    serial = CRFPool(workers=0).map(images, probs)
    with CRFPool(workers=2) as pool:
        pooled = pool.map(images, probs)
    assert len(pooled) == 4
    for a, b, img in zip(serial, pooled, images):
        assert a.shape == img.shape[:2]
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        CRFPool(workers=0).map(images, probs[:2])
    with pytest.raises(TypeError):
        CRFPool(bogus=1)
