"""The upscale and metrics widgets in a real napari viewer (run under xvfb-run).

Models are the tiny randomly initialised RRIMs of ``conftest.tiny_registry``, contributed
through the weights hook; runs are on small images so the whole module takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from napari_rrim_sr.io import geometry as L

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


@pytest.fixture
def notes(monkeypatch):
    """Record the notifications the widgets show (instead of napari's notification manager)."""
    from napari_rrim_sr._napari import _common, menu

    got = {"error": [], "info": []}
    monkeypatch.setattr(_common, "show_error", lambda m: got["error"].append(m))
    monkeypatch.setattr(_common, "show_info", lambda m: got["info"].append(m))
    monkeypatch.setattr(menu, "show_info", lambda m: got["info"].append(m))
    return got


def _docked(viewer) -> dict:
    """Dock name -> inner widget, through napari's public mapping where it has one (0.6+)."""
    win = viewer.window
    if hasattr(type(win), "dock_widgets"):
        return dict(win.dock_widgets)
    return {name: dock.widget() for name, dock in win._dock_widgets.items()}


def _upscale_widget(viewer):
    from napari_rrim_sr._napari.widgets import UpscaleWidget

    w = UpscaleWidget(viewer)
    viewer.window.add_dock_widget(w, name="Upscale (RRIM x4)")
    return w


def _run(qtbot, widget, **settings):
    for key, value in settings.items():
        getattr(widget, key).value = value
    worker = widget.run()
    assert worker is not None, widget.status.value
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    return worker


def _shown(widget) -> bool:
    """Whether a magicgui widget is set visible (the viewer window itself is not shown)."""
    return not widget.native.isHidden()


def _gray(shape=(40, 48), seed=0, hi=60000):
    rng = np.random.default_rng(seed)
    return rng.integers(0, hi, size=shape, dtype=np.uint16)


def test_upscale_2d_gray_uint16(viewer, qtbot, notes, tiny_registry):
    data = _gray()
    before = data.copy()
    src = viewer.add_image(
        data,
        name="cells",
        scale=(0.5, 2.0),
        translate=(10.0, -3.0),
        colormap="magma",
        contrast_limits=(100, 50000),
        blending="additive",
    )
    w = _upscale_widget(viewer)
    assert w.source.value is src
    assert w.model.value == "tiny-rrim-x4-gray"  # default for 1-channel data
    _run(qtbot, w, tile=16, add_bicubic=True)
    assert not notes["error"], notes["error"]
    names = [lay.name for lay in viewer.layers]
    assert names == ["cells", "cells bicubic x4", "cells RRIM x4"]
    sr, bic = viewer.layers["cells RRIM x4"], viewer.layers["cells bicubic x4"]
    for lay in (sr, bic):
        assert lay.data.dtype == np.uint16
        assert lay.data.shape == (160, 192)
        np.testing.assert_allclose(lay.scale, (0.125, 0.5))
        # t - s/2 + s/8 per spatial axis
        np.testing.assert_allclose(lay.translate, (10 - 0.25 + 0.0625, -3 - 1.0 + 0.25))
        assert lay.colormap.name == "magma"
        assert tuple(lay.contrast_limits) == (100, 50000)
        assert lay.blending == "additive"
    rec = sr.metadata[L.META_KEY]
    entry = tiny_registry.find_weights("tiny-rrim-x4-gray")
    assert rec["model_id"] == "tiny-rrim-x4-gray"
    assert rec["weights_sha256"] == entry.sha256
    assert rec["tile"] == 16 and rec["precision"] in ("fp32", "bf16")
    assert rec["elapsed_s"] > 0 and rec["device"] == "cpu"
    assert bic.metadata[L.META_KEY]["kind"] == "bicubic"
    # the source layer is untouched
    assert src.data is data
    np.testing.assert_array_equal(src.data, before)
    assert viewer.layers.selection.active is sr
    assert "Added 'cells RRIM x4'" in w.status.value


def test_upscale_rgb_uint8(viewer, qtbot, notes):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(24, 28, 3), dtype=np.uint8)
    before = data.copy()
    viewer.add_image(data, name="photo", rgb=True)
    w = _upscale_widget(viewer)
    assert w.model.value == "tiny-rrim-x4-rgb"  # default for RGB data
    viewer.add_image(_gray((8, 8)), name="gray")
    w.source.value = viewer.layers["gray"]
    assert w.model.value == "tiny-rrim-x4-gray"  # defaults follow the source...
    tile = viewer.add_image(
        data.copy(), name="tile", rgb=True, metadata={L.SUGGESTED_WEIGHTS_KEY: "tiny-rrim-x4-rgb-psnr"}
    )
    w.source.value = tile
    assert w.model.value == "tiny-rrim-x4-rgb-psnr"  # ...and the weights a layer asks for
    viewer.layers.remove(tile)
    w.source.value = viewer.layers["gray"]
    w.model.value = "tiny-rrim-x4-rgb-gan"
    w.source.value = viewer.layers["photo"]
    assert w.model.value == "tiny-rrim-x4-rgb-gan"  # ...until the user picks a model
    w.model.value = "tiny-rrim-x4-rgb"
    viewer.layers.remove("gray")
    _run(qtbot, w, add_bicubic=False)
    assert not notes["error"], notes["error"]
    assert [lay.name for lay in viewer.layers] == ["photo", "photo RRIM x4"]
    sr = viewer.layers["photo RRIM x4"]
    assert sr.rgb and sr.data.dtype == np.uint8 and sr.data.shape == (96, 112, 3)
    np.testing.assert_allclose(sr.scale, (0.25, 0.25))
    np.testing.assert_allclose(sr.translate, (-0.375, -0.375))
    np.testing.assert_array_equal(viewer.layers["photo"].data, before)


def test_upscale_3d_stack_current_slice_then_full(viewer, qtbot, notes):
    data = _gray((3, 20, 24), seed=2)
    before = data.copy()
    viewer.add_image(data, name="stack", scale=(2.0, 0.5, 0.5), translate=(1.0, 0.0, 0.0))
    viewer.dims.set_point(0, 1.0 + 2.0 * 2)  # world z of slice 2
    w = _upscale_widget(viewer)
    assert _shown(w.current_slice)
    _run(qtbot, w, current_slice=True, add_bicubic=True, tile=0)
    assert not notes["error"], notes["error"]
    one = viewer.layers["stack RRIM x4"]
    assert one.data.shape == (1, 80, 96)
    np.testing.assert_allclose(one.scale, (2.0, 0.125, 0.125))
    np.testing.assert_allclose(one.translate, (1.0 + 2 * 2.0, -0.1875, -0.1875))
    assert one.metadata[L.META_KEY]["slice_index"] == {"0": 2}
    slice_result = one.data.copy()
    viewer.layers.remove(one)
    viewer.layers.remove("stack bicubic x4")

    _run(qtbot, w, current_slice=False, add_bicubic=True, tile=0)
    full = viewer.layers["stack RRIM x4"]
    bic = viewer.layers["stack bicubic x4"]
    assert full.data.shape == bic.data.shape == (3, 80, 96)
    np.testing.assert_allclose(full.scale, (2.0, 0.125, 0.125))
    np.testing.assert_allclose(full.translate, (1.0, -0.1875, -0.1875))
    assert full.metadata[L.META_KEY]["slices"] == "all"
    # the current-slice run is the same computation as that plane of the full run
    # (data using the uint16 range -> dtype normalisation in both)
    np.testing.assert_allclose(full.data[2].astype(int), slice_result[0].astype(int), atol=1)
    np.testing.assert_array_equal(viewer.layers["stack"].data, before)


def test_cancel_stops_within_a_tile_and_adds_no_layer(viewer, qtbot, notes):
    viewer.add_image(_gray((96, 96), seed=3), name="big")
    w = _upscale_widget(viewer)
    w.tile.value = 32  # several tiles
    w.add_bicubic.value = True
    seen = []

    def on_progress(p):
        seen.append(p)
        if p.tiles_done >= 1 and not w._cancelled:
            seen.append("cancel")
            w.cancel()

    worker = w.run()
    worker.yielded.connect(on_progress)
    with qtbot.waitSignal(worker.aborted, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert [lay.name for lay in viewer.layers] == ["big"]
    assert "Cancelled" in w.status.value
    i = seen.index("cancel")
    tiles_total = max(p.tiles_total for p in seen if p != "cancel")  # the first event is "starting"
    assert tiles_total > 4
    after = [p for p in seen[i + 1 :] if p != "cancel"]
    # the worker checks for cancellation between tiles: at most the tile in flight finishes
    assert len(after) <= 1, after
    last = (after or [seen[i - 1]])[-1]
    assert last.tiles_done < tiles_total
    assert w.last_result is None
    assert w.run_button.enabled and not w.cancel_button.enabled


def test_layers_align_in_world_coordinates(viewer, qtbot, notes):
    """A single bright source pixel lands on the centre of its 4x4 block in world space."""
    data = np.zeros((15, 17), dtype=np.uint16)
    data[6, 9] = 60000
    src = viewer.add_image(data, name="dot", scale=(0.7, 1.3), translate=(5.0, -2.0))
    w = _upscale_widget(viewer)
    _run(qtbot, w, add_bicubic=True, normalization="dtype")
    bic = viewer.layers["dot bicubic x4"]
    sr = viewer.layers["dot RRIM x4"]
    np.testing.assert_allclose(sr.scale, bic.scale)
    np.testing.assert_allclose(sr.translate, bic.translate)
    weights = bic.data.astype(float)
    yy, xx = np.indices(weights.shape)
    centroid_data = np.array([(weights * yy).sum(), (weights * xx).sum()]) / weights.sum()
    np.testing.assert_allclose(bic.data_to_world(centroid_data), src.data_to_world((6, 9)), atol=1e-6)
    # the 4x4 block of sub-pixels under the source pixel is centred on it
    block_centre = np.array([6 * 4 + 1.5, 9 * 4 + 1.5])
    np.testing.assert_allclose(sr.data_to_world(block_centre), src.data_to_world((6, 9)), atol=1e-9)


def test_no_weights_is_a_plain_message(make_napari_viewer, isolated_registry, qtbot, notes):
    viewer = make_napari_viewer()
    viewer.add_image(_gray((16, 16)), name="img")
    w = _upscale_widget(viewer)
    assert w.model.value is None
    assert "no trained weights" in w.model_info.value.lower()
    assert not w.run_button.enabled
    assert w.run() is None
    assert len(notes["error"]) == 1 and "no trained weights" in notes["error"][0].lower()
    assert "Traceback" not in notes["error"][0]
    assert len(viewer.layers) == 1


def test_too_large_for_memory_suggests_current_slice(viewer, qtbot, notes, monkeypatch):
    viewer.add_image(_gray((4, 16, 16)), name="stack")
    w = _upscale_widget(viewer)
    w.current_slice.value = False
    monkeypatch.setattr("napari_rrim_sr.engine.memory.available_memory", lambda: 100_000)
    assert w.run() is None
    assert len(notes["error"]) == 1
    assert "Current slice only" in notes["error"][0] and "memory" in notes["error"][0]
    assert len(viewer.layers) == 1


def test_errors_in_the_worker_are_notifications(viewer, qtbot, notes, monkeypatch):
    viewer.add_image(_gray((16, 16)), name="img")
    w = _upscale_widget(viewer)
    from napari_rrim_sr.engine import api as engine

    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine.Upscaler, "upscale_iter", boom)
    released = []
    from napari_rrim_sr.engine import devices

    real_release = devices.release_memory
    monkeypatch.setattr(devices, "release_memory", lambda d=None: (released.append(d), real_release(d)))
    _run(qtbot, w)
    assert len(notes["error"]) == 1
    assert "ran out of memory" in notes["error"][0] and "smaller tile" in notes["error"][0]
    assert released, "device memory must be released after an error"
    assert len(viewer.layers) == 1
    assert w.run_button.enabled


def test_interpolation_slider_between_psnr_and_gan(viewer, qtbot, notes, tiny_registry):
    rng = np.random.default_rng(4)
    viewer.add_image(rng.integers(0, 256, size=(16, 20, 3), dtype=np.uint8), name="rgb", rgb=True)
    w = _upscale_widget(viewer)
    w.model.value = "tiny-rrim-x4-rgb"
    assert not _shown(w.alpha)
    w.model.value = "tiny-rrim-x4-rgb-gan"
    assert _shown(w.alpha) and w.alpha.value == 1.0
    w.model.value = "tiny-rrim-x4-rgb-psnr"
    assert _shown(w.alpha) and w.alpha.value == 0.0
    _run(qtbot, w, alpha=0.5, add_bicubic=False)
    rec = viewer.layers["rgb RRIM x4"].metadata[L.META_KEY]
    assert rec["interpolation_alpha"] == 0.5
    assert [d["id"] for d in rec["interpolated_from"]] == ["tiny-rrim-x4-rgb-psnr", "tiny-rrim-x4-rgb-gan"]
    # alpha=0.5 differs from both end points
    out_mid = viewer.layers["rgb RRIM x4"].data.astype(int)
    viewer.layers.remove("rgb RRIM x4")
    _run(qtbot, w, alpha=0.0)
    out_psnr = viewer.layers["rgb RRIM x4"].data.astype(int)
    assert viewer.layers["rgb RRIM x4"].metadata[L.META_KEY]["model_id"] == "tiny-rrim-x4-rgb-psnr"
    assert np.abs(out_mid - out_psnr).max() > 0


def test_menu_command_docks_widget_preset_to_active_layer(viewer, qtbot, notes):
    from napari._app_model import get_app_model

    a = viewer.add_image(_gray((8, 8)), name="a")
    b = viewer.add_image(_gray((8, 8), seed=5), name="b")
    viewer.layers.selection.active = a
    app = get_app_model()
    items = [getattr(i, "command", None) for i in app.menus.get_menu("napari/layers/transform")]
    assert "napari-rrim-sr.upscale" in [c.id for c in items if c is not None]
    widget = app.commands.execute_command("napari-rrim-sr.upscale").result()
    assert widget.source.value is a
    assert any("Upscale (RRIM x4)" in name for name in _docked(viewer))
    viewer.layers.selection.active = b
    again = app.commands.execute_command("napari-rrim-sr.upscale").result()
    assert again is widget and widget.source.value is b  # the docked widget is reused
    # a labels layer is not upscaled: a plain message, the source stays an image layer
    labels = viewer.add_labels(np.zeros((8, 8), np.uint8), name="masks")
    viewer.layers.selection.active = labels
    app.commands.execute_command("napari-rrim-sr.upscale").result()
    assert any("Labels layer" in m and "image layers" in m for m in notes["info"]), notes
    assert widget.source.value is b
    assert labels not in widget.source.choices


def test_percentile_normalisation_fields(viewer, qtbot, notes):
    viewer.add_image(_gray((20, 20), seed=9), name="img")
    w = _upscale_widget(viewer)
    assert not _shown(w.p_low) and not _shown(w.p_high)
    assert not _shown(w.normalization)  # an advanced setting (compact widget, issue 19 #5)
    w.advanced.value = True
    assert _shown(w.normalization) and not _shown(w.p_low)
    w.normalization.value = "percentile"
    assert _shown(w.p_low) and _shown(w.p_high)
    w.p_low.value, w.p_high.value = 1.0, 99.0
    _run(qtbot, w, add_bicubic=False)
    assert not notes["error"], notes["error"]
    norm = viewer.layers["img RRIM x4"].metadata[L.META_KEY]["normalization"]
    assert norm["mode"] == "percentile" and norm["percentiles"] == [1.0, 99.0]
    w.p_low.value, w.p_high.value = 60.0, 40.0  # impossible: refused with a message
    assert w.run() is None
    assert "percentiles" in notes["error"][-1]


def test_metrics_widget_compare_and_error_maps(viewer, qtbot, notes):
    from napari_rrim_sr._napari.widgets import MetricsWidget
    from napari_rrim_sr.quality.metrics import compare

    rng = np.random.default_rng(6)
    hr = rng.integers(0, 256, size=(40, 44), dtype=np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-5, 6, size=hr.shape), 0, 255).astype(np.uint8)
    bic = np.clip(hr.astype(int) + rng.integers(-20, 21, size=hr.shape), 0, 255).astype(np.uint8)
    viewer.add_image(hr, name="hr")
    viewer.add_image(bic, name="x bicubic x4")
    viewer.add_image(sr, name="x RRIM x4")
    w = MetricsWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.sr_layer.value = viewer.layers["x RRIM x4"]
    assert w.bicubic_layer.value is viewer.layers["x bicubic x4"]  # sibling preselected
    w.reference.value = viewer.layers["hr"]
    w.error_maps.value = True
    w.border.value = 4
    worker = w.compute()
    assert worker is not None
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert not notes["error"], notes["error"]
    value = w.table.value
    assert list(value["index"]) == ["RMSE", "PSNR (dB)", "SSIM", "FSIM"]
    assert list(value["columns"]) == ["RRIM", "bicubic", "RRIM - bicubic"]
    expect = compare(sr, hr, data_range=255, border=4)
    expect_b = compare(bic, hr, data_range=255, border=4)
    got = w.last_result
    assert got["model"]["psnr"] == pytest.approx(expect["psnr"])
    assert got["bicubic"]["ssim"] == pytest.approx(expect_b["ssim"])
    assert float(value["data"][1][0]) == pytest.approx(expect["psnr"], abs=1e-3)
    assert float(value["data"][1][2]) == pytest.approx(expect["psnr"] - expect_b["psnr"], abs=2e-3)
    assert got["model"]["psnr"] > got["bicubic"]["psnr"]
    assert "4 px border" in w.convention.value
    maps = [lay for lay in viewer.layers if lay.name.startswith("|")]
    assert len(maps) == 2
    np.testing.assert_allclose(maps[0].data, np.abs(sr.astype(np.float32) - hr))


def test_metrics_widget_self_check_and_shape_mismatch(viewer, qtbot, notes):
    from napari_rrim_sr._napari.widgets import MetricsWidget

    rng = np.random.default_rng(7)
    viewer.add_image(rng.integers(0, 256, size=(32, 36), dtype=np.uint8), name="src")
    viewer.add_image(rng.integers(0, 256, size=(8, 9), dtype=np.uint8), name="small")
    w = MetricsWidget(viewer)
    viewer.window.add_dock_widget(w)
    # shape mismatch: a plain message, nothing computed
    w.sr_layer.value = viewer.layers["small"]
    w.reference.value = viewer.layers["src"]
    assert w.compute() is None
    assert "differ in shape" in notes["error"][-1]
    # self-check
    w.mode.value = "self"
    assert _shown(w.source) and not _shown(w.sr_layer)
    w.source.value = viewer.layers["src"]
    w.model.value = "tiny-rrim-x4-gray"
    w.error_maps.value = True
    w.compute()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert len(notes["error"]) == 1
    res = w.last_result
    assert set(res) == {"model", "bicubic", "convention"}
    assert np.isfinite(res["bicubic"]["psnr"]) and 0 < res["model"]["fsim"] <= 1
    assert len(w.table.value["index"]) == 4
    assert "self-check" in w.convention.value
    maps = [lay for lay in viewer.layers if "self-check" in lay.name]
    assert len(maps) == 2 and maps[0].data.shape == (32, 36)


def test_upscale_widget_compute_metrics_fills_metrics_widget(viewer, qtbot, notes):
    rng = np.random.default_rng(8)
    viewer.add_image(rng.integers(0, 256, size=(24, 24), dtype=np.uint8), name="img")
    w = _upscale_widget(viewer)
    _run(qtbot, w, compute_metrics=True, add_bicubic=False)
    assert not notes["error"], notes["error"]
    rec = viewer.layers["img RRIM x4"].metadata[L.META_KEY]
    assert set(rec["metrics"]) == {"model", "bicubic", "convention"}
    docks = _docked(viewer)
    name = next(n for n in docks if "Super-resolution metrics" in n)
    metrics_widget = docks[name]
    assert "Self-check PSNR" in w.status.value
    assert name and metrics_widget is not None


def test_self_ensemble_checkbox_is_run_and_recorded(viewer, qtbot, notes):
    from napari_rrim_sr.engine import api as engine
    from napari_rrim_sr.registry.loading import load_model

    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    viewer.add_image(data, name="photo", rgb=True)
    w = _upscale_widget(viewer)
    _run(qtbot, w, add_bicubic=False, self_ensemble=True, precision="fp32")
    assert not notes["error"], notes["error"]
    sr = viewer.layers["photo RRIM x4"]
    assert sr.metadata["napari_rrim_sr"]["self_ensemble"] is True
    want = engine.Upscaler(load_model("tiny-rrim-x4-rgb"), precision="fp32", self_ensemble=True).upscale(data)
    np.testing.assert_array_equal(sr.data, want)


# -- issue 19: real data, the automatic choice, bands, channels, fitting, stale state ----------

SHARED = Path(__file__).resolve().parents[3] / "shared"  # ../shared beside the repository
DATA = SHARED / "data"
SPECKLES = DATA / "microscopy/cellprofiler_examples/ExampleSpeckles/images/1-162hrh2ax2.tif"
NAIP_DIR = DATA / "satellite/opengeos_naip"
IXM = DATA / "microscopy/bioimage_notebooks/IXMtest_A02_s9.tif"
KODAK = DATA / "val/Kodak24"
SPAN_X2 = SHARED / "conformance/span_x2_rgb_ch32.pth"
CHOICE_IDS = ("rrim-x4-gray", "rrim-x4-gray-real", "rrim-x4-rgb-psnr", "rrim-x4-rgb-real")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available (../shared/data)")
    return path


@pytest.fixture
def choice_viewer(make_napari_viewer, tiny_registry, tmp_path, monkeypatch):
    """A viewer whose registry holds tiny weights under the ids the automatic choice picks
    between (clean / robust, gray / RGB), installed in the isolated user weights folder."""
    import torch

    from napari_rrim_sr.registry import core as R
    from napari_rrim_sr.registry.loading import save_weights

    folder = Path(R.user_weights_dir(create=True))
    for i, wid in enumerate(CHOICE_IDS):
        ch = 3 if "rgb" in wid else 1
        torch.manual_seed(99 + i)
        hp = {"num_feat": 8, "num_block": 1, "scale": 4, "in_channels": ch, "out_channels": ch}
        save_weights(
            folder / f"{wid}.safetensors",
            tiny_registry.build("rrim", **hp),
            backbone="rrim",
            hparams=hp,
            name=wid,
            description=f"tiny test weights standing in for {wid}",
        )
    tiny_registry.weights(refresh=True)
    return make_napari_viewer()


def _speckles_crop() -> np.ndarray:
    import tifffile

    a = tifffile.imread(_need(SPECKLES))
    assert a.dtype == np.uint16 and a.max() < 4096  # 12-bit values in uint16
    return a[372:628, 472:728].copy()


def _clean_lr() -> np.ndarray:
    from PIL import Image as PILImage

    from napari_rrim_sr.quality.evaluate import make_lr

    first = min(_need(KODAK).iterdir())
    _, lr = make_lr(np.asarray(PILImage.open(first).convert("L")), 4)  # bicubic x1/4: clean LR
    return lr


def test_model_chosen_from_the_data_with_reason_and_provenance(choice_viewer, qtbot, notes):
    """#1: raw 12-bit microscopy -> the robust model, a clean bicubic LR -> the clean one; the
    reason is shown, a user's pick sticks, the choice is in the provenance, and the metrics
    self-check uses the upscale widget's model."""
    from napari_rrim_sr._napari.metrics_widget import MetricsWidget

    viewer = choice_viewer
    raw = viewer.add_image(_speckles_crop(), name="speckles")
    w = _upscale_widget(viewer)
    assert w.source.value is raw
    assert w.model.value == "rrim-x4-gray-real"
    # a plain sentence; the numbers in its tooltip (issue 24)
    assert "raw camera data" in w.choice_info.value and "(rrim-x4-gray-real)" in w.choice_info.value
    assert "σ" not in w.choice_info.value and "noise σ" in (w.choice_info.tooltip or "")
    clean = viewer.add_image(_clean_lr(), name="kodak lr")
    w.source.value = clean
    assert w.model.value == "rrim-x4-gray", w.choice_info.value
    assert "Looks clean" in w.choice_info.value and "(rrim-x4-gray)" in w.choice_info.value
    # the metrics self-check follows the upscale widget for the same layer, and says so
    m = MetricsWidget(viewer)
    viewer.window.add_dock_widget(m)
    m.mode.value = "self"
    m.source.value = clean
    assert m.model.value == "rrim-x4-gray" and "Upscale widget" in m.model_note.value
    m.source.value = raw  # not the upscale widget's layer: its own choice from the data, stated
    assert m.model.value == "rrim-x4-gray-real" and "Chosen from the data" in m.model_note.value
    # override: the user's pick survives a source change
    w.source.value = raw
    w.model.value = "rrim-x4-gray"
    w.source.value = clean
    w.source.value = raw
    assert w.model.value == "rrim-x4-gray" and "Chosen by you" in w.choice_info.value
    w.model.value = "rrim-x4-gray-real"
    w._model_touched = False  # back to automatic, then run: the reason is recorded
    w.source.value = clean
    w.source.value = raw
    _run(qtbot, w, add_bicubic=False, current_slice=True)
    assert not notes["error"], notes["error"]
    rec = viewer.layers["speckles RRIM x4"].metadata[L.META_KEY]
    assert rec["model_choice"]["weights"] == "rrim-x4-gray-real"
    assert "raw camera data" in rec["model_choice"]["reason"] and rec["model_choice"]["robust"] is True
    assert "noise σ" in rec["model_choice"]["details"]
    assert rec["model_id"] == "rrim-x4-gray-real"


def _naip_tile() -> np.ndarray:
    import tifffile

    path = min(_need(NAIP_DIR).glob("*.tif"))
    a = tifffile.imread(path)
    assert a.shape[-1] == 4
    return a[300:332, 400:436].copy()


def test_fourth_band_of_naip_is_a_band_not_alpha(choice_viewer, qtbot, notes):
    """#2: napari opens a 4-band NAIP tile as RGBA; the widget sees that the 4th band is not a
    mask, upscales all four bands (gray model, as the CLI does) and keeps NIR a band."""
    viewer = choice_viewer
    tile = _naip_tile()
    viewer.add_image(tile, name="naip", rgb=True)
    w = _upscale_widget(viewer)
    assert _shown(w.fourth_band) and w.fourth_band.value == "band"
    assert "not alpha" in w.band_info.value
    assert w.model.value in ("rrim-x4-gray", "rrim-x4-gray-real")  # bands go through the gray model
    _run(qtbot, w, add_bicubic=False)
    assert not notes["error"], notes["error"]
    names = [lay.name for lay in w.last_layers]
    assert names == [f"naip [{b}] RRIM x4" for b in ("R", "G", "B", "band 4")]
    nir = viewer.layers["naip [band 4] RRIM x4"]
    assert not nir.rgb and nir.data.shape == (128, 144)
    assert [viewer.layers[n].colormap.name for n in names[:3]] == ["red", "green", "blue"]
    # NIR is upscaled by the model, on its own: not bicubic, not opacity
    from napari_rrim_sr.engine import api as engine

    want = engine.upscale(tile[..., 3], nir.metadata[L.META_KEY]["model_id"])
    np.testing.assert_allclose(nir.data.astype(int), want.astype(int), atol=1)
    # the user can say it is alpha after all: one RGBA result, as before
    w.fourth_band.value = "alpha"
    _run(qtbot, w, add_bicubic=False)
    assert [lay.name for lay in w.last_layers] == ["naip RRIM x4"] and w.last_layers[0].rgb


def _ixm_stack() -> np.ndarray:
    import tifffile

    a = tifffile.imread(_need(IXM))
    assert a.shape[0] == 3
    return a[:, 100:132, 200:236].copy()


def test_channel_stack_becomes_channel_layers_and_batch(choice_viewer, qtbot, notes):
    """#4: a (3, Y, X) multichannel layer: all channels upscaled, returned as channel layers with
    colormaps and additive blending; several selected layers in one run."""
    viewer = choice_viewer
    stack = _ixm_stack()
    lay = viewer.add_image(stack, name="ixm", metadata={"napari_rrim_sr_axes": "CYX"})
    w = _upscale_widget(viewer)
    assert _shown(w.channels) and w.channels.value  # from the layer's metadata
    assert not _shown(w.current_slice)
    _run(qtbot, w, add_bicubic=True)
    assert not notes["error"], notes["error"]
    rr = [f"ixm [C{i}] RRIM x4" for i in range(3)]
    for i, name in enumerate(rr):
        out = viewer.layers[name]
        assert out.data.shape == (128, 144) and out.blending == "additive"
        assert f"ixm [C{i}] bicubic x4" in viewer.layers
    assert len({viewer.layers[n].colormap.name for n in rr}) == 3
    # each channel was normalised and upscaled on its own: equals the run of that channel alone
    from napari_rrim_sr.engine import api as engine

    mid = viewer.layers[rr[1]]
    want = engine.upscale(stack[1], mid.metadata[L.META_KEY]["model_id"], normalization="range")
    np.testing.assert_allclose(mid.data.astype(int), want.astype(int), atol=1)
    # a batch of two selected layers runs at once
    for old in [x for x in viewer.layers if x is not lay]:
        viewer.layers.remove(old)
    second = viewer.add_image(stack[0], name="single")
    viewer.layers.selection = {lay, second}
    assert _shown(w.batch) and "(2)" in w.batch.text
    w.source.value = lay
    _run(qtbot, w, batch=True, add_bicubic=False)
    assert not notes["error"], notes["error"]
    assert [x.name for x in w.last_layers] == rr + ["single RRIM x4"]


def test_both_widgets_fit_a_1600x1000_screen(make_napari_viewer, tiny_registry, qtbot):
    """#5: docked together on a 1600x1000 screen, both widgets scroll and Run/Compute are
    reachable."""
    from qtpy.QtWidgets import QApplication, QScrollArea

    from napari_rrim_sr._napari.metrics_widget import MetricsWidget

    viewer = make_napari_viewer(show=True)
    win = viewer.window._qt_window
    win.resize(1600, 1000)
    viewer.add_image(_gray((32, 32)), name="img")
    up = _upscale_widget(viewer)
    met = MetricsWidget(viewer)
    viewer.window.add_dock_widget(met, name="Super-resolution metrics")
    up.advanced.value = True  # everything shown: the tallest the upscale widget gets
    QApplication.processEvents()
    assert win.height() <= 1000
    screen_bottom = win.mapToGlobal(win.rect().bottomLeft()).y()
    for widget, button in ((up, up.run_button), (met, met.compute_button)):
        scroll = widget.native  # what napari docks
        assert isinstance(scroll, QScrollArea), "not scrollable"
        assert scroll.parent() is not None and scroll.isVisible()
        scroll.ensureWidgetVisible(button.native)
        QApplication.processEvents()
        assert not button.native.visibleRegion().isEmpty(), f"{button.text} is not visible"
        y = button.native.mapToGlobal(button.native.rect().bottomLeft()).y()
        assert y <= screen_bottom, (button.text, y, screen_bottom)
        if widget is up:  # Cancel sits next to Run
            assert not up.cancel_button.native.visibleRegion().isEmpty()


def _all_controls(container):
    from magicgui.widgets import Container, Label, ProgressBar, Table
    from magicgui.widgets.bases import ButtonWidget, ValueWidget

    for wdg in container:
        if isinstance(wdg, Container):
            yield from _all_controls(wdg)
        elif isinstance(wdg, (ButtonWidget, ValueWidget, Table, ProgressBar)) and not isinstance(wdg, Label):
            yield wdg


def test_every_control_has_a_tooltip(viewer):
    from napari_rrim_sr._napari.metrics_widget import MetricsWidget

    viewer.add_image(_gray((16, 16)), name="img")
    for widget in (_upscale_widget(viewer), MetricsWidget(viewer)):
        missing = [
            f"{type(c).__name__} {getattr(c, 'label', '') or getattr(c, 'text', '')}"
            for c in _all_controls(widget)
            if not (c.tooltip or "").strip()
        ]
        assert not missing, missing


def test_metrics_state_is_never_stale(viewer, qtbot, notes):
    """#6: different default layers, a table cleared on a later error and when its layers go,
    self-check with progress and Cancel."""
    from napari_rrim_sr._napari.metrics_widget import MetricsWidget

    rng = np.random.default_rng(4)
    hr = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
    viewer.add_image(hr, name="hr")
    viewer.add_image(np.clip(hr.astype(int) + 3, 0, 255).astype(np.uint8), name="other")
    viewer.add_image(rng.integers(0, 256, size=(8, 8), dtype=np.uint8), name="small")
    m = MetricsWidget(viewer)
    viewer.window.add_dock_widget(m)
    assert m.sr_layer.value is not m.reference.value
    m.sr_layer.value, m.reference.value = viewer.layers["other"], viewer.layers["hr"]
    m.compute()
    qtbot.waitUntil(lambda: not m.busy, timeout=TIMEOUT_MS)
    assert len(m.table.value["index"]) >= 1 and m.last_result is not None
    m.sr_layer.value = viewer.layers["small"]  # shape mismatch: an error, and no stale numbers
    assert m.compute() is None
    assert not m.table.value["index"] and m.last_result is None and "⚠" in m.title.value
    m.sr_layer.value = viewer.layers["other"]
    m.compute()
    qtbot.waitUntil(lambda: not m.busy, timeout=TIMEOUT_MS)
    assert m.table.value["index"]
    viewer.layers.remove("other")
    assert not m.table.value["index"] and "deleted" in m.title.value
    # self-check: progress counted from 1 in the title, a Cancel button that works
    m.mode.value = "self"
    m.source.value = viewer.layers["hr"]
    m.model.value = "tiny-rrim-x4-gray"
    titles = []
    worker = m.compute()
    assert m.cancel_button.enabled and _shown(m.progress_bar)
    worker.yielded.connect(lambda *_: titles.append(m.title.value))
    qtbot.waitUntil(lambda: not m.busy, timeout=TIMEOUT_MS)
    assert any("tile 1/" in t for t in titles), titles
    assert not any("tile 0/" in t for t in titles), titles
    assert m.table.value["index"]
    worker = m.compute()
    m.cancel()
    qtbot.waitUntil(lambda: not m.busy, timeout=TIMEOUT_MS)
    assert "Cancelled" in m.title.value and not m.table.value["index"]


def test_progress_counter_starts_at_one_and_never_goes_back(viewer, qtbot, notes, monkeypatch):
    import re

    from napari_rrim_sr._napari import _common

    monkeypatch.setattr(_common, "eta_text", lambda elapsed, frac: " [eta]")

    viewer.add_image(_gray((5, 64, 64), seed=5), name="stack")
    w = _upscale_widget(viewer)
    w.tile.value = 32
    texts = []
    w.current_slice.value = False
    w.add_bicubic.value = False
    worker = w.run()
    worker.yielded.connect(lambda *_: texts.append(w.status.value))
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert not notes["error"], notes["error"]
    pairs = [tuple(map(int, m.groups())) for t in texts if (m := re.search(r"tile (\d+)/\d+, slice (\d+)/5", t))]
    assert pairs and pairs[0] == (1, 1), texts[:3]
    tiles, slices = [p[0] for p in pairs], [p[1] for p in pairs]
    assert tiles == sorted(tiles) and slices == sorted(slices), texts
    assert slices[-1] == 5 and 0 not in tiles + slices
    # a time estimate from the measured pace (issue 14: slow models on a CPU): shown with the counter
    assert any(t.endswith(" [eta]…") for t in texts), texts[-3:]


def test_time_left_comes_from_the_measured_pace():
    from napari_rrim_sr._napari._common import eta_text

    assert eta_text(10.0, 0.25) == ", ~30 s left"
    assert eta_text(120.0, 0.5) == ", ~2 min left"
    assert eta_text(0.1, 0.5) == "" and eta_text(5.0, 0.01) == "" and eta_text(5.0, 1.0) == ""


def _slow_run(w, qtbot, on_first):
    """Start a run of many tiles and call ``on_first()`` at its first tile."""
    w.tile.value = 16
    w.add_bicubic.value = False
    fired = []

    def hook(p):
        if getattr(p, "tiles_done", 0) >= 1 and not fired:
            fired.append(True)
            on_first()

    worker = w.run()
    assert worker is not None, w.status.value
    worker.yielded.connect(hook)
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    return fired


def test_closing_the_dock_mid_run_cancels(viewer, qtbot, notes):
    viewer.add_image(_gray((128, 128), seed=6), name="big")
    w = _upscale_widget(viewer)
    fired = _slow_run(w, qtbot, lambda: viewer.window.remove_dock_widget(w.native))
    assert fired and w._cancelled
    assert [lay.name for lay in viewer.layers] == ["big"]


def test_deleting_the_source_mid_run_adds_nothing(viewer, qtbot, notes):
    viewer.add_image(_gray((128, 128), seed=7), name="big")
    keep = viewer.add_image(_gray((24, 24), seed=8), name="keep")
    w = _upscale_widget(viewer)
    w.source.value = viewer.layers["big"]
    fired = _slow_run(w, qtbot, lambda: viewer.layers.remove("big"))
    assert fired
    assert [lay.name for lay in viewer.layers] == ["keep"]
    assert "deleted" in w.status.value
    # results of ours are never offered as sources
    w.source.value = keep
    _run(qtbot, w, add_bicubic=True, tile=0)
    offered = [lay.name for lay in w.source.choices]
    assert offered == ["keep"], offered
    w.set_source(viewer.layers["keep RRIM x4"])  # the menu command on a result: a message, no change
    assert w.source.value is keep and "made by this plugin" in notes["info"][-1]
    viewer.layers.remove("keep")
    assert w.source.value is None and not w.source.choices


# -- issue 14: other architectures' weights, at their own scale ------------------------------


def test_weights_file_button_lists_a_span_x2_checkpoint_and_runs_at_x2(viewer, qtbot, notes):
    from skimage import data as skdata

    path = _need(SPAN_X2)
    w = _upscale_widget(viewer)
    w.copy_weights.value = False
    worker = w.load_weights_file(path=str(path))
    qtbot.waitUntil(lambda: worker.is_running is False and w.weights_file.enabled, timeout=TIMEOUT_MS)
    assert not notes["error"], notes["error"]
    assert w.model.value == str(path)
    info = w.model_info.value
    assert "span" in info.lower() and "x2" in info and "parameters" in info and path.name in info
    photo = skdata.astronaut()[100:132, 200:236]
    viewer.add_image(photo, name="photo", rgb=True)
    w.source.value = viewer.layers["photo"]
    assert w.model.value == str(path)  # the user's pick
    _run(qtbot, w, add_bicubic=True, tile=0)
    assert not notes["error"], notes["error"]
    sr, bic = viewer.layers["photo RRIM x2"], viewer.layers["photo bicubic x2"]
    assert sr.data.shape == bic.data.shape == (64, 72, 3)
    np.testing.assert_allclose(sr.scale, (0.5, 0.5))
    np.testing.assert_allclose(sr.translate, (-0.25, -0.25))
    stack = _gray((2, 16, 20), seed=10)
    viewer.add_image(stack, name="u16")
    w.source.value = viewer.layers["u16"]
    _run(qtbot, w, add_bicubic=True, current_slice=False, tile=0)
    assert not notes["error"], notes["error"]
    out = viewer.layers["u16 RRIM x2"]
    assert out.data.shape == (2, 32, 40) and out.data.dtype == np.uint16
    assert viewer.layers["u16 bicubic x2"].data.shape == (2, 32, 40)


def test_weights_file_copy_is_listed_at_once_and_bad_file_is_refused(
    viewer, qtbot, notes, tmp_path, tiny_weights_files
):
    import shutil

    w = _upscale_widget(viewer)
    src = tmp_path / "my-model.safetensors"
    shutil.copy(tiny_weights_files["tiny-rrim-x4-gray"], src)
    w.copy_weights.value = True
    worker = w.load_weights_file(path=str(src))
    qtbot.waitUntil(lambda: not worker.is_running and w.weights_file.enabled, timeout=TIMEOUT_MS)
    assert not notes["error"], notes["error"]
    assert "my-model" in w.model.choices and w.model.value == "my-model"
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    worker = w.load_weights_file(path=str(bad))
    qtbot.waitUntil(lambda: not worker.is_running and w.weights_file.enabled, timeout=TIMEOUT_MS)
    assert notes["error"] and "broken.pth" in notes["error"][-1]
    assert str(bad) not in w.model.choices


def test_registry_change_from_another_thread_updates_the_model_list(viewer, qtbot, tiny_registry):
    """#18 wiring: weights registered elsewhere (the fine-tune widget, in its worker thread)
    are listed at once, through ``registry.on_change``."""
    import threading

    from napari_rrim_sr.registry import core as R
    from napari_rrim_sr.registry.loading import save_weights

    w = _upscale_widget(viewer)
    assert "fresh-weights" not in w.model.choices

    def register():
        hp = {"num_feat": 8, "num_block": 1, "scale": 4, "in_channels": 1, "out_channels": 1}
        save_weights(
            Path(R.user_weights_dir(create=True)) / "fresh-weights.safetensors",
            tiny_registry.build("rrim", **hp),
            backbone="rrim",
            hparams=hp,
            name="fresh-weights",
        )
        R.get_registry().weights(refresh=True)

    t = threading.Thread(target=register)
    t.start()
    t.join()
    qtbot.waitUntil(lambda: "fresh-weights" in w.model.choices, timeout=10_000)


# -- issue 15: export --------------------------------------------------------------------------


def test_export_button_writes_onnx_and_never_replaces(viewer, qtbot, notes, tmp_path):
    pytest.importorskip("onnx")
    w = _upscale_widget(viewer)
    w.model.value = "tiny-rrim-x4-gray"
    w.export_format.value = "onnx"
    out = tmp_path / "tiny.onnx"
    worker = w.export_weights(path=str(out))
    qtbot.waitUntil(lambda: not worker.is_running and w.export_button.enabled, timeout=TIMEOUT_MS)
    assert not notes["error"], notes["error"]
    assert out.stat().st_size > 1000 and "Exported" in w.status.value
    size = out.stat().st_size
    worker = w.export_weights(path=str(out))  # exists: refused with a message, file untouched
    qtbot.waitUntil(lambda: not worker.is_running and w.export_button.enabled, timeout=TIMEOUT_MS)
    assert notes["error"] and "Export failed" in notes["error"][-1]
    assert out.stat().st_size == size


# -- issue 16: lazy sources too large for memory go to an OME-Zarr store ---------------------


def test_lazy_source_too_large_goes_to_a_store_and_a_lazy_layer(viewer, qtbot, notes, tmp_path):
    da = pytest.importorskip("dask.array")
    pytest.importorskip("zarr")
    data = _gray((48, 40), seed=11)
    lay = viewer.add_image(da.from_array(data, chunks=(24, 20)), name="lazy", scale=(2.0, 2.0))
    w = _upscale_widget(viewer)
    w.source.value = lay
    w._show_output_plan()
    assert _shown(w.output_info) and "in memory" in w.output_info.value
    w.memory_budget = 1000  # bytes: the result does not fit
    w._show_output_plan()
    assert "OME-Zarr store" in w.output_info.value
    store = tmp_path / "lazy.ome.zarr"
    w.ask_store_path = lambda: str(store)  # the save dialog (not monkeypatch: magicgui's delattr)
    w.model.value = "tiny-rrim-x4-gray"
    _run(qtbot, w, add_bicubic=False)
    assert not notes["error"], notes["error"]
    out = viewer.layers["lazy RRIM x4"]
    assert type(out.data).__module__.startswith("dask") and out.data.shape == (192, 160)
    np.testing.assert_allclose(out.scale, (0.5, 0.5))
    np.testing.assert_allclose(out.translate, (-0.75, -0.75))
    assert store.exists() and out.metadata[L.META_KEY]["store"] == str(store)
