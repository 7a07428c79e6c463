"""upscale_dask: lazy, chunk-wise, equal to the in-memory engine, and runs on dask.distributed."""

import numpy as np
import pytest
import torch

da = pytest.importorskip("dask.array")

from napari_rrim_sr.engine import api as engine  # noqa: E402
from napari_rrim_sr.registry.core import Registry  # noqa: E402
from napari_rrim_sr.registry.loading import LoadedModel  # noqa: E402


def tiny(channels=1, seed=0):
    torch.manual_seed(seed)
    hp = dict(num_feat=8, num_block=1, in_channels=channels, out_channels=channels, scale=4)
    return LoadedModel.from_module(Registry(discover=False).build("rrim", **hp), "rrim", hp)


def smooth_stack(shape, seed=0):
    """Smooth random data (like real images, unlike white noise) in 0..1."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.random(shape), sigma=[0] * (len(shape) - 2) + [2, 2])
    return ((x - x.min()) / (x.max() - x.min())).astype(np.float32)


def test_lazy_and_equal_to_in_memory():
    img = smooth_stack((2, 70, 61))
    m = tiny(1, seed=1)
    d = da.from_array(img, chunks=(1, 36, 32))
    lazy = engine.upscale_dask(d, m, precision="fp32")
    assert isinstance(lazy, da.Array)
    assert lazy.shape == (2, 280, 244) and lazy.dtype == np.float32
    assert lazy.chunks[1] == (144, 136) and lazy.chunks[2] == (128, 116)
    got = lazy.compute(scheduler="synchronous")
    want = engine.upscale(img, m, precision="fp32", tile=0)
    assert np.abs(got - want).max() <= 1e-3  # chunk seams behave like tile seams


def test_rgb_uint8_with_split_colour_axis_and_global_range():
    rng = np.random.default_rng(2)
    img = (smooth_stack((40, 50, 3), seed=2) * 200 + 20).astype(np.uint8)
    img[0, 0] = rng.integers(0, 255, 3)
    m = tiny(3, seed=3)
    d = da.from_array(img, chunks=(20, 25, 1))  # colour axis split: must be merged
    lazy = engine.upscale_dask(d, m, precision="fp32", normalization="range")
    got = lazy.compute(scheduler="threads")
    want = engine.upscale(img, m, precision="fp32", normalization="range", tile=0)
    assert got.dtype == np.uint8 and got.shape == (160, 200, 3)
    # one chunk-wide normalisation: any difference is a seam effect of at most 1 grey level
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_small_chunks_are_merged():
    img = smooth_stack((50, 40))
    d = da.from_array(img, chunks=(6, 6))  # smaller than the overlap the neighbours need
    lazy = engine.upscale_dask(d, tiny(1), overlap=8, precision="fp32")
    assert min(lazy.chunks[0]) >= 16 * 4 and min(lazy.chunks[1]) >= 16 * 4
    assert sum(lazy.chunks[0]) == 200 and sum(lazy.chunks[1]) == 160


def test_distributed_local_cluster_matches_in_memory():
    distributed = pytest.importorskip("distributed")
    img = smooth_stack((2, 48, 44), seed=4)
    m = tiny(1, seed=5)
    want = engine.upscale(img, m, precision="fp32", tile=0)
    d = da.from_array(img, chunks=(1, 24, 44))
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None, silence_logs=40
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        lazy = engine.upscale_dask(d, m, precision="fp32")
        got = client.compute(lazy).result(timeout=240)
        workers = client.run(lambda: len(engine._WORKER_UPSCALERS))
    assert np.abs(got - want).max() <= 1e-3
    assert sum(workers.values()) >= 1  # the model was rebuilt in worker processes


def test_self_ensemble_reaches_the_chunks():
    img = smooth_stack((40, 36))
    m = tiny(1, seed=4)
    lazy = engine.upscale_dask(da.from_array(img, chunks=(20, 36)), m, precision="fp32", self_ensemble=True)
    got = lazy.compute(scheduler="synchronous")
    want = engine.upscale(img, m, precision="fp32", tile=0, self_ensemble=True)
    plain = engine.upscale(img, m, precision="fp32", tile=0)
    assert np.abs(got - want).max() <= 1e-3
    assert np.abs(got - plain).max() > 1e-3


# ------------------------------------------ issue 13: small arrays, bad overlap (defect 7)


def test_an_image_smaller_than_the_overlap_works_as_in_memory():
    img = smooth_stack((5, 7), seed=6)
    m = tiny(1, seed=6)
    for chunks in ((5, 7), (3, 4)):
        got = engine.upscale_dask(da.from_array(img, chunks=chunks), m, precision="fp32").compute(
            scheduler="synchronous"
        )
        want = engine.upscale(img, m, precision="fp32")
        assert got.shape == (20, 28)
        np.testing.assert_array_equal(got, want)


def test_a_stack_with_one_short_spatial_axis_matches_in_memory():
    img = smooth_stack((3, 6, 60), seed=7)
    m = tiny(1, seed=7)
    d = da.from_array(img, chunks=(1, 6, 30))  # Y (6 rows) shorter than the 24-px overlap, X split
    got = engine.upscale_dask(d, m, precision="fp32").compute(scheduler="synchronous")
    want = engine.upscale(img, m, precision="fp32", tile=0)
    assert got.shape == (3, 24, 240)
    assert np.abs(got - want).max() <= 1e-3
    d = da.from_array(img.transpose(0, 2, 1).copy(), chunks=(2, 20, 6))  # the short axis last
    got = engine.upscale_dask(d, m, precision="fp32").compute(scheduler="synchronous")
    want = engine.upscale(img.transpose(0, 2, 1).copy(), m, precision="fp32", tile=0)
    assert np.abs(got - want).max() <= 1e-3


def test_bad_overlap_and_depth_are_clear_errors():
    from napari_rrim_sr.errors import InputError

    d = da.from_array(smooth_stack((20, 20)))
    with pytest.raises(InputError, match="overlap must be >= 0, got -3"):
        engine.upscale_dask(d, tiny(1), overlap=-3)
    with pytest.raises(InputError, match="depth must be >= 0, got -1"):
        engine.upscale_dask(d, tiny(1), depth=-1)
    with pytest.raises(InputError, match="depth must be a non-negative integer"):
        engine.upscale_dask(d, tiny(1), depth="x")


def test_upscale_block_is_a_reusable_per_chunk_function():
    import pickle

    from napari_rrim_sr.engine.normalize import compute_normalization

    img = smooth_stack((30, 26), seed=8)
    m = tiny(1, seed=8)
    opts = engine.UpscaleOptions(
        model=engine.ModelRef(m), precision="fp32", device="cpu", normalization=compute_normalization(img, "range")
    )
    opts = pickle.loads(pickle.dumps(opts))  # as a worker receives it
    got = engine.upscale_block(img, opts)
    np.testing.assert_array_equal(got, engine.upscale(img, m, precision="fp32", normalization="range"))
    trimmed = engine.upscale_block(img, opts, trim={0: (2, 1), 1: (0, 3)})
    np.testing.assert_array_equal(trimmed, got[8:-4, :-12])
