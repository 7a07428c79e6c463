"""MATLAB-style bicubic imresize: exact properties, an independent loop implementation, PIL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from skimage.transform import resize as sk_resize

from napari_rrim_sr.engine import bicubic
from napari_rrim_sr.engine.bicubic import (
    bicubic_downscale,
    bicubic_upscale,
    imresize,
    imresize_torch,
    mod_crop,
    to_uint8,
)

SCALES = [0.25, 0.5, 1 / 3, 0.7, 1.0, 1.5, 2.0, 4.0]


# --- an independent, deliberately naive implementation of MATLAB's formula ---------------


def _keys(x: float) -> float:
    x = abs(x)
    if x <= 1:
        return 1.5 * x**3 - 2.5 * x**2 + 1
    if x <= 2:
        return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
    return 0.0


def _ref_resize_1d(v, scale, antialias=True):
    n = len(v)
    m = math.ceil(n * scale)
    stretched = scale < 1 and antialias
    kw = 4 / scale if stretched else 4.0
    out = np.zeros(m)
    for i in range(1, m + 1):  # 1-based like MATLAB
        u = i / scale + 0.5 * (1 - 1 / scale)
        num = den = 0.0
        for k in range(math.floor(u - kw / 2), math.ceil(u + kw / 2) + 1):
            d = u - k
            wt = scale * _keys(scale * d) if stretched else _keys(d)
            j = k
            while j < 1 or j > n:  # half-sample symmetric reflection
                j = 1 - j if j < 1 else 2 * n + 1 - j
            num += wt * v[j - 1]
            den += wt
        out[i - 1] = num / den
    return out


def _ref_resize(img, scale, antialias=True):
    rows = np.stack([_ref_resize_1d(c, scale, antialias) for c in img.T], axis=1)
    return np.stack([_ref_resize_1d(r, scale, antialias) for r in rows])


@pytest.fixture(scope="module")
def cam():
    return data.camera()[100:164, 200:264].astype(np.float64)  # 64x64, real texture


# --- exactness --------------------------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
def test_matches_naive_loop_implementation(scale):
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 255, size=(13, 10))
    np.testing.assert_allclose(imresize(img, scale), _ref_resize(img, scale), atol=1e-9)


def test_matches_naive_loop_without_antialias():
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 1, size=(12, 9))
    for s in (0.25, 0.5):
        np.testing.assert_allclose(imresize(img, s, antialias=False), _ref_resize(img, s, antialias=False), atol=1e-12)


@pytest.mark.parametrize("scale", SCALES)
def test_constant_stays_constant(scale):
    img = np.full((11, 7), 7.25)
    np.testing.assert_allclose(imresize(img, scale), 7.25, atol=1e-12)


def test_identity_scale_one(cam):
    np.testing.assert_allclose(imresize(cam, 1.0), cam, atol=1e-12)


def test_linear_ramp_reproduced_in_interior_upscale():
    n = 20
    ramp = np.tile(3.0 * np.arange(1, n + 1) - 5.0, (6, 1))  # value = 3j - 5, j 1-based
    out = imresize(ramp, 4.0)
    i = np.arange(1, out.shape[1] + 1)
    u = i / 4 + 0.5 * (1 - 1 / 4)
    interior = (u - 2 >= 1) & (u + 2 <= n)
    assert interior.sum() > 40
    np.testing.assert_allclose(out[:, interior], np.tile(3 * u[interior] - 5, (24, 1)), atol=1e-10)


def test_linear_ramp_reproduced_in_interior_downscale():
    n = 64
    ramp = np.tile(0.5 * np.arange(1, n + 1), (8, 1))
    out = imresize(ramp, 0.25)
    u = np.arange(1, 17) * 4 - 1.5  # sample centres of MATLAB's x1/4 grid
    interior = (u - 8 >= 1) & (u + 8 <= n)
    np.testing.assert_allclose(out[:, interior], np.tile(0.5 * u[interior], (2, 1)), atol=1e-10)


def test_block_constant_downscale_without_antialias_gives_block_values():
    blocks = np.arange(12, dtype=np.float64).reshape(3, 4) * 10
    img = np.kron(blocks, np.ones((4, 4)))
    np.testing.assert_allclose(imresize(img, 0.25, antialias=False), blocks, atol=1e-12)
    # With antialiasing the stretched kernel reaches into neighbouring blocks (MATLAB does
    # the same): values differ from the block means, but the result is not garbage.
    aa = imresize(img, 0.25)
    assert not np.allclose(aa, blocks)
    np.testing.assert_allclose(aa, _ref_resize(img, 0.25), atol=1e-9)


@pytest.mark.parametrize(
    "shape,scale,expected",
    [
        ((7, 9), 0.25, (2, 3)),
        ((7, 9), 4, (28, 36)),
        ((5, 3), 0.5, (3, 2)),
        ((1, 1), 3, (3, 3)),
        ((10, 11), 1 / 3, (4, 4)),
        ((2, 5, 13, 6), 0.5, (2, 5, 7, 3)),
    ],
)
def test_output_shapes(shape, scale, expected):
    assert imresize(np.zeros(shape), scale).shape == expected


def test_batched_leading_axes_equal_per_image(cam):
    stack = np.stack([cam, cam[::-1], cam.T])
    out = imresize(stack, 0.25)
    for k in range(3):
        np.testing.assert_allclose(out[k], imresize(stack[k], 0.25), atol=1e-12)


def test_dtypes():
    x32 = np.ones((8, 8), np.float32)
    assert imresize(x32, 0.5).dtype == np.float32
    assert imresize(np.ones((8, 8), np.uint8), 0.5).dtype == np.float64


# --- torch --------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.25, 0.5, 2.0, 4.0])
def test_torch_matches_numpy_float64(scale):
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, size=(2, 3, 17, 12))
    out = imresize_torch(torch.from_numpy(x), scale).numpy()
    np.testing.assert_allclose(out, imresize(x, scale), atol=1e-10)


def test_torch_float32_matches_numpy_to_1e6(cam):
    x = cam / 255.0
    out = imresize_torch(torch.from_numpy(x).float()[None, None], 0.25)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 16, 16)
    np.testing.assert_allclose(out[0, 0].double().numpy(), imresize(x, 0.25), atol=1e-6)


def test_torch_gather_path_matches_dense(monkeypatch):
    rng = np.random.default_rng(4)
    t = torch.from_numpy(rng.uniform(size=(3, 19, 14)))
    dense = imresize_torch(t, 0.25)
    monkeypatch.setattr(bicubic, "_DENSE_LIMIT", 0)
    for s in (0.25, 3.0):
        np.testing.assert_allclose(imresize_torch(t, s).numpy(), imresize(t.numpy(), s), atol=1e-10)
    np.testing.assert_allclose(imresize_torch(t, 0.25).numpy(), dense.numpy(), atol=1e-10)


def test_torch_is_differentiable():
    t = torch.rand(1, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    imresize_torch(t, 0.25).sum().backward()
    assert t.grad is not None and torch.isfinite(t.grad).all()
    # weights sum to one per output: total gradient mass equals the number of outputs
    assert abs(t.grad.sum().item() - 16) < 1e-9


# --- other implementations (loose, different boundary/kernel) ------------------------------


def _psnr(a, b, r=255.0):
    return 10 * np.log10(r * r / np.mean((a - b) ** 2))


def test_close_to_pil_bicubic(cam):
    # PIL's BICUBIC is also a = -0.5 with a stretched kernel when reducing; only the border
    # handling differs, so the interior agrees to float32 precision.
    pil_dn = np.asarray(
        Image.fromarray(cam.astype(np.float32), mode="F").resize((16, 16), Image.BICUBIC),
        dtype=np.float64,
    )
    ours_dn = bicubic_downscale(cam, 4)
    assert _psnr(ours_dn, pil_dn) > 40
    np.testing.assert_allclose(ours_dn[2:-2, 2:-2], pil_dn[2:-2, 2:-2], atol=1e-3)

    pil_up = np.asarray(
        Image.fromarray(ours_dn.astype(np.float32), mode="F").resize((64, 64), Image.BICUBIC),
        dtype=np.float64,
    )
    ours_up = bicubic_upscale(ours_dn, 4)
    assert _psnr(ours_up, pil_up) > 40
    np.testing.assert_allclose(ours_up[8:-8, 8:-8], pil_up[8:-8, 8:-8], atol=1e-3)


def test_loosely_close_to_skimage_cubic(cam):
    up = bicubic_upscale(cam, 2)
    sk_up = sk_resize(cam, (128, 128), order=3, mode="symmetric", anti_aliasing=False, preserve_range=True)
    assert _psnr(up, sk_up) > 35
    dn = bicubic_downscale(cam, 2)
    sk_dn = sk_resize(cam, (32, 32), order=3, mode="symmetric", anti_aliasing=True, preserve_range=True)
    assert _psnr(dn, sk_dn) > 30


# --- convention helpers ---------------------------------------------------------------------


def test_bicubic_downscale_modcrops_and_keeps_range():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, size=(130, 131), dtype=np.uint8)
    lr = bicubic_downscale(img, 4)
    assert lr.shape == (32, 32) and lr.dtype == np.float64
    np.testing.assert_allclose(lr, imresize(img[:128, :128].astype(float), 0.25), atol=1e-12)
    assert -40 < lr.min() and lr.max() < 300  # same 0..255 scale (ringing allowed)


def test_bicubic_channel_axis():
    rng = np.random.default_rng(6)
    rgb = rng.uniform(0, 1, size=(21, 18, 3))
    lr = bicubic_downscale(rgb, 4, channel_axis=-1)
    assert lr.shape == (5, 4, 3)
    for c in range(3):
        np.testing.assert_allclose(lr[..., c], bicubic_downscale(rgb[..., c], 4), atol=1e-12)
    up = bicubic_upscale(lr, 4, channel_axis=-1)
    assert up.shape == (20, 16, 3)
    assert mod_crop(rgb, 4, channel_axis=-1).shape == (20, 16, 3)


def test_bicubic_upscale_is_imresize(cam):
    np.testing.assert_array_equal(bicubic_upscale(cam[:8, :8], 4), imresize(cam[:8, :8], 4.0))
    assert bicubic_upscale(cam[:8, :8], 4).shape == (32, 32)


def test_to_uint8_rounds_half_away_and_clips():
    x = np.array([-3.0, 0.49, 0.5, 1.5, 2.5, 254.5, 300.0])
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 1, 2, 3, 255, 255])
    assert to_uint8(np.array([0.5]), data_range=1.0)[0] == 128  # im2uint8(0.5) == 128
    assert to_uint8(x).dtype == np.uint8
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([np.nan]))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "x"])
def test_bad_scale_raises(bad):
    with pytest.raises(ValueError, match="scale"):
        imresize(np.zeros((4, 4)), bad)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="H, W"):
        imresize(np.zeros(5), 0.5)
    with pytest.raises(ValueError, match="empty"):
        imresize(np.zeros((0, 4)), 0.5)
    with pytest.raises(ValueError, match="factor"):
        bicubic_downscale(np.zeros((8, 8)), 2.5)
    with pytest.raises(ValueError, match="smaller"):
        bicubic_downscale(np.zeros((3, 8)), 4)
    with pytest.raises(ValueError, match="Tensor"):
        imresize_torch(np.zeros((4, 4)), 0.5)
