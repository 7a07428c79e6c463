"""The pipeline with tiny weights: planning decisions, every output kind, cancel/resume, provenance.

Tiny random weights do not keep intensities, so results are compared with their input in
``test_defaults.py`` (shipped weights); here the decisions and the plumbing are tested.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_rrim_sr.cli.main import main
from napari_rrim_sr.errors import Cancelled, InputError
from napari_rrim_sr.pipeline import PROVENANCE_KEYS, Output, Source, UpscaleRequest, plan, run, run_iter

zarr = pytest.importorskip("zarr")
pytest.importorskip("ome_zarr")


def write_ome(path, a, axes="zyx"):
    from ome_zarr.writer import write_image

    g = zarr.open_group(str(path), mode="w")
    write_image(a, g, axes=axes, storage_options=dict(chunks=(1,) * (a.ndim - 2) + (16, 16)))
    return path


def stack_u16(seed=0, shape=(2, 20, 24), hi=4000):
    rng = np.random.default_rng(seed)
    return rng.integers(0, hi, size=shape).astype(np.uint16)


def test_ome_zarr_upscale_without_model_works(tmp_path, tiny_registry, capsys):
    """The README's first OME-Zarr example, no --model: "auto" is resolved, never passed to the
    loader (it failed with "unknown weights 'auto'")."""
    store = write_ome(tmp_path / "volume.ome.zarr", stack_u16())
    for _ in range(2):  # twice in a row, as users do (the second replaces the first)
        rc = main(["upscale", str(store), "-o", str(tmp_path / "out"), "--quiet", "--overwrite"])
        assert rc == 0, capsys.readouterr().err
    out = zarr.open_array(str(tmp_path / "out" / "volume.ome.zarr" / "0"), mode="r")
    assert out.shape == (2, 80, 96) and out.dtype == np.uint16


def test_auto_normalisation_is_the_whole_stacks_range_for_16_bit_and_dtype_for_8_bit(tiny_registry):
    import dask.array as da

    a = stack_u16(hi=200)
    a[1] += 300  # planes with different ranges: one range for all of them, never per plane
    p = plan(UpscaleRequest(Source(a)))
    n = p.parts[0].normalization
    assert (n.mode, n.lo, n.hi) == ("range", float(a.min()), float(a.max()))
    assert "over the whole data" in p.parts[0].norm_reason
    lazy = plan(UpscaleRequest(Source(da.from_array(a, chunks=(1, 10, 10))))).parts[0].normalization
    assert (lazy.lo, lazy.hi) == (n.lo, n.hi)
    cur = plan(UpscaleRequest(Source(a), slices="current", slice_index={0: 0}))
    assert cur.data.shape == (1, 20, 24) and cur.parts[0].normalization.hi == n.hi  # the stack's, not the slice's
    u8 = plan(UpscaleRequest(Source(np.full((16, 16), 20, np.uint8) + np.eye(16, dtype=np.uint8))))
    assert u8.parts[0].normalization.mode == "dtype"  # 8-bit: as the models were trained
    f = plan(UpscaleRequest(Source(np.linspace(0, 3, 256, dtype=np.float32).reshape(16, 16))))
    assert f.parts[0].normalization.mode == "range" and f.parts[0].normalization.hi == 3.0


def test_weights_that_ask_for_percentile_normalisation_get_it(tmp_path, tiny_registry):
    from napari_rrim_sr.registry.core import Registry
    from napari_rrim_sr.registry.loading import save_weights
    from napari_rrim_sr.training.finetune_data import NORMALIZATION

    hp = {"num_feat": 8, "num_block": 1, "scale": 4, "in_channels": 1, "out_channels": 1}
    w = save_weights(
        tmp_path / "ft.safetensors",
        Registry(discover=False).build("rrim", **hp),
        backbone="rrim",
        hparams=hp,
        normalization=NORMALIZATION,
    )
    p = plan(UpscaleRequest(Source(stack_u16()), model=w))
    n = p.parts[0].normalization
    assert n.mode == "percentile" and "metadata" in p.parts[0].norm_reason
    assert p.normalization_record()["mode"] == "percentile"
    u8 = plan(UpscaleRequest(Source(np.arange(256, dtype=np.uint8).reshape(16, 16)), model=w))
    assert u8.parts[0].normalization.mode == "dtype"  # its 8-bit rule: dtype


def test_precision_auto_is_fp32_for_more_than_8_bits(tiny_registry):
    assert plan(UpscaleRequest(Source(stack_u16(hi=4000)))).precision == "fp32"  # 12-bit
    assert plan(UpscaleRequest(Source(np.zeros((8, 8), np.float32) + np.eye(8, dtype=np.float32)))).precision == "fp32"
    assert plan(UpscaleRequest(Source(stack_u16(hi=200)))).precision == "auto"  # 200 levels
    assert plan(UpscaleRequest(Source(np.eye(16, dtype=np.uint8) * 255))).precision == "auto"
    assert plan(UpscaleRequest(Source(stack_u16()), precision="bf16")).precision == "bf16"  # the user's choice


def test_black_stays_black_and_the_models_offset_is_recorded(tmp_path, tiny_registry, capsys):
    import tifffile

    from napari_rrim_sr.io.images import read_image

    tifffile.imwrite(tmp_path / "zero.tif", np.zeros((24, 20), np.uint16))
    assert main(["upscale", str(tmp_path / "zero.tif"), "-o", str(tmp_path / "o"), "--quiet"]) == 0
    out, info = read_image(tmp_path / "o" / "zero.tif")
    assert out.max() == 0 and out.shape == (96, 80)
    z = info["provenance"]["zero_offset"]
    assert z["constant_input_kept"] is True and "max_0_1" in z and z["model"] == "tiny-rrim-x4-gray"
    res = run(plan(UpscaleRequest(Source(np.zeros((12, 12), np.float32)))))
    assert not res.data.any()


def test_bad_settings_fail_before_anything_is_written(tmp_path, tiny_registry):
    out = tmp_path / "never"
    for bad in ({"tile": 3}, {"precision": "fp8"}, {"percentiles": (50, 10)}, {"normalization": "magic"}):
        with pytest.raises(InputError):
            plan(UpscaleRequest(Source(stack_u16()), output=Output("store", path=out / "x.ome.zarr"), **bad))
    assert not out.exists()
    with pytest.raises(InputError, match="mask"):
        plan(UpscaleRequest(Source(np.zeros((8, 8), bool))))


def test_store_output_with_progress_cancel_and_resume(tmp_path, tiny_registry):
    a = stack_u16(shape=(3, 24, 24))
    dest = tmp_path / "res.ome.zarr"

    def request(**kw):
        return UpscaleRequest(Source(a, name="res"), output=Output("store", path=dest, chunk=32, **kw))

    stop = threading.Event()
    seen = []

    def progress(ev):
        seen.append(ev)
        if ev.tiles_done >= 2:
            stop.set()

    with pytest.raises(Cancelled):
        run(plan(request()), progress=progress, cancel=stop)
    assert dest.exists() and 2 <= seen[-1].tiles_done < seen[-1].tiles_total
    res = run(plan(request(resume=True)))
    assert res.summary["skipped"] >= 2 and res.summary["computed"] + res.summary["skipped"] == res.summary["chunks"]
    full = run(plan(UpscaleRequest(Source(a, name="res"))))
    np.testing.assert_array_equal(np.asarray(res.data), full.data)  # resumed store == in-memory run
    res2 = run(plan(request(overwrite=True)))  # replace
    np.testing.assert_array_equal(np.asarray(res2.data), full.data)
    assert res2.check["psnr"] == pytest.approx(full.check["psnr"], rel=1e-6)


def test_channel_axis_gives_each_channel_its_own_normalisation(tiny_registry):
    rng = np.random.default_rng(0)
    stack = np.stack([rng.integers(0, 4000, (12, 10)), np.full((12, 10), 7)]).astype(np.uint16)
    p = plan(UpscaleRequest(Source(stack), channel_axis=0))
    assert [(q.normalization.lo, q.normalization.hi) for q in p.parts][1] == (7.0, 7.0)
    assert p.parts[0].normalization.hi == stack[0].max()
    res = run(p)
    assert res.data.shape == (2, 48, 40) and (res.data[1] == 7).all()  # a constant channel stays constant
    last = run(plan(UpscaleRequest(Source(np.moveaxis(stack, 0, -1), rgb=False), channel_axis=-1)))
    np.testing.assert_array_equal(np.moveaxis(last.data, -1, 0), res.data)
    with pytest.raises(InputError, match="spatial"):
        plan(UpscaleRequest(Source(stack, spatial_axes=(1, 2)), channel_axis=1))


def test_the_same_provenance_schema_from_cli_tiff_ome_zarr_and_layer(tmp_path, tiny_registry):
    import tifffile

    from napari_rrim_sr.io.geometry import META_KEY
    from napari_rrim_sr.io.images import read_image

    a = stack_u16()
    tifffile.imwrite(tmp_path / "v.tif", a, metadata={"axes": "ZYX"})
    write_ome(tmp_path / "v.ome.zarr", a)
    assert main(["upscale", str(tmp_path / "v.tif"), "-o", str(tmp_path / "t"), "--quiet"]) == 0
    assert main(["upscale", str(tmp_path / "v.ome.zarr"), "-o", str(tmp_path / "z"), "--quiet"]) == 0
    tif = read_image(tmp_path / "t" / "v.tif")[1]["provenance"]
    zat = dict(zarr.open_group(str(tmp_path / "z" / "v.ome.zarr"), mode="r").attrs)[META_KEY]
    lay = run(plan(UpscaleRequest(Source(a, name="v")))).layer_kwargs("rrim")["metadata"][META_KEY]
    for rec in (tif, zat, lay):
        assert set(PROVENANCE_KEYS) <= set(rec), set(PROVENANCE_KEYS) - set(rec)
        assert rec["model_id"] == "tiny-rrim-x4-gray" and rec["precision"] in ("fp32", "auto")
        assert rec["normalization"]["mode"] == "range" and rec["normalization"]["hi"] == float(a.max())
        assert rec["check"]["psnr"] is not None and rec["zero_offset"] is not None
    assert {"chunks", "scheduler", "settings"} <= set(zat)  # only path-specific fields on top


def test_run_iter_yields_progress_and_closing_it_cancels(tiny_registry):
    gen = run_iter(plan(UpscaleRequest(Source(stack_u16(shape=(2, 64, 64))), tile=32)))
    first, second = next(gen), next(gen)
    assert first.tiles_total >= 4 and second.tiles_done <= 1
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)
