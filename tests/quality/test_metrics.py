"""Image-quality metrics: agreement with scikit-image, conventions, FSIM properties."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from scipy.signal import convolve2d
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from napari_rrim_sr.quality import metrics as M
from napari_rrim_sr.quality.metrics import (
    compare,
    data_range_for,
    fsim,
    fsimc,
    phase_congruency,
    psnr,
    rgb_to_y,
    rmse,
    shave,
    ssim,
)


@pytest.fixture(scope="module")
def gray():
    return data.camera()[64:192, 192:320].copy()  # 128x128 uint8


@pytest.fixture(scope="module")
def rgb():
    return data.astronaut()[100:228, 150:278].copy()  # 128x128x3 uint8


def _noisy(img, sigma, seed=0):
    n = np.random.default_rng(seed).standard_normal(img.shape)
    return img.astype(np.float64) + sigma * n


def _jpeg(img, quality):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def _sk_ssim(a, b, r, channel_axis=None):
    return structural_similarity(
        a, b, data_range=r, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=channel_axis
    )


# --- conventions -----------------------------------------------------------------------------


def test_data_range_for():
    assert data_range_for(np.uint8) == 255
    assert data_range_for(np.zeros(3, np.uint16)) == 65535
    assert data_range_for(np.bool_) == 1
    assert data_range_for(np.int16) == 65535
    with pytest.raises(ValueError, match="data_range is required for floating-point"):
        data_range_for(np.float32)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "wide", None])
def test_bad_data_range_is_named(bad):
    a = np.zeros((8, 8), np.float32)
    if bad is None:  # floats carry no implied range
        with pytest.raises(ValueError, match="data_range is required"):
            psnr(a, a + 0.1)
        return
    with pytest.raises(ValueError, match=r"data_range must be a positive (finite )?number, got"):
        psnr(a, a + 0.1, data_range=bad)


def test_rgb_to_y_known_values():
    px = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0]]], np.uint8)
    y = rgb_to_y(px)
    np.testing.assert_allclose(y[0], [235.0, 16.0, 16 + 65.481, 16 + 128.553], atol=1e-9)
    assert y.dtype == np.float64 and y.shape == (1, 4)
    # other ranges: same formula on the 0..255 scale, returned in the input's scale
    np.testing.assert_allclose(rgb_to_y(px / 255.0, 1.0) * 255, y, atol=1e-9)
    np.testing.assert_allclose(rgb_to_y(px.astype(np.uint16) * 257), y * 257, atol=1e-6)
    np.testing.assert_allclose(rgb_to_y(np.moveaxis(px, -1, 0), 255, channel_axis=0), y)
    with pytest.raises(ValueError, match="RGB"):
        rgb_to_y(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="data_range"):
        rgb_to_y(np.zeros((4, 4, 3)))


def test_shave():
    assert shave(np.zeros((10, 12)), 2).shape == (6, 8)
    assert shave(np.zeros((10, 12, 3)), 4).shape == (2, 4, 3)
    assert shave(np.zeros((3, 10, 12)), 1, channel_axis=0).shape == (3, 8, 10)
    assert shave(np.zeros((10, 12)), 0).shape == (10, 12)
    with pytest.raises(ValueError, match="border"):
        shave(np.zeros((8, 8)), 4)
    with pytest.raises(ValueError, match="border"):
        shave(np.zeros((8, 8)), -1)


# --- identical images --------------------------------------------------------------------------


def test_identical_images(gray, rgb):
    for img in (gray, rgb):
        assert rmse(img, img) == 0
        assert psnr(img, img) == math.inf
        assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
        assert fsim(img, img) == pytest.approx(1.0, abs=1e-12)
        assert fsimc(img, img) == pytest.approx(1.0, abs=1e-12)


def test_flat_images_do_not_give_nan():
    flat = np.full((32, 32), 100, np.uint8)
    assert fsim(flat, flat) == pytest.approx(1.0)
    assert np.isfinite(fsim(flat, flat + 3))
    assert not np.any(phase_congruency(flat))


# --- agreement with scikit-image ----------------------------------------------------------------


def test_psnr_ssim_match_skimage_gray(gray):
    deg = np.clip(_noisy(gray, 12), 0, 255).astype(np.uint8)
    assert psnr(gray, deg) == pytest.approx(peak_signal_noise_ratio(gray, deg, data_range=255), abs=1e-6)
    assert ssim(gray, deg) == pytest.approx(_sk_ssim(gray, deg, 255), abs=1e-4)
    # float 0..1 data with an explicit range
    a, b = gray / 255.0, deg / 255.0
    assert psnr(a, b, 1.0) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-6)
    assert ssim(a, b, 1.0) == pytest.approx(_sk_ssim(a, b, 1.0), abs=1e-4)


def test_psnr_ssim_match_skimage_rgb(rgb):
    deg = _jpeg(rgb, 30)
    assert psnr(rgb, deg) == pytest.approx(peak_signal_noise_ratio(rgb, deg, data_range=255), abs=1e-6)
    assert ssim(rgb, deg) == pytest.approx(_sk_ssim(rgb, deg, 255, channel_axis=-1), abs=1e-4)
    chw = np.moveaxis(rgb, -1, 0), np.moveaxis(deg, -1, 0)
    assert ssim(*chw, channel_axis=0) == pytest.approx(ssim(rgb, deg), abs=1e-12)


def test_rmse_units(gray):
    deg = _noisy(gray, 7)
    e = rmse(gray, deg)
    assert e == pytest.approx(np.sqrt(np.mean((gray - deg) ** 2)))
    assert rmse(gray / 255.0, deg / 255.0, data_range=1.0) == pytest.approx(e)  # 0..255 scale
    assert psnr(gray, deg, 255) == pytest.approx(20 * np.log10(255 / e))


# --- monotone degradation -------------------------------------------------------------------------


def _strictly_decreasing(v):
    return all(x > y for x, y in zip(v, v[1:]))


def test_metrics_decrease_with_noise(gray):
    degs = [_noisy(gray, s) for s in (2, 5, 10, 20, 40)]
    for f in (psnr, ssim, fsim):
        vals = [f(gray, d, 255) for d in degs]
        assert _strictly_decreasing(vals), (f.__name__, vals)
    assert _strictly_decreasing([-rmse(gray, d) for d in degs])


def test_metrics_decrease_with_blur(gray):
    g = gray.astype(np.float64)
    degs = [ndi.gaussian_filter(g, s) for s in (0.5, 1.0, 1.5, 2.5)]
    for f in (psnr, ssim, fsim):
        vals = [f(g, d, 255) for d in degs]
        assert _strictly_decreasing(vals), (f.__name__, vals)


def test_rgb_metrics_decrease_with_noise(rgb):
    degs = [np.clip(_noisy(rgb, s), 0, 255) for s in (3, 10, 30)]
    for f in (psnr, ssim, fsim, fsimc):
        vals = [f(rgb, d, 255) for d in degs]
        assert _strictly_decreasing(vals), (f.__name__, vals)


# --- FSIM ------------------------------------------------------------------------------------------


def test_fsim_regression_values(gray, rgb):
    # Pinned values; when written they agreed to 1e-15 with a separate line-by-line port of
    # the authors' FeatureSIM.m/phasecong2.m (run once outside the repository). They catch
    # silent changes of constants (T1, T2, filter bank, downsampling) that properties miss.
    g = gray.astype(np.float64)
    assert fsim(g, _noisy(g, 10), 255) == pytest.approx(0.8749502517844042, abs=1e-9)
    deg = np.clip(_noisy(rgb.astype(np.float64), 10), 0, 255)
    assert fsim(rgb, deg, 255) == pytest.approx(0.9309901908214625, abs=1e-9)
    assert fsimc(rgb, deg, 255) == pytest.approx(0.9240967428222514, abs=1e-9)


def test_fsim_jpeg_ordering_gray_and_rgb(gray, rgb):
    for img in (gray, rgb):
        q10, q90 = _jpeg(img, 10), _jpeg(img, 90)
        f10, f90 = fsim(img, q10), fsim(img, q90)
        assert 0 < f10 < f90 < 1
    c10, c90 = fsimc(rgb, _jpeg(rgb, 10)), fsimc(rgb, _jpeg(rgb, 90))
    assert 0 < c10 < c90 < 1


def test_fsim_symmetric_and_bounded(gray, rgb):
    for img in (gray, rgb):
        deg = np.clip(_noisy(img, 15), 0, 255)
        f = fsim(img, deg, 255)
        assert 0 < f <= 1
        assert f == pytest.approx(fsim(deg, img, 255), abs=1e-12)
    deg = np.clip(_noisy(rgb, 15), 0, 255)
    assert fsimc(rgb, deg, 255) == pytest.approx(fsimc(deg, rgb, 255), abs=1e-12)
    assert fsimc(rgb, deg, 255) <= fsim(rgb, deg, 255) + 1e-12  # chroma term <= 1


def test_fsim_rescales_by_data_range(gray):
    deg = np.clip(_noisy(gray, 10), 0, 255)
    ref = fsim(gray, deg, 255)
    assert fsim(gray / 255.0, deg / 255.0, 1.0) == pytest.approx(ref, abs=1e-9)
    assert fsim(gray * 257.0, deg * 257.0, 65535) == pytest.approx(ref, abs=1e-9)


def test_fsim_gray_fsimc_equals_fsim_and_channel_average(gray):
    deg = np.clip(_noisy(gray, 10), 0, 255)
    assert fsimc(gray, deg, 255) == fsim(gray, deg, 255)  # reference behaviour for gray
    two = np.stack([gray, gray[::-1]], -1), np.stack([deg, deg[::-1]], -1)
    expect = (fsim(gray, deg, 255) + fsim(gray[::-1], deg[::-1], 255)) / 2
    assert fsim(*two, 255) == pytest.approx(expect)
    with pytest.raises(ValueError, match="3 channels"):
        fsimc(*two, 255)


def test_rgb_fsim_uses_reference_luma(rgb):
    deg = np.clip(_noisy(rgb, 10), 0, 255)
    luma = np.array([0.299, 0.587, 0.114])
    assert fsim(rgb, deg, 255) == pytest.approx(fsim(rgb @ luma, deg @ luma, 255), abs=1e-12)
    per_channel = np.mean([fsim(rgb[..., c], deg[..., c], 255) for c in range(3)])
    assert fsim(rgb, deg, 255, rgb=False) == pytest.approx(per_channel)


def test_phase_congruency_peaks_at_step_edge():
    img = np.zeros((64, 128))
    img[:, 64:] = 200.0  # step between columns 63 and 64
    pc = phase_congruency(img)
    assert pc.min() >= 0 and pc.max() <= 1
    prof = pc[:, 32:96].mean(axis=0)  # away from the FFT's wrap-around edges
    assert 32 + int(np.argmax(prof)) in (63, 64)
    assert prof.max() > 0.6
    assert prof.max() > 2.5 * max(prof[63 - 32 - 8], prof[64 - 32 + 8])
    assert prof[40 - 32] < 0.1 and prof[88 - 32] < 0.1
    # contrast invariance (up to the epsilon of the reference)
    np.testing.assert_allclose(phase_congruency(img * 3), pc, atol=1e-4)


def test_fsim_downsampling_matches_matlab_conv2_same():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(11, 9))
    for f in (2, 3, 4):
        full = convolve2d(x, np.ones((f, f)) / f**2, mode="full")
        same = full[f // 2 : f // 2 + 11, f // 2 : f // 2 + 9]  # MATLAB's 'same' offset
        np.testing.assert_allclose(M._box_same_subsample(x, f), same[::f, ::f], atol=1e-12)
    # MATLAB's documented conv(u, v, 'same') example pins that offset down
    full = np.convolve([-1, 2, 3, -2, 0, 1, 2], [2, 4, -1, 1])
    np.testing.assert_array_equal(full[2:9], [15, 5, -9, 7, 6, 7, -1])


def test_fsim_downsampling_factor_uses_matlab_round(monkeypatch):
    seen = []
    orig = M._box_same_subsample

    def spy(x, f):
        seen.append(f)
        return orig(x, f)

    monkeypatch.setattr(M, "_box_same_subsample", spy)
    img = np.random.default_rng(1).uniform(0, 255, size=(640, 644))
    fsim(img, img, 255)  # 640/256 = 2.5: MATLAB rounds to 3 (Python's round would give 2)
    assert seen and set(seen) == {3}


def test_fsim_speed_512():
    import time

    rng = np.random.default_rng(2)
    a = rng.uniform(0, 255, size=(512, 512))
    b = a + rng.normal(0, 5, size=a.shape)
    fsim(a, b, 255)  # builds the cached filter bank
    t0 = time.perf_counter()
    fsim(a, b, 255)
    assert time.perf_counter() - t0 < 1.0


# --- compare ---------------------------------------------------------------------------------------


def test_compare_y_channel_convention(rgb):
    sr = np.clip(_noisy(rgb, 8), 0, 255)
    res = compare(sr, rgb, data_range=255, y_channel=True, border=4)
    assert set(res) == {"rmse", "psnr", "ssim", "fsim", "convention"}
    ys, yh = shave(rgb_to_y(sr, 255), 4), shave(rgb_to_y(rgb), 4)
    assert res["psnr"] == pytest.approx(peak_signal_noise_ratio(yh, ys, data_range=255), abs=1e-6)
    assert res["ssim"] == pytest.approx(_sk_ssim(yh, ys, 255), abs=1e-4)
    assert res["rmse"] == pytest.approx(np.sqrt(np.mean((ys - yh) ** 2)))
    assert res["fsim"] == pytest.approx(fsim(shave(sr, 4), shave(rgb, 4), 255))
    assert "Y channel" in res["convention"] and "4 px" in res["convention"]


def test_compare_rgb_and_gray(rgb, gray):
    sr = np.clip(_noisy(rgb, 8), 0, 255)
    res = compare(sr, rgb, data_range=255)
    assert {"fsimc", "convention"} <= set(res)
    assert res["psnr"] == pytest.approx(psnr(sr, rgb, 255))
    res = compare(gray, gray)  # uint8: range inferred
    assert res["psnr"] == math.inf and res["ssim"] == pytest.approx(1) and "fsimc" not in res
    with pytest.raises(ValueError, match="RGB"):
        compare(gray, gray, y_channel=True)


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("f", [rmse, psnr, ssim, fsim, fsimc])
def test_errors(f):
    a = np.zeros((16, 16))
    with pytest.raises(ValueError, match="shape"):
        f(a, np.zeros((16, 15)), 1.0)
    with pytest.raises(ValueError, match="empty"):
        f(np.zeros((0, 16)), np.zeros((0, 16)), 1.0)
    bad = a.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        f(a, bad, 1.0)


def test_range_errors():
    a = np.zeros((16, 16))
    with pytest.raises(ValueError, match="data_range is required"):
        psnr(a, a)
    with pytest.raises(ValueError, match="data_range is required"):
        ssim(np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint16))
    with pytest.raises(ValueError, match="positive"):
        psnr(a, a, 0)
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 20)), np.zeros((10, 20)), 1.0)
    with pytest.raises(ValueError, match="stacks"):
        ssim(np.zeros((2, 3, 16, 16)), np.zeros((2, 3, 16, 16)), 1.0)


# --- overshoot (no-reference false texture) -------------------------------------------------------


def test_overshoot_is_zero_for_nearest_and_counts_a_drawn_spot_in_grey_levels():
    rng = np.random.default_rng(0)
    lr = rng.integers(50, 200, (32, 32)).astype(np.uint8)
    near = np.kron(lr, np.ones((4, 4), np.uint8))
    assert M.overshoot(lr, near, 4) == (0.0, 0.0)
    sr = near.astype(np.float64)
    y, x = 60, 70  # a dark hole 30 grey levels below its 3x3 LR neighbourhood
    lo = ndi.minimum_filter(lr.astype(float), 3, mode="nearest")[y // 4, x // 4]
    sr[y, x] = lo - 30
    mean, p999 = M.overshoot(lr, sr, 4, data_range=255)
    inner = (128 - 16) ** 2
    assert mean == pytest.approx(30 / inner)
    # the same images as 16-bit (x257) measure the same in grey levels
    assert M.overshoot(lr.astype(np.uint16) * 257, sr * 257, 4, data_range=65535)[0] == pytest.approx(mean)


def test_overshoot_rgb_uses_luma_and_rejects_mismatched_shapes():
    rgb = data.astronaut()[:64, :64]
    up = np.kron(rgb, np.ones((4, 4, 1), np.uint8))
    assert M.overshoot(rgb, up, 4) == (0.0, 0.0)
    bright = up.astype(np.float64)
    bright[100, 100] = 255 + 100.0  # far above any neighbourhood in every channel
    assert M.overshoot(rgb, bright, 4)[0] > 0
    with pytest.raises(M.InputError):
        M.overshoot(rgb, up[:-4], 4)
