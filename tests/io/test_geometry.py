"""Qt-free layer logic: names, world alignment, appearance, provenance, the upscale job."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from napari_rrim_sr import pipeline as P
from napari_rrim_sr.errors import InputError
from napari_rrim_sr.io import geometry as L
from napari_rrim_sr.quality import layer_metrics as LM
from napari_rrim_sr.registry.interpolation import interpolation_pair, lerp_state_dicts

# -- names -----------------------------------------------------------------------------------


def test_result_names_round_trip():
    assert L.result_name("cells", "rrim") == "cells RRIM x4"
    assert L.result_name("cells", "bicubic") == "cells bicubic x4"
    assert L.result_name("a b", "rrim", 2) == "a b RRIM x2"
    assert L.parse_result_name("my cells RRIM x4") == ("my cells", "rrim", 4)
    assert L.parse_result_name("cells") is None
    assert L.sibling_name("cells RRIM x4", "bicubic") == "cells bicubic x4"
    assert L.sibling_name("cells", "bicubic") is None
    # a second run's layers, renamed by napari (issue 24 #1)
    assert L.parse_result_name("cells RRIM x4 [1]") == ("cells", "rrim", 4)
    assert L.sibling_name("cells RRIM x4 [2]", "bicubic") == "cells bicubic x4 [2]"
    with pytest.raises(ValueError):
        L.result_name("x", "nearest")


# -- geometry --------------------------------------------------------------------------------


def test_upscaled_geometry_formula():
    scale, translate = L.upscaled_geometry((2.0, 0.5, 3.0), (1.0, 10.0, -4.0), 4)
    assert scale == (2.0, 0.125, 0.75)  # non-spatial axis keeps its scale
    # t - s/2 + s/8 on spatial axes, unchanged elsewhere
    assert translate == pytest.approx((1.0, 10.0 - 0.25 + 0.0625, -4.0 - 1.5 + 0.375))
    scale, translate = L.upscaled_geometry((1.0, 1.0), (0.0, 0.0), 2)
    assert translate == pytest.approx((-0.25, -0.25))


def test_sub_pixels_tile_the_source_pixel():
    """The f x f result pixels under source pixel i exactly cover its world interval."""
    s, t, f = 1.7, -3.2, 4
    (ns,), (nt,) = (v[1:] for v in L.upscaled_geometry((1.0, s), (0.0, t), f))
    for i in (0, 5, 11):
        lo_src, hi_src = t + (i - 0.5) * s, t + (i + 0.5) * s
        subs = [(nt + (j - 0.5) * ns, nt + (j + 0.5) * ns) for j in range(f * i, f * i + f)]
        assert subs[0][0] == pytest.approx(lo_src)
        assert subs[-1][1] == pytest.approx(hi_src)
        for (a0, a1), (b0, b1) in zip(subs, subs[1:]):
            assert a1 == pytest.approx(b0)


@pytest.mark.parametrize("shape,pos", [((15, 17), (6, 9)), ((16, 16), (0, 15)), ((9, 30), (4, 2))])
def test_single_bright_pixel_maps_to_centre_of_its_block(shape, pos):
    """Engine bicubic of a one-pixel image: the response's centroid, mapped to world space with
    the result geometry, is the source pixel's world centre (and so is the 4x4 block centre)."""
    from napari_rrim_sr.engine.api import upscale_bicubic

    scale, translate = (0.7, 1.3), (5.0, -2.0)
    img = np.zeros(shape, dtype=np.float32)
    img[pos] = 1.0
    up = upscale_bicubic(img, 4)
    assert up.shape == (shape[0] * 4, shape[1] * 4)
    nscale, ntrans = L.upscaled_geometry(scale, translate, 4)
    src_world = L.world_centre(scale, translate, pos)
    block_centre = np.array(pos) * 4 + 1.5
    np.testing.assert_allclose(L.world_centre(nscale, ntrans, block_centre), src_world, atol=1e-12)
    if 0 < pos[0] < shape[0] - 1 and 0 < pos[1] < shape[1] - 1:  # away from mirrored borders
        yy, xx = np.indices(up.shape)
        w = up.astype(np.float64)
        centroid = np.array([(w * yy).sum(), (w * xx).sum()]) / w.sum()
        np.testing.assert_allclose(L.world_centre(nscale, ntrans, centroid), src_world, atol=1e-9)
    # the brightest result pixels are the 2x2 at the block's centre
    top = np.argwhere(up >= up.max() - 1e-6)
    np.testing.assert_array_equal(np.sort(top[:, 0]) // 4, [pos[0]] * len(top))


def test_alignment_with_rotation_and_shear_matches_napari():
    napari_layers = pytest.importorskip("napari.layers")
    src = napari_layers.Image(np.zeros((6, 7)), scale=(0.5, 2.0), translate=(3.0, 1.0), rotate=25.0, shear=[0.3])
    info = L.source_info(src)
    out = np.zeros((24, 28))
    kw = L.result_layer_kwargs(info, out, kind="rrim")
    res = napari_layers.Image(out, scale=kw["scale"], translate=kw["translate"], rotate=kw["rotate"], shear=kw["shear"])
    for pos in [(0, 0), (2, 5), (5, 6)]:
        centre = np.array(pos) * 4 + 1.5
        np.testing.assert_allclose(res.data_to_world(centre), src.data_to_world(pos), atol=1e-9)
        np.testing.assert_allclose(
            L.world_centre(info["scale"], info["translate"], pos, info["rotate"], info["shear"]),
            src.data_to_world(pos),
            atol=1e-9,
        )


def test_current_slice_geometry_and_index():
    idx = L.current_slice_index((5, 3, 10, 12), 4, (3.6, -2, 4.0, 4.0))
    assert idx == {0: 4, 1: 0}  # rounded and clamped, spatial axes skipped
    assert L.slice_key(4, idx) == (slice(4, 5), slice(0, 1), slice(None), slice(None))
    scale, translate = L.upscaled_geometry((2.0, 1.0, 1.0), (10.0, 0.0, 0.0), 4, slice_index={0: 3})
    assert scale == (2.0, 0.25, 0.25)
    assert translate[0] == pytest.approx(16.0)  # placed at its slice: t + 3 * s
    with pytest.raises(ValueError):
        L.upscaled_geometry((1.0, 1.0), (0.0, 0.0), 4, slice_index={1: 0})


# -- layer kwargs ----------------------------------------------------------------------------


def _info(**kw):
    base = dict(
        name="img",
        ndim=2,
        rgb=False,
        shape=(4, 5),
        dtype=np.dtype(np.uint16),
        scale=(1.0, 1.0),
        translate=(0.0, 0.0),
        contrast_limits=(10.0, 900.0),
        colormap="viridis",
        blending="additive",
        gamma=0.8,
        opacity=0.5,
    )
    base.update(kw)
    return base


def test_result_layer_kwargs_copy_appearance_and_record():
    data = np.zeros((16, 20), np.uint16)
    kw = L.result_layer_kwargs(_info(), data, kind="bicubic", record={"kind": "bicubic"})
    assert kw["name"] == "img bicubic x4"
    assert kw["contrast_limits"] == (10.0, 900.0)
    assert kw["colormap"] == "viridis" and kw["blending"] == "additive"
    assert kw["gamma"] == 0.8 and kw["opacity"] == 0.5
    assert kw["metadata"] == {L.META_KEY: {"kind": "bicubic"}}
    # another dtype: contrast limits are not meaningful any more
    kw = L.result_layer_kwargs(_info(), data.astype(np.float32), kind="rrim")
    assert "contrast_limits" not in kw
    # RGB: no colormap; wrong dimensionality refused
    kw = L.result_layer_kwargs(_info(rgb=True), np.zeros((16, 20, 3), np.uint16), kind="rrim")
    assert kw["rgb"] and "colormap" not in kw
    with pytest.raises(InputError):
        L.result_layer_kwargs(_info(), np.zeros((2, 16, 20), np.uint16), kind="rrim")


# -- normalisation and memory ----------------------------------------------------------------


def test_memory_check_and_estimate():
    from napari_rrim_sr.engine import memory as M

    assert M.output_nbytes((3, 100, 100), np.uint16) == 3 * 100 * 100 * 16 * 2
    M.check_fits_in_memory(1000, "x", suggestion="s", available=10_000)
    with pytest.raises(InputError, match="tick 'Current slice only'"):
        M.check_fits_in_memory(10_000, "Upscaling the stack", available=10_000, suggestion="tick 'Current slice only'")
    assert M.available_memory() is None or M.available_memory() > 0


# -- network interpolation -------------------------------------------------------------------


def test_interpolation_pair_and_state_dicts():
    torch = pytest.importorskip("torch")
    ids = ["rrim-x4-rgb-psnr", "rrim-x4-rgb-gan", "rrim-x4-gray", "other-psnr"]
    assert interpolation_pair("rrim-x4-rgb-gan", ids) == ("rrim-x4-rgb-psnr", "rrim-x4-rgb-gan")
    assert interpolation_pair("rrim-x4-rgb-psnr", ids) == ("rrim-x4-rgb-psnr", "rrim-x4-rgb-gan")
    assert interpolation_pair("other-psnr", ids) is None  # no partner
    assert interpolation_pair("rrim-x4-gray", ids) is None
    a = {"w": torch.zeros(2), "n": torch.tensor([3])}
    b = {"w": torch.ones(2), "n": torch.tensor([3])}
    mid = lerp_state_dicts(a, b, 0.25)
    assert torch.allclose(mid["w"], torch.full((2,), 0.25)) and int(mid["n"]) == 3
    with pytest.raises(InputError):
        lerp_state_dicts(a, {"w": torch.ones(3), "n": torch.tensor([3])}, 0.5)
    with pytest.raises(ValueError):
        lerp_state_dicts(a, b, 1.5)


# -- metrics helpers -------------------------------------------------------------------------


def test_metrics_table_and_data_range():
    res = {
        "model": {"rmse": 2.0, "psnr": 30.0, "ssim": 0.9, "fsim": 0.95},
        "bicubic": {"rmse": 3.0, "psnr": 28.5, "ssim": 0.85, "fsim": 0.9},
        "convention": "c",
    }
    t = LM.metrics_table(res)
    assert t["index"] == ["RMSE", "PSNR (dB)", "SSIM", "FSIM"]
    assert t["columns"] == ["RRIM", "bicubic", "RRIM - bicubic"]
    assert t["data"][1] == [30.0, 28.5, 1.5]
    assert LM.metrics_table({"model": {"psnr": 1.0}})["columns"] == ["RRIM"]
    ref = np.array([[0, 4095]], np.uint16)
    assert LM.metrics_data_range(np.uint16, ref) == 4095  # 12-bit data in uint16
    assert LM.metrics_data_range(np.uint8, np.array([[0, 10]], np.uint8)) == 255
    assert LM.metrics_data_range(np.uint16, np.array([[0, 60000]], np.uint16)) == 65535


def test_compare_arrays_averages_planes():
    from napari_rrim_sr.quality.metrics import compare

    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, size=(2, 24, 24)).astype(np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-9, 10, size=hr.shape), 0, 255).astype(np.uint8)
    got = LM.compare_arrays(sr, hr, rgb=False, data_range=255)
    per = [compare(sr[i], hr[i], data_range=255) for i in range(2)]
    assert got["psnr"] == pytest.approx(np.mean([p["psnr"] for p in per]))
    assert "mean over 2 planes" in got["convention"]
    with pytest.raises(InputError, match="differ in shape"):
        LM.compare_arrays(sr[:, :20], hr, rgb=False, data_range=255)
    err = LM.error_map(np.full((2, 2, 3), 5, np.uint8), np.zeros((2, 2, 3), np.uint8), rgb=True)
    assert err.shape == (2, 2) and float(err.max()) == 5.0


# -- the upscale job -------------------------------------------------------------------------


def _req(src: dict, data, **kw):
    """A pipeline request for ``data`` described by the layer info ``src``."""
    return P.UpscaleRequest(P.Source(data, name=src.get("name", "image"), rgb=bool(src.get("rgb")), layer=src), **kw)


def _drain(gen):
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        return stop.value, events


def test_run_upscale_reads_only_and_records_provenance(tiny_registry):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 4096, size=(2, 20, 24), dtype=np.uint16)
    before = data.copy()
    data.flags.writeable = False  # any write into the source would raise
    src = _info(
        name="stack",
        ndim=3,
        shape=data.shape,
        scale=(3.0, 1.0, 1.0),
        translate=(0.0, 0.0, 0.0),
        contrast_limits=(0, 4095),
    )
    res, events = _drain(
        P.run_iter(P.plan(_req(src, data, model="tiny-rrim-x4-gray", tile=32, bicubic=True, metrics=True)))
    )
    np.testing.assert_array_equal(data, before)
    assert res.data.shape == res.bicubic.shape == (2, 80, 96) and res.data.dtype == np.uint16
    assert any(e.message == "self-check metrics" for e in events)
    assert any(e.tiles_total > 0 and e.tiles_done == e.tiles_total for e in events)
    assert res.provenance["normalization"]["mode"] == "range"  # 12-bit values in uint16
    kw = res.layer_kwargs("rrim")
    rec = kw["metadata"][L.META_KEY]
    entry = tiny_registry.find_weights("tiny-rrim-x4-gray")
    assert rec["model_id"] == entry.id and rec["weights_sha256"] == entry.sha256
    assert rec["tile"] == 32 and rec["overlap"] == 16 and rec["elapsed_s"] > 0
    assert set(rec["metrics"]) == {"model", "bicubic", "convention"}
    assert kw["scale"] == (3.0, 0.25, 0.25)
    bkw = res.layer_kwargs("bicubic")
    assert bkw["metadata"][L.META_KEY]["model_id"] is None
    # the widget allows 16-px tiles: the engine's default overlap shrinks to fit (8 px)
    small, _ = _drain(P.run_iter(P.plan(_req(src, data, model="tiny-rrim-x4-gray", tile=16))))
    assert small.overlap == 8 and small.data.shape == (2, 80, 96)


def test_run_upscale_on_dask_equals_numpy(tiny_registry):
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(2)
    data = rng.integers(0, 256, size=(2, 16, 18), dtype=np.uint8)
    src = _info(
        name="s", ndim=3, shape=data.shape, dtype=np.dtype(np.uint8), scale=(1.0, 1.0, 1.0), translate=(0.0, 0.0, 0.0)
    )
    res_np = P.run(P.plan(_req(src, data, model="tiny-rrim-x4-gray", bicubic=True)))
    lazy = da.from_array(data, chunks=(1, 16, 18))
    res_da = P.run(P.plan(_req(src, lazy, model="tiny-rrim-x4-gray", bicubic=True)))
    np.testing.assert_array_equal(res_da.data, res_np.data)
    np.testing.assert_array_equal(res_da.bicubic, res_np.bicubic)


def test_closing_a_run_stops_between_tiles_and_releases_memory(tiny_registry, monkeypatch):
    from napari_rrim_sr.engine import devices

    released = []
    real = devices.release_memory
    monkeypatch.setattr(devices, "release_memory", lambda d=None: (released.append(d), real(d)))
    data = np.eye(64, dtype=np.uint8)  # not constant: a constant image is not run through the model
    gen = P.run_iter(
        P.plan(_req(_info(shape=data.shape, dtype=np.dtype(np.uint8)), data, model="tiny-rrim-x4-gray", tile=32))
    )
    first = next(gen)
    second = next(gen)
    assert first.tiles_total > 2 and second.tiles_done <= 1
    gen.close()
    assert released, "closing the run must release device memory"
    with pytest.raises(StopIteration):
        next(gen)


def test_no_weights_message_names_the_user_folder(isolated_registry):
    from napari_rrim_sr.registry.core import user_weights_dir

    msg = P.no_weights_message()
    assert "No trained weights" in msg and str(user_weights_dir()) in msg
    with pytest.raises(InputError, match="No trained weights"):
        P.load_model_for(None, channels=1)


def test_layers_module_imports_no_qt():
    import subprocess

    code = (
        "import sys, napari_rrim_sr.io.geometry, napari_rrim_sr.pipeline, napari_rrim_sr.io.bundle; "
        "bad = [m for m in sys.modules if m.startswith(('qtpy', 'PyQt5', 'PySide', 'napari.', 'magicgui'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("rgb", [False, True])
def test_self_check_follows_the_evaluate_protocol(tiny_registry, rgb):
    from napari_rrim_sr.quality.evaluate import evaluate
    from napari_rrim_sr.registry.loading import load_model

    rng = np.random.default_rng(5)
    plane = rng.integers(0, 256, size=(42, 45, 3) if rgb else (42, 45), dtype=np.uint8)
    model = load_model("tiny-rrim-x4-rgb" if rgb else "tiny-rrim-x4-gray")
    from napari_rrim_sr.pipeline.selfcheck import self_check_images

    res, imgs = self_check_images(plane, model, rgb=rgb, normalization="dtype", precision="fp32")
    ev = evaluate(plane, model, data_range=255, normalization="dtype", precision="fp32")
    for which in ("model", "bicubic"):
        for key in ("rmse", "psnr", "ssim", "fsim"):
            assert res[which][key] == pytest.approx(ev[which][key], rel=1e-6), (which, key)
    assert imgs["hr"].shape[:2] == (40, 44) and imgs["lr"].shape[:2] == (10, 11)
    assert imgs["model"].shape == imgs["bicubic"].shape == imgs["hr"].shape
    assert ("Y channel" in res["convention"]) is rgb  # the SR convention for RGB


def test_preselected_weights_prefers_what_the_layer_asks_for(tiny_registry):
    """layers.preselected_weights: the metadata's suggestion when available, else the channel
    default when available, else None."""
    from napari_rrim_sr.io import geometry as L

    ids = [e.id for e in tiny_registry.weights()]
    ask = {L.SUGGESTED_WEIGHTS_KEY: "tiny-rrim-x4-rgb-gan"}
    assert L.preselected_weights(ask, 3, ids, tiny_registry) == "tiny-rrim-x4-rgb-gan"
    assert L.preselected_weights({}, 3, ids, tiny_registry) == tiny_registry.default_weights(3).id
    assert L.preselected_weights(None, 1, ids, tiny_registry) == "tiny-rrim-x4-gray"
    assert L.preselected_weights(ask, 1, ["tiny-rrim-x4-gray"], tiny_registry) == "tiny-rrim-x4-gray"
    assert L.preselected_weights({}, 1, [], tiny_registry) is None


# -- planning a layer's slice without a viewer (the widget's controller fills the same request) --


class _FakeLayer:
    """What the pipeline reads of a napari Image layer (the GUI tests use real ones)."""

    def __init__(self, data, name="img", rgb=False, multiscale=False):
        self.data, self.name, self.rgb, self.multiscale = data, name, rgb, multiscale
        self.ndim = data.ndim - (1 if rgb else 0)
        self.scale = (1.0,) * self.ndim
        self.translate = (0.0,) * self.ndim
        self.metadata = {}

    def world_to_data(self, point):
        return tuple(point)


def test_plan_selects_the_slice_pairs_weights_and_refuses_bad_settings(tiny_registry, monkeypatch):
    stack = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16)
    gan = "tiny-rrim-x4-rgb-gan"
    one = P.plan(
        P.UpscaleRequest(P.Source(stack, name="img"), model="tiny-rrim-x4-gray", slices="current", slice_index={0: 2}),
        registry=tiny_registry,
    )
    assert one.slice_index == {0: 2} and one.data.shape == (1, 16, 16)  # kept as a stack of one
    np.testing.assert_array_equal(np.asarray(one.data), stack[2:3])
    assert interpolation_pair(gan, [w.id for w in tiny_registry.weights()]) == ("tiny-rrim-x4-rgb-psnr", gan)
    whole = P.plan(P.UpscaleRequest(P.Source(stack), model="tiny-rrim-x4-gray"), registry=tiny_registry)
    assert whole.slice_index in ({}, None) and whole.data.shape == stack.shape
    with pytest.raises(InputError, match="cannot be upscaled"):
        P.plan(P.UpscaleRequest(P.Source(np.zeros((8, 8), bool)), model="tiny-rrim-x4-gray"), registry=tiny_registry)
    with pytest.raises(InputError, match="percentiles"):
        P.plan(
            P.UpscaleRequest(
                P.Source(stack), model="tiny-rrim-x4-gray", normalization="percentile", percentiles=(50, 10)
            ),
            registry=tiny_registry,
        )
    monkeypatch.setattr("napari_rrim_sr.engine.memory.available_memory", lambda: 1000)
    with pytest.raises(InputError, match="upscale one slice"):
        P.plan(P.UpscaleRequest(P.Source(stack), model="tiny-rrim-x4-gray"), registry=tiny_registry)


def test_run_job_result_describes_layers_like_the_widget(tiny_registry):
    """The demo and scripts run the same pipeline as the widget: the result's layer_kwargs carry
    geometry and provenance."""
    img = (np.random.default_rng(0).random((12, 10)) * 4000).astype(np.uint16)
    res = P.run(
        P.plan(_req(L.source_info(_FakeLayer(img)), img, model="tiny-rrim-x4-gray", device="cpu", bicubic=True))
    )
    assert res.data.shape == (48, 40) and res.data.dtype == np.uint16 and res.bicubic.shape == (48, 40)
    kw = res.layer_kwargs("rrim", extra={"untrained": False})
    rec = kw["metadata"][L.META_KEY]
    assert kw["name"] == "img RRIM x4" and kw["scale"] == (0.25, 0.25)
    assert rec["model_id"] == "tiny-rrim-x4-gray" and rec["untrained"] is False and rec["slices"] == "all"
    assert res.layer_kwargs("bicubic")["metadata"][L.META_KEY]["kind"] == "bicubic"


def test_one_interpolation_for_the_slider_and_the_export(tiny_registry):
    """The widget's PSNR<->GAN slider and `training interpolate` (which made the shipped GAN
    file) blend with the same function, so they give the same tensors."""
    torch = pytest.importorskip("torch")
    from napari_rrim_sr.training.export import lerp_weights

    pair = ("tiny-rrim-x4-rgb-psnr", "tiny-rrim-x4-rgb-gan")
    slider = P.load_model_for(None, channels=3, pair=pair, alpha=0.3, registry=tiny_registry).module.state_dict()
    exported = lerp_weights(*pair, 0.3).state_dict
    assert set(slider) == set(exported)
    for k, v in exported.items():
        assert torch.equal(slider[k], v), k


def test_user_message_and_device_helpers():
    from napari_rrim_sr.engine import devices
    from napari_rrim_sr.errors import RRIMError, user_message

    assert user_message(RRIMError("plain text")) == "plain text"
    assert "Current slice only" in user_message(MemoryError(), stack=True)
    assert "Current slice only" not in user_message(MemoryError())
    assert "GPU ran out of memory" in user_message(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert user_message(KeyError("x")).startswith("Upscaling failed: KeyError")
    assert devices.device_choices()[:2] == ["auto", "cpu"]
    devices.sync("cpu")  # a no-op, not an error


def test_representative_plane_is_the_middle_one():
    st = np.arange(5 * 3 * 4 * 4).reshape(5, 3, 4, 4)
    np.testing.assert_array_equal(L.representative_plane(st, rgb=False), st[2, 1])
    np.testing.assert_array_equal(L.representative_plane(st[0, 0], rgb=False), st[0, 0])
    rgbs = np.zeros((3, 4, 4, 3))
    assert L.representative_plane(rgbs, rgb=True).shape == (4, 4, 3)
