"""Explicit normalisation: exact round trips, no bit-depth guessing, clear errors."""

import numpy as np
import pytest

from napari_rrim_sr.engine.normalize import (
    Normalization,
    check_dtype,
    check_finite,
    compute_normalization,
    dtype_limits,
)
from napari_rrim_sr.errors import InputError


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int8, np.int16])
def test_dtype_mode_round_trip_is_exact(dtype):
    info = np.iinfo(dtype)
    x = np.array([info.min, info.min + 1, 0, 1, info.max - 1, info.max], dtype=dtype)
    n = compute_normalization(x, "dtype")
    y = n.forward(x)
    assert y.dtype == np.float32
    assert y.min() == pytest.approx(0.0) and y.max() == pytest.approx(1.0)
    back = n.inverse(y)
    assert back.dtype == x.dtype
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64])
def test_wide_ints_round_trip_within_float32_precision(dtype):
    info = np.iinfo(dtype)
    x = np.array([info.min, 0, info.max], dtype=dtype)
    n = compute_normalization(x, "dtype")
    back = n.inverse(n.forward(x))  # no overflow in the cast back, extremes clipped into range
    assert back.dtype == x.dtype
    span = float(info.max) - float(info.min)
    np.testing.assert_allclose(back.astype(np.float64), x.astype(np.float64), atol=span * 1e-6)


def test_uint8_all_values_round_trip():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    n = compute_normalization(x, "dtype")
    np.testing.assert_array_equal(n.inverse(n.forward(x)), x)


def test_12_bit_in_uint16_is_never_guessed():
    x = np.array([[0, 1000], [2000, 4095]], dtype=np.uint16)  # max > 256 but < 4096
    n = compute_normalization(x, "dtype")
    assert n.hi == 65535.0  # no guessing: the full uint16 range
    assert n.forward(x).max() == pytest.approx(4095 / 65535)
    n12 = compute_normalization(x, "dtype", bit_depth=12)
    assert n12.hi == 4095.0
    assert n12.forward(x).max() == pytest.approx(1.0)
    # the inverse clips to the 12-bit range, not the uint16 range
    assert n12.inverse(np.array([1.5], np.float32))[0] == 4095
    np.testing.assert_array_equal(n12.inverse(n12.forward(x)), x)


def test_bit_depth_errors():
    x = np.array([[0, 5000]], dtype=np.uint16)
    with pytest.raises(InputError, match="bit_depth=12.*5000"):
        compute_normalization(x, "dtype", bit_depth=12)
    with pytest.raises(InputError, match="unsigned"):
        dtype_limits(np.int16, 12)
    with pytest.raises(InputError, match="impossible"):
        dtype_limits(np.uint8, 12)


def test_float_dtype_mode_needs_0_1():
    x = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    n = compute_normalization(x, "dtype")
    np.testing.assert_array_equal(n.forward(x), x)
    # the inverse clips floats to 0..1 in "dtype" mode
    np.testing.assert_array_equal(n.inverse(np.array([-0.5, 2.0], np.float32)), [0.0, 1.0])
    with pytest.raises(InputError, match="outside 0..1"):
        compute_normalization(x * 300, "dtype")


def test_range_mode_and_constant_image():
    x = np.array([[10, 20], [30, 50]], dtype=np.int16)
    n = compute_normalization(x, "range")
    assert (n.lo, n.hi) == (10.0, 50.0)
    np.testing.assert_allclose(n.forward(x), [[0, 0.25], [0.5, 1.0]])
    np.testing.assert_array_equal(n.inverse(n.forward(x)), x)
    c = np.full((4, 4), 7, dtype=np.uint8)
    nc = compute_normalization(c, "range")
    assert np.isfinite(nc.forward(c)).all()
    np.testing.assert_array_equal(nc.inverse(nc.forward(c)), c)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_percentiles_match_numpy(dtype):
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        x = rng.normal(100, 30, size=(37, 41)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, size=(37, 41), endpoint=True).astype(dtype)
    n = compute_normalization(x, "percentile", percentiles=(0.1, 99.9))
    lo, hi = np.percentile(x.astype(np.float64), [0.1, 99.9])
    assert n.lo == pytest.approx(lo, rel=1e-9, abs=1e-9)
    assert n.hi == pytest.approx(hi, rel=1e-9, abs=1e-9)


def test_percentile_mode_keeps_highlights():
    x = np.zeros((10, 10), np.uint16)
    x[0, 0] = 60000  # a hot pixel far above the 99th percentile
    x[1:, :] = np.arange(90).reshape(9, 10) * 10
    n = compute_normalization(x, "percentile", percentiles=(1, 99))
    y = n.forward(x)
    assert y.max() > 1.0  # not clipped on the way in
    np.testing.assert_array_equal(n.inverse(y), x)  # so the inverse restores it exactly


def test_dask_percentiles_equal_numpy():
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4096, size=(3, 40, 50)).astype(np.uint16)
    d = da.from_array(x, chunks=(1, 20, 25))
    a = compute_normalization(x, "percentile", percentiles=(2, 98))
    b = compute_normalization(d, "percentile", percentiles=(2, 98))
    assert (a.lo, a.hi) == (b.lo, b.hi)
    r = compute_normalization(d, "range")
    assert (r.lo, r.hi) == (float(x.min()), float(x.max()))


def test_explicit_window_and_inverse_clip():
    x = np.array([0, 100, 200, 255], dtype=np.uint8)
    n = compute_normalization(x, (100, 200))
    np.testing.assert_allclose(n.forward(x), [-1.0, 0.0, 1.0, 1.55])
    # inverse clips to the dtype range and rounds half to even like np.rint
    np.testing.assert_array_equal(n.inverse(np.array([-5.0, 0.004, 10.0], np.float32)), [0, 100, 255])
    assert compute_normalization(x, n) is n
    with pytest.raises(InputError, match="lo < hi"):
        compute_normalization(x, (5, 5))
    with pytest.raises(InputError, match="normalization must be"):
        compute_normalization(x, "auto")


@pytest.mark.parametrize("bad", [(50, 10), (-1, 50), (1, 101), "x"])
def test_bad_percentiles(bad):
    with pytest.raises(InputError, match="percentiles"):
        compute_normalization(np.zeros((4, 4), np.uint8), "percentile", percentiles=bad)


def test_refused_dtypes():
    with pytest.raises(InputError, match="boolean"):
        check_dtype(np.bool_)
    with pytest.raises(InputError, match="complex"):
        check_dtype(np.complex64)
    with pytest.raises(InputError, match="unsupported"):
        check_dtype(np.dtype("U3"))


def test_nan_and_inf_are_named():
    x = np.zeros((8, 8), np.float32)
    x[1, 1] = np.nan
    with pytest.raises(InputError, match="1 NaN"):
        check_finite(x)
    x[2, 2] = np.inf
    x[3, 3] = -np.inf
    with pytest.raises(InputError, match="1 NaN and 2 Inf"):
        check_finite(x)
    check_finite(np.ones((3, 3), np.float64))  # finite: no error
    check_finite(np.ones((3, 3), np.uint8))


def test_forward_does_not_modify_source():
    x = np.arange(12, dtype=np.uint16).reshape(3, 4)
    before = x.copy()
    n = Normalization(0.0, 11.0, np.dtype(np.uint16))
    n.forward(x)
    np.testing.assert_array_equal(x, before)


# ------------------------------------------------- issue 13: wide ints, overflow (defects 1, 6)

WIDE = [np.int32, np.int64, np.uint32, np.uint64]


@pytest.mark.parametrize("dtype", WIDE)
def test_wide_int_dtype_default_is_the_data_range(dtype):
    # the nominal range (4e9 / 1.8e19 wide) squeezed every real image into one float32 value
    signed = np.dtype(dtype).kind == "i"
    x = np.array([[1, 2], [3, 4]], dtype=dtype) if not signed else np.array([[-7, 2], [3, 40_000]], dtype=dtype)
    n = compute_normalization(x, "dtype")
    assert n.mode == "range" and (n.lo, n.hi) == (float(x.min()), float(x.max()))
    y = n.forward(x)
    assert y.min() == 0.0 and y.max() == 1.0 and len(np.unique(y)) == 4
    np.testing.assert_array_equal(n.inverse(y), x)


@pytest.mark.parametrize("dtype", WIDE)
def test_wide_int_extremes_round_trip_without_wrapping(dtype):
    info = np.iinfo(dtype)
    # a narrow range at a large offset: exact in float64, lost by float32 arithmetic (the model
    # domain is float32, so the *normalised* values must be small, not the raw ones)
    big = 2**52 if info.bits == 64 else 2**30
    vals = [big, big + 1, big + 3] if info.min == 0 else [-big - 3, -big, -big + 1]
    x = np.array(vals, dtype=dtype)
    n = compute_normalization(x, "dtype")
    np.testing.assert_array_equal(n.inverse(n.forward(x)), x)
    # an overshooting model output is clipped into the dtype, never wrapped around
    over = n.inverse(np.array([-0.5, 1.5], np.float32))
    assert over.dtype == x.dtype and over[0] <= over[1]
    assert over[0] >= info.min and over[1] <= info.max


def test_wide_int_dtype_mode_with_bit_depth_keeps_the_nominal_range():
    x = np.array([0, 100, 4095], dtype=np.uint32)
    n = compute_normalization(x, "dtype", bit_depth=12)
    assert n.mode == "dtype" and n.hi == 4095.0
    np.testing.assert_array_equal(n.inverse(n.forward(x)), x)


def test_float16_range_inverse_never_overflows_to_inf():
    x = np.array([0, 60000, 65504], dtype=np.float16)
    n = compute_normalization(x, "range")
    out = n.inverse(np.array([0.0, 1.2, 1.5], np.float32))  # a model overshooting the range
    assert out.dtype == np.float16 and np.isfinite(out).all()
    assert out[-1] == np.finfo(np.float16).max


def test_float64_of_1e300_normalises_in_float64():
    x = np.array([0.0, 5e299, 1e300])
    for mode in ("range", "percentile", (0.0, 1e300)):
        n = compute_normalization(x, mode)
        y = n.forward(x)
        assert y.dtype == np.float32 and np.isfinite(y).all()
        np.testing.assert_allclose(n.inverse(y), x, rtol=1e-6, atol=1e294)


def test_a_range_wider_than_float64_is_named():
    x = np.array([-1.7e308, 0.0, 1.7e308])
    with pytest.raises(InputError, match="wider than float64 can represent"):
        compute_normalization(x, "range")


def test_huge_float32_values_do_not_overflow_in_forward():
    x = np.array([-3e38, 0.0, 3e38], dtype=np.float32)
    n = compute_normalization(x, "range")
    y = n.forward(x)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(n.inverse(y), x, rtol=1e-5)
    assert np.isfinite(n.inverse(np.array([1.5], np.float32))).all()


def test_to_dtype_clips_floats_to_their_finite_range():
    from napari_rrim_sr.engine.normalize import to_dtype

    out = to_dtype(np.array([70000.0, -70000.0, 1.0]), np.float16)
    assert np.isfinite(out).all() and out[0] == np.finfo(np.float16).max and out[2] == 1.0
