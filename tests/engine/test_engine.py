"""The upscaling engine: seams, axes, channels, dtypes, progress/cancel, memory-safe outputs."""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_rrim_sr.engine import api as engine
from napari_rrim_sr.errors import Cancelled, InputError, RRIMError
from napari_rrim_sr.registry.core import Registry
from napari_rrim_sr.registry.loading import LoadedModel

DATA = Path(__file__).parents[3] / "shared" / "data"
PHOTO = DATA / "train" / "SunHays80" / "abbey_sun_asztnlqhlrvirneh.jpg"


class Nearest(nn.Module):
    """x4 nearest-neighbour "model": exactly invertible, so dtype/axis handling is testable
    bit for bit (and it is local, so tiled == untiled exactly)."""

    def __init__(self, channels=1, scale=4):
        super().__init__()
        self.in_channels = self.out_channels = channels
        self.scale = scale
        self.w = nn.Parameter(torch.ones(1))  # so the engine finds a device

    def forward(self, x):
        return torch.nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest") * self.w


def nearest(channels=1):
    return LoadedModel.from_module(
        Nearest(channels), "nearest-test", {"scale": 4, "in_channels": channels, "out_channels": channels}
    )


def tiny(channels=1, seed=0):
    torch.manual_seed(seed)
    hp = dict(num_feat=8, num_block=1, in_channels=channels, out_channels=channels, scale=4)
    return LoadedModel.from_module(Registry(discover=False).build("rrim", **hp), "rrim", hp)


def rep(a, s=4):
    return np.repeat(np.repeat(a, s, axis=-2), s, axis=-1)


@pytest.fixture(scope="module")
def photo():
    if not PHOTO.exists():
        pytest.skip("shared data not available")
    from PIL import Image

    with Image.open(PHOTO) as im:
        return np.asarray(im.convert("RGB"))[100:489, 200:717]  # 389 x 517, odd sizes


# ------------------------------------------------------------------------- seams


def test_tiled_equals_untiled_on_a_real_photo(photo):
    """Seam error <= 1e-3 (fp32, 0..1 data) on a 517x389 crop of a real photograph."""
    img = photo.astype(np.float32).mean(-1) / 255.0
    m = tiny(1, seed=3)
    whole = engine.upscale(img, m, tile=0, precision="fp32")
    tiled = engine.upscale(img, m, tile=128, precision="fp32")  # 4x5 tiles, default overlap
    assert whole.shape == (389 * 4, 517 * 4)
    assert np.abs(whole - tiled).max() <= 1e-3


def test_tiled_equals_untiled_rgb(photo):
    img = photo[:93, :121].astype(np.float32) / 255.0  # odd sizes, 3-channel model
    m = tiny(3, seed=4)
    whole = engine.upscale(img, m, tile=0, precision="fp32")
    tiled = engine.upscale(img, m, tile=48, precision="fp32")
    err = np.abs(whole - tiled).max()
    assert err <= 1e-3
    # the linear ramp gives unreliable edge pixels more weight: it needs a wider overlap
    lin = engine.upscale(img, m, tile=56, overlap=24, blend="linear", precision="fp32")
    assert np.abs(whole - lin).max() <= 1e-3
    # a too-small overlap is visibly worse: the test can fail
    bad = engine.upscale(img, m, tile=48, overlap=2, precision="fp32")
    assert np.abs(whole - bad).max() > 2 * err


@pytest.mark.parametrize("tile", [0, 16, 23, 40])
def test_local_model_is_exact_for_any_tile(tile):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 65536, size=(37, 29), dtype=np.uint16)
    out = engine.upscale(img, nearest(), tile=tile, overlap=4)
    np.testing.assert_array_equal(out, rep(img))


# ------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_integer_dtypes_round_trip_and_keep_dtype(dtype):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -30000), min(info.max, 60000)
    img = rng.integers(lo, hi, size=(9, 11)).astype(dtype)
    out = engine.upscale(img, nearest(), tile=0)
    assert out.dtype == img.dtype and out.shape == (36, 44)
    np.testing.assert_array_equal(out, rep(img))


def test_int32_with_range_normalisation_is_exact():
    # the full int32 range cannot pass through float32 exactly; the data's range can
    img = (np.arange(99, dtype=np.int32).reshape(9, 11) - 50) * 1000 + 2_000_000
    out = engine.upscale(img, nearest(), normalization="range")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, rep(img))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_dtypes(dtype):
    img = np.linspace(0, 1, 6 * 7, dtype=dtype).reshape(6, 7)
    out = engine.upscale(img, nearest(), tile=0)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, rep(img), atol=1e-6)
    # float data outside 0..1: "range" maps it and maps it back
    out = engine.upscale(img * 1000 - 20, nearest(), normalization="range")
    np.testing.assert_allclose(out, rep(img * 1000 - 20), rtol=1e-5, atol=1e-3)


def test_12_bit_data_with_bit_depth_and_clipping():
    img = np.array([[0, 4095], [2048, 100]], dtype=np.uint16)
    out = engine.upscale(img, nearest(), bit_depth=12)
    np.testing.assert_array_equal(out, rep(img))

    class Bright(Nearest):
        def forward(self, x):
            return super().forward(x) * 3.0  # overshoots 0..1

    m = LoadedModel.from_module(Bright(), "bright", {"scale": 4, "in_channels": 1, "out_channels": 1})
    out = engine.upscale(img, m, bit_depth=12)
    assert out.max() == 4095  # clipped to the 12-bit range, not 65535
    out8 = engine.upscale(img.astype(np.uint8), m)
    assert out8.max() == 255 and out8.dtype == np.uint8


def test_percentile_normalisation_round_trips_highlights():
    rng = np.random.default_rng(2)
    img = rng.integers(100, 200, size=(20, 20)).astype(np.uint16)
    img[3, 4] = 60000
    out = engine.upscale(img, nearest(), normalization="percentile", percentiles=(1, 99))
    np.testing.assert_array_equal(out, rep(img))


def test_source_is_never_modified(photo):
    srcs = [
        photo[:20, :25].copy(),
        np.ascontiguousarray(photo[:20, :25, 0]).astype(np.uint16) * 200,
        np.concatenate([photo[:16, :16], photo[:16, :16, :1]], axis=-1),
    ]
    m = tiny(1)
    for src in srcs:
        before = src.copy()
        engine.upscale(src, m, tile=16, overlap=4, normalization="percentile")
        engine.upscale_bicubic(src)
        np.testing.assert_array_equal(src, before)


# ------------------------------------------------------------------------- axes and channels


def test_one_channel_model_on_rgb_runs_per_channel(photo):
    img = photo[:30, :41]
    m = tiny(1, seed=5)
    out = engine.upscale(img, m, tile=0)
    assert out.shape == (120, 164, 3) and out.dtype == np.uint8
    for c in range(3):  # one batch of 3 planes vs each alone: float rounding may flip a level, never more
        alone = engine.upscale(np.ascontiguousarray(img[..., c]), m, tile=0)
        diff = np.abs(out[..., c].astype(int) - alone.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


def test_three_channel_model_on_gray_replicates_and_averages(photo):
    gray = photo[:30, :41, 1].astype(np.float32) / 255
    m = tiny(3, seed=6)
    # an explicit (0, 1) window: float outputs are then not clipped, so the average is exact
    out = engine.upscale(gray, m, tile=0, normalization=(0.0, 1.0))
    rgb = engine.upscale(np.stack([gray] * 3, axis=-1), m, tile=0, normalization=(0.0, 1.0))
    np.testing.assert_allclose(out, rgb.mean(-1), atol=1e-6)


def test_rgba_alpha_is_bicubic(photo):
    rgb = photo[:21, :26]
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[5:15, 5:20] = 255
    rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)
    m = tiny(3, seed=7)
    out = engine.upscale(rgba, m, tile=0)
    assert out.shape == (84, 104, 4)
    np.testing.assert_array_equal(out[..., :3], engine.upscale(rgb, m, tile=0))
    np.testing.assert_array_equal(out[..., 3], engine.upscale_bicubic(alpha))


def test_n_band_image_runs_per_band():
    rng = np.random.default_rng(3)
    bands = rng.integers(0, 255, size=(14, 17, 4)).astype(np.uint8)  # e.g. RGB + NIR
    m = tiny(1, seed=8)
    out = engine.upscale(bands, m, spatial_axes=(0, 1), rgb=False, tile=0)
    assert out.shape == (56, 68, 4)
    for b in range(4):
        np.testing.assert_array_equal(out[..., b], engine.upscale(np.ascontiguousarray(bands[..., b]), m, tile=0))


def test_stack_planes_and_slices():
    rng = np.random.default_rng(4)
    stack = rng.integers(0, 4096, size=(2, 3, 10, 12)).astype(np.uint16)  # T, Z, Y, X
    m = tiny(1, seed=9)
    full = engine.upscale(stack, m, tile=0)
    assert full.shape == (2, 3, 40, 48)
    np.testing.assert_array_equal(full[1, 2], engine.upscale(stack[1, 2], m, tile=0))
    one = engine.upscale(stack, m, tile=0, slices=(1, 2))
    assert one.shape == (40, 48)
    np.testing.assert_array_equal(one, full[1, 2])
    some = engine.upscale(stack, m, tile=0, slices=(slice(None), 0))
    assert some.shape == (2, 40, 48)
    np.testing.assert_array_equal(some, full[:, 0])
    # "current slice only" into an existing full-size result: other planes untouched
    out = np.zeros_like(full)
    engine.upscale(stack, m, tile=0, slices=(0, 1), out=out)
    np.testing.assert_array_equal(out[0, 1], full[0, 1])
    assert not out[1].any() and not out[0, 0].any()
    with pytest.raises(InputError, match="slices"):
        engine.upscale(stack, m, slices=(0, 0, 0))


def test_explicit_spatial_axes_in_the_middle():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 255, size=(6, 5, 3), dtype=np.uint8)  # Y, Z, X
    out = engine.upscale(img, nearest(), spatial_axes=(0, 2), rgb=False)
    assert out.shape == (24, 5, 12)
    for z in range(5):
        np.testing.assert_array_equal(out[:, z, :], rep(img[:, z, :]))


def test_layout_detection():
    assert engine.resolve_layout((10, 12, 3)).rgb
    assert engine.resolve_layout((10, 12, 4)).channel_axis == 2
    lay = engine.resolve_layout((5, 10, 12))
    assert not lay.rgb and lay.plane_axes == (0,) and (lay.y_axis, lay.x_axis) == (1, 2)
    assert not engine.resolve_layout((10, 3)).rgb  # a 2-D image is never RGB
    assert engine.resolve_layout((10, 12, 3), rgb=False).plane_axes == (0,)


# ------------------------------------------------------------------------- outputs


def test_out_memmap_and_zarr(tmp_path):
    rng = np.random.default_rng(6)
    img = rng.integers(0, 255, size=(2, 15, 13), dtype=np.uint8)
    m = tiny(1, seed=10)
    want = engine.upscale(img, m, tile=12, overlap=4)
    mm = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.uint8, shape=(2, 60, 52))
    got = engine.upscale(img, m, tile=12, overlap=4, out=mm)
    assert got is mm
    np.testing.assert_array_equal(np.asarray(mm), want)
    zarr = pytest.importorskip("zarr")
    z = zarr.open_array(str(tmp_path / "out.zarr"), mode="w", shape=(2, 60, 52), chunks=(1, 32, 32), dtype="u1")
    engine.upscale(img, m, tile=12, overlap=4, out=z)
    np.testing.assert_array_equal(z[...], want)
    with pytest.raises(InputError, match="shape"):
        engine.upscale(img, m, out=np.zeros((2, 60, 51), np.uint8))
    with pytest.raises(InputError, match="dtype"):
        engine.upscale(img, m, out=np.zeros((2, 60, 52), np.uint16))


def test_exact_scale_output_sizes_for_odd_shapes():
    for shape in [(2, 2), (3, 7), (31, 2), (65, 33)]:
        out = engine.upscale(np.zeros(shape, np.uint8), nearest(), tile=16, overlap=4)
        assert out.shape == (shape[0] * 4, shape[1] * 4)


# ------------------------------------------------------------------------- progress and cancel


def test_progress_counts_tiles_over_all_slices():
    stack = np.zeros((3, 40, 40), np.uint8)
    seen = []
    engine.upscale(stack, nearest(), tile=16, overlap=4, progress=seen.append)
    total = seen[0].tiles_total
    assert total == 3 * engine.TileGrid.make(40, 40, 16, 4, 2, 4).n_tiles
    done = [p.tiles_done for p in seen]
    assert done == sorted(done) and done[-1] == total
    assert seen[-1].slices_done == seen[-1].slices_total == 3
    assert seen[-1].fraction == 1.0


def test_cancel_raises_and_returns_nothing():
    ev = threading.Event()
    seen = []

    def progress(p):
        seen.append(p)
        if p.tiles_done >= 2:
            ev.set()

    with pytest.raises(Cancelled, match="cancelled after 2 of"):
        engine.upscale(np.zeros((64, 64), np.uint8), nearest(), tile=16, overlap=4, progress=progress, cancel=ev)
    assert seen[-1].tiles_done == 2  # stopped between tiles, no further work
    with pytest.raises(Cancelled):
        engine.upscale(np.zeros((8, 8), np.uint8), nearest(), cancel=lambda: True)


def test_upscale_iter_returns_result_via_stopiteration():
    gen = engine.upscale_iter(np.ones((5, 6), np.uint8), nearest())
    steps = []
    with pytest.raises(StopIteration) as stop:
        while True:
            steps.append(next(gen))
    assert stop.value.value.shape == (20, 24)
    assert isinstance(steps[0], engine.Progress)


# ------------------------------------------------------------------------- precision and memory errors


class NaNInBF16(Nearest):
    def forward(self, x):
        y = super().forward(x)
        if torch.is_autocast_enabled("cpu"):
            return y * float("nan")
        return y


def test_nan_in_reduced_precision_is_redone_in_fp32():
    m = LoadedModel.from_module(NaNInBF16(), "nan-test", {"scale": 4, "in_channels": 1, "out_channels": 1})
    up = engine.Upscaler(m, device="cpu", precision="bf16")
    img = np.arange(30 * 30, dtype=np.uint16).reshape(30, 30)
    out = up.upscale(img, tile=16, overlap=4)
    np.testing.assert_array_equal(out, rep(img))
    assert up.fp32_redos == engine.TileGrid.make(30, 30, 16, 4, 2, 4).n_tiles
    assert up.last_run["fp32_redos"] == up.fp32_redos


class OOMAbove(Nearest):
    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.sizes = sizes = []

        def record(n):  # a function survives the engine's deepcopy of the module
            sizes.append(n)

        self.record = record

    def forward(self, x):
        self.record(x.shape[-1])
        if x.shape[-1] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def test_out_of_memory_halves_the_tile_and_retries():
    mod = OOMAbove(40)
    m = LoadedModel.from_module(mod, "oom-test", {"scale": 4, "in_channels": 1, "out_channels": 1})
    img = np.arange(100 * 90, dtype=np.uint16).reshape(100, 90)
    seen = []
    out = engine.upscale(img, m, tile=128, overlap=8, progress=seen.append)
    np.testing.assert_array_equal(out, rep(img))
    assert max(mod.sizes) > 40 and mod.sizes[-1] <= 40
    assert seen[-1].tiles_done == seen[-1].tiles_total  # totals re-planned after the retry
    tiny_limit = LoadedModel.from_module(OOMAbove(8), "oom-test", {"scale": 4, "in_channels": 1, "out_channels": 1})
    with pytest.raises(RRIMError, match="out of memory"):
        engine.upscale(img, tiny_limit, tile=64)


def test_caller_model_is_not_modified_by_bf16_channels_last():
    m = tiny(3, seed=11)
    m.module.train()
    before = {k: v.clone() for k, v in m.module.state_dict().items()}
    engine.upscale(np.zeros((12, 12, 3), np.uint8), m, device="cpu", precision="bf16")
    for k, v in m.module.state_dict().items():
        assert torch.equal(v, before[k]) and v.is_contiguous()
    assert m.module.training  # its train/eval state is restored


def test_bf16_close_to_fp32(photo):
    img = photo[:48, :40].astype(np.float32) / 255
    m = tiny(3, seed=12)
    a = engine.upscale(img, m, precision="fp32", tile=0)
    b = engine.upscale(img, m, precision="bf16", tile=0)
    assert np.abs(a - b).max() < 0.05


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "arr,match",
    [
        (np.zeros((8, 8), bool), "boolean"),
        (np.zeros((8, 8), np.complex64), "complex"),
        (np.zeros((0, 8), np.uint8), "empty"),
        (np.zeros((1, 1), np.uint8), "1x1"),
        (np.zeros((8,), np.uint8), "at least 2 dimensions"),
        (np.array([[np.nan, 1.0], [0.5, 0.2]]), "NaN"),
        (np.array([[np.inf, 1.0], [0.5, 0.2]], np.float32), "Inf"),
        (np.array(["a", "b"]), "dtype"),
    ],
)
def test_bad_images_are_refused(arr, match):
    with pytest.raises(InputError, match=match):
        engine.upscale(arr, nearest())


def test_bad_arguments_are_refused():
    img = np.zeros((10, 10), np.uint8)
    with pytest.raises(InputError, match="spatial_axes"):
        engine.upscale(img, nearest(), spatial_axes=(0, 0))
    with pytest.raises(InputError, match="out of range"):
        engine.upscale(img, nearest(), spatial_axes=(0, 5))
    with pytest.raises(InputError, match="rgb=True"):
        engine.upscale(img, nearest(), rgb=True)
    with pytest.raises(InputError, match="fp16"):
        engine.upscale(img, nearest(), device="cpu", precision="fp16")
    with pytest.raises(InputError, match="tile"):
        engine.upscale(img, nearest(), tile=-1)
    with pytest.raises(InputError, match="overlap"):
        engine.upscale(img, nearest(), tile=16, overlap=12)
    with pytest.raises(InputError, match="model"):
        engine.upscale(img, 42)


def test_no_weights_installed_is_a_clear_error(isolated_registry):
    engine.clear_cache()
    with pytest.raises(RRIMError, match="no trained weights installed.*python -m napari_rrim_sr.training"):
        engine.upscale(np.zeros((8, 8), np.uint8))


def test_models_by_id_path_and_default(tiny_registry, tiny_weights_files):
    engine.clear_cache()
    img = np.random.default_rng(7).integers(0, 255, size=(12, 10), dtype=np.uint8)
    by_id = engine.upscale(img, "tiny-rrim-x4-gray", tile=0)
    by_path = engine.upscale(img, str(tiny_weights_files["tiny-rrim-x4-gray"]), tile=0)
    default = engine.upscale(img, tile=0)  # gray -> the 1-channel default
    np.testing.assert_array_equal(by_id, by_path)
    np.testing.assert_array_equal(by_id, default)
    up = engine.get_upscaler("tiny-rrim-x4-gray")
    assert up is engine.get_upscaler("tiny-rrim-x4-gray")  # cached
    assert up.model.sha256
    engine.clear_cache()
    assert up.module is None


# ------------------------------------------------------------------------- bicubic


def test_bicubic_matches_imresize_and_clips(photo):
    from napari_rrim_sr.engine.bicubic import imresize

    img = photo[:37, :29]
    out = engine.upscale_bicubic(img)
    assert out.dtype == np.uint8 and out.shape == (148, 116, 3)
    ref = imresize(np.moveaxis(img, -1, 0).astype(np.float64), 4.0)
    ref = np.moveaxis(np.clip(np.rint(ref), 0, 255), 0, -1)
    np.testing.assert_array_equal(out, ref)
    f = img[..., 0].astype(np.float32) / 255
    np.testing.assert_allclose(engine.upscale_bicubic(f), imresize(f, 4.0), atol=1e-6)


def test_bicubic_bands_are_exact():
    rng = np.random.default_rng(8)
    plane = rng.random((150, 20))  # taller than one band of rows
    from napari_rrim_sr.engine.bicubic import imresize

    np.testing.assert_allclose(engine.upscale_bicubic(plane, 3), imresize(plane, 3.0), atol=1e-12)
    np.testing.assert_allclose(engine.bicubic_rows(plane, 4, 100, 333), imresize(plane, 4.0)[100:333], atol=1e-12)


def test_default_overlap_shrinks_for_small_tiles_but_explicit_overlap_is_kept():
    assert engine.default_overlap(None) == engine.default_overlap(0) == engine.DEFAULT_OVERLAP
    assert engine.default_overlap(192) == engine.DEFAULT_OVERLAP
    assert engine.default_overlap(32) == 16 and engine.default_overlap(20) == 8
    img = np.random.default_rng(0).integers(0, 255, (70, 50), dtype=np.uint8)
    out = engine.upscale(img, nearest(), tile=32)  # default overlap capped at 16: runs
    assert np.array_equal(out, np.repeat(np.repeat(img, 4, 0), 4, 1))
    with pytest.raises(InputError, match="overlap"):
        engine.upscale(img, nearest(), tile=32, overlap=24)


# ------------------------------------------------------------------------- self-ensemble


def test_self_ensemble_is_the_mean_over_the_eight_symmetries():
    """The engine's x8 self-ensemble equals running the model on each rotation/flip of the input
    (numpy-transformed) and mapping the outputs back; non-square input exercises h/w swaps."""
    m = tiny(3, seed=5)
    rng = np.random.default_rng(5)
    x = rng.random((1, 3, 12, 20), dtype=np.float32)
    plain = engine.Upscaler(m, precision="fp32")
    ens = engine.Upscaler(m, precision="fp32", self_ensemble=True)
    want = np.zeros((1, 3, 48, 80), np.float32)
    for k in range(4):
        for flip in (False, True):
            t = np.rot90(x, k, axes=(2, 3))
            if flip:
                t = t[..., ::-1]
            y = plain._run(torch.from_numpy(np.ascontiguousarray(t)), "fp32").numpy()
            if flip:
                y = y[..., ::-1]
            want += np.rot90(y, -k, axes=(2, 3))
    got = ens._run(torch.from_numpy(x), "fp32").numpy()
    np.testing.assert_allclose(got, want / 8, atol=1e-5)
    # the ensemble is not a no-op for a model that is not rotation-invariant
    assert np.abs(got - plain._run(torch.from_numpy(x), "fp32").numpy()).max() > 1e-3


def test_self_ensemble_through_the_engine(photo):
    img = photo[:45, :70].astype(np.float32) / 255.0
    # an equivariant model is unchanged by the ensemble, bit for bit
    u8 = photo[:45, :70]
    want = rep(u8.transpose(2, 0, 1)).transpose(1, 2, 0)
    np.testing.assert_array_equal(engine.upscale(u8, nearest(3), self_ensemble=True), want)
    m = tiny(3, seed=6)
    up = engine.Upscaler(m, precision="fp32", self_ensemble=True)
    whole = up.upscale(img, tile=0)
    assert up.last_run["self_ensemble"] is True
    tiled = up.upscale(img, tile=32)  # non-square edge tiles: rotated tiles swap h and w
    assert whole.shape == (180, 280, 3)
    assert np.abs(whole - tiled).max() <= 1e-3
    # bf16 + channels_last path runs and stays close
    bf = engine.Upscaler(m, precision="bf16", self_ensemble=True).upscale(img, tile=0)
    assert np.abs(bf - whole).mean() < 2e-2


# --------------------------------------- issue 13: wide ints, finite in -> finite out (1, 6)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32, np.uint64])
def test_wide_integer_images_are_not_collapsed_to_a_constant(dtype):
    x = np.array([[1, 2], [3, 4]], dtype=dtype)  # the example (default "dtype" mode)
    out = engine.upscale(x, nearest(), precision="fp32")
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out, rep(x))
    # an 8-bit-like image stored wide (signed types: with negative values), and (unsigned) the
    # same at a large offset, where float32 arithmetic loses the small differences
    img = (np.add.outer(np.arange(16), np.arange(18)) * 7).astype(dtype)
    np.testing.assert_array_equal(engine.upscale(img, nearest(), precision="fp32"), rep(img))
    if np.dtype(dtype).kind == "i":
        img -= 100
    else:
        img += 2**31
    np.testing.assert_array_equal(engine.upscale(img, nearest(), precision="fp32"), rep(img))


def test_wide_int_output_stays_within_what_the_model_can_produce():
    img = np.array([[-5, 2], [3, 10]], dtype=np.int64)
    m = nearest()
    m.module.w.data.fill_(1.25)  # a model that overshoots the 0..1 range by a quarter
    out = engine.upscale(img, m, precision="fp32")
    assert out.min() == -5 and out.max() == 14  # y * 15 - 5 for y in 0..1.25, rounded
    np.testing.assert_array_equal(out, rep(np.rint((img + 5) * 1.25 - 5).astype(np.int64)))


def test_float16_with_range_normalisation_writes_no_inf():
    img = np.linspace(0, 65000, 6 * 7).reshape(6, 7).astype(np.float16)
    m = nearest()
    m.module.w.data.fill_(1.5)  # overshoot: y * span + lo beyond float16's maximum
    out = engine.upscale(img, m, precision="fp32", normalization="range")
    assert out.dtype == np.float16 and np.isfinite(out).all()
    assert out.max() == np.finfo(np.float16).max


def test_float64_of_1e300_is_upscaled_not_called_broken_weights():
    img = np.linspace(0, 1e300, 6 * 7).reshape(6, 7)
    out = engine.upscale(img, nearest(), precision="fp32", normalization="range")
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, rep(img), rtol=1e-6, atol=1e294)


def test_input_far_outside_the_normalisation_range_is_named():
    img = np.full((6, 7), 1e300)
    with pytest.raises(RRIMError, match="far outside the 0..1"):
        engine.upscale(img, nearest(), precision="fp32", normalization=(0.0, 1.0))


# --------------------------------------------------------------- issue 13: one options object


def test_options_object_equals_the_keyword_form_and_pickles():
    import pickle

    img = np.random.default_rng(3).random((20, 22)).astype(np.float32)
    m = tiny(1, seed=2)
    kw = dict(tile=16, overlap=4, blend="linear", normalization="range", precision="fp32")
    opts = engine.UpscaleOptions(**kw)
    assert pickle.loads(pickle.dumps(opts)) == opts
    want = engine.upscale(img, m, **kw)
    np.testing.assert_array_equal(engine.upscale(img, m, options=opts), want)
    np.testing.assert_array_equal(engine.upscale(img, options=opts.replace(model=m)), want)
    with engine.Upscaler(m, options=opts) as up:
        np.testing.assert_array_equal(up.upscale(img), want)  # the built-with options are the default
        np.testing.assert_array_equal(up.upscale(img, opts), want)
        with pytest.raises(TypeError, match="fixed when an Upscaler is built"):
            up.upscale(img, device="cpu")
    with pytest.raises(TypeError, match="unexpected keyword"):
        engine.upscale(img, m, tiles=16)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(tile=3), "at least 8"),
        (dict(tile=-1), "non-negative"),
        (dict(tile="big"), "non-negative"),
        (dict(overlap=-3), "overlap must be >= 0"),
        (dict(tile=16, overlap=12), "at most half"),
        (dict(threads=0), "threads must be >= 1"),
        (dict(device="tpu"), "device must be one of"),
        (dict(precision="fp8"), "precision must be one of"),
        (dict(blend="box"), "blend must be one of"),
        (dict(normalization="minmax"), "normalization must be one of"),
        (dict(normalization=(5, 1)), "lo < hi"),
        (dict(percentiles=(50, 10)), "percentiles"),
        (dict(bit_depth=0), "bit_depth"),
    ],
)
def test_options_are_validated_when_built_before_any_work(kw, match):
    with pytest.raises(InputError, match=match):
        engine.UpscaleOptions(**kw)


def test_validate_options_checks_device_tile_and_weights_up_front(tmp_path):
    assert engine.validate_options(engine.UpscaleOptions(device="cpu")) is None
    with pytest.raises(InputError, match="at most half the tile"):
        engine.validate_options(engine.UpscaleOptions(device="cpu", overlap=100))  # default CPU tile 192
    if not torch.cuda.is_available():
        with pytest.raises(RRIMError, match="cuda"):
            engine.validate_options(engine.UpscaleOptions(device="cuda"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not weights")
    with pytest.raises(RRIMError):
        engine.validate_options(engine.UpscaleOptions(model=str(bad), device="cpu"))
    up = engine.validate_options(engine.UpscaleOptions(model=nearest(), device="cpu"))
    assert isinstance(up, engine.Upscaler)


def test_device_listing_lives_in_the_core():
    from napari_rrim_sr.engine import devices

    names = devices.available_devices()
    assert names[:2] == ["auto", "cpu"]
    for n in names:
        engine.UpscaleOptions(device=n)  # every listed name is a valid option
    assert ("cuda" in names) == torch.cuda.is_available()
