"""Letterbox resize / normalisation and its inverse (cmpc.data.transforms)."""

import numpy as np
import pytest
import torch

from cmpc.data.transforms import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD, Letterbox
from cmpc.errors import ConfigError


def test_placement_matches_official_resize_and_pad():
    lb = Letterbox(320)
    assert lb.placement(480, 640) == (240, 320, 40, 0)
    assert lb.placement(500, 333) == (320, 213, 0, 53)  # round(333*0.64)=213, floor((320-213)/2)=53


def test_image_caffe_bgr_and_padding():
    img = np.zeros((10, 20, 3), np.uint8)
    img[..., 0] = 200  # red
    x = Letterbox(40, "caffe_bgr").image(img)
    assert x.shape == (3, 40, 40) and x.dtype == torch.float32
    # content rows 10..29: channel 2 is R (BGR order) minus the R mean; padding is 0 - mean
    assert torch.allclose(x[2, 20, 20], torch.tensor(200 - CAFFE_BGR_MEAN[2]))
    assert torch.allclose(x[0, 20, 20], torch.tensor(-CAFFE_BGR_MEAN[0]))
    assert torch.allclose(x[:, 0, 0], -torch.tensor(CAFFE_BGR_MEAN, dtype=torch.float32))
    y = Letterbox(40, None).image(img)
    assert y[0, 20, 20] == pytest.approx(200 / 255) and y[:, 0, 0].abs().sum() == 0
    z = Letterbox(40, "imagenet").image(img)
    assert z[0, 20, 20] == pytest.approx((200 / 255 - 0.485) / 0.229, rel=1e-5)
    with pytest.raises(ConfigError, match="dataset.mean"):
        Letterbox(40, "bgr")


def test_mask_bilinear_dilates_nearest_does_not():
    m = np.zeros((50, 100), bool)
    m[10:30, 20:60] = True
    tb = Letterbox(40, mask_mode="bilinear").mask(m)
    tn = Letterbox(40, mask_mode="nearest").mask(m)
    assert set(tb.unique().tolist()) <= {0.0, 1.0}
    assert tb.sum() >= tn.sum() > 0
    assert tb[:10].sum() == 0 and tb[30:].sum() == 0  # padding rows (content rows 10..29)


@pytest.mark.parametrize("shape", [(37, 53), (64, 23), (32, 32)])
def test_invert_of_apply_recovers_the_mask(shape):
    h, w = shape
    m = np.zeros(shape, bool)
    y0, x0 = h // 4, w // 5
    m[y0:y0 + h // 2, x0:x0 + w // 2] = True
    lb = Letterbox(64, mask_mode="nearest")
    logits = lb.mask(m) * 2 - 1  # +-1 "logits"
    back = lb.invert(logits, (h, w))
    assert back.shape == (h, w) and isinstance(back, torch.Tensor)
    iou = ((back > 0).numpy() & m).sum() / ((back > 0).numpy() | m).sum()
    assert iou > 0.9
    back_np = lb.invert(logits.numpy(), (h, w))
    assert isinstance(back_np, np.ndarray)
    np.testing.assert_allclose(back_np, back.numpy(), atol=1e-4)  # cv2 and torch sample the same grid
    batched = lb.invert(torch.stack([logits, -logits])[:, None], (h, w))
    assert batched.shape == (2, 1, h, w)
    assert torch.allclose(batched[0, 0], back, atol=1e-5)


@pytest.mark.parametrize("mean", ["caffe_bgr", "imagenet", None])
def test_denormalize_inverts_normalize(mean):
    img = np.random.default_rng(1).integers(0, 256, (30, 17, 3), dtype=np.uint8)
    lb = Letterbox(32, mean)
    np.testing.assert_array_equal(lb.denormalize(lb.image(img)), lb.image_uint8(img))


@pytest.mark.parametrize("mean", ["caffe_bgr", "imagenet", None])
def test_normalize_gives_the_whole_array_formula_bit_for_bit(mean):
    padded = np.random.default_rng(2).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    padded[0, 0] = (0, 128, 255)
    x = padded.astype(np.float32)
    if mean == "caffe_bgr":
        x = x[..., ::-1] - np.asarray(CAFFE_BGR_MEAN, np.float32)
    elif mean == "imagenet":
        x = (x / np.float32(255) - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    else:
        x = x / np.float32(255)
    got = Letterbox(9, mean).normalize(padded)
    assert got.dtype == torch.float32 and got.is_contiguous() and got.shape == (3, 9, 7)
    assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))))
