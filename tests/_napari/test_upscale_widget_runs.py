"""Issue 24 #3, #6 and the small things, in a real viewer (run under xvfb-run): store runs with
progress, Cancel, resume and replace; a fine-tuned model's own normalisation; the Backend box;
the way back to the automatic model; the busy bar of a single-tile image; the dock's width."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from napari_rrim_sr.io import geometry as layer_logic

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


def _widget(viewer):
    from napari_rrim_sr._napari.upscale.widget import UpscaleWidget

    w = UpscaleWidget(viewer)
    viewer.window.add_dock_widget(w, name="Upscale (RRIM x4)")
    return w


def _gray(shape=(24, 24), seed=0, hi=4000):
    return np.random.default_rng(seed).integers(100, hi, size=shape, dtype=np.uint16)


def _wait(qtbot, w):
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)


def test_store_run_has_progress_cancel_resume_and_replace(viewer, qtbot, notes, tmp_path):
    da = pytest.importorskip("dask.array")
    pytest.importorskip("zarr")
    data = _gray((48, 40), seed=11)
    lay = viewer.add_image(da.from_array(data, chunks=(24, 20)), name="lazy", scale=(2.0, 2.0))
    w = _widget(viewer)
    w.source.value = lay
    w.memory_budget = 1000  # bytes: the result does not fit in memory
    w.add_bicubic.value = True
    w._show_output_plan()
    info = w.output_info.value
    assert "OME-Zarr store" in info and "Cancel" in info and "No bicubic comparison" in info
    store = tmp_path / "lazy.ome.zarr"
    w.ask_store_path = lambda: str(store)
    asked = []
    w.ask_store_mode = lambda path: asked.append(path) or answer[0]
    answer = ["resume"]
    # 1st run, cancelled at its first chunk: Cancel and the bar are there, nothing is added
    seen = []

    def on_progress(p):
        seen.append((w.cancel_button.enabled, w.progress_bar.native.isVisibleTo(w.native), p.tiles_done))
        if p.tiles_done >= 1 and not w._cancelled:
            w.cancel()

    worker = w.run()
    assert worker is not None, w.status.value
    assert w.cancel_button.enabled and not w.run_button.enabled
    worker.yielded.connect(on_progress)
    _wait(qtbot, w)
    assert seen and all(enabled and shown for enabled, shown, _ in seen), seen
    assert [x.name for x in viewer.layers] == ["lazy"]
    assert "Resume" in w.status.value and not notes["error"]
    # 2nd run: the store exists -> asked; resume finishes it
    worker = w.run()
    assert worker is not None and asked == [str(store)]
    _wait(qtbot, w)
    assert not notes["error"], notes["error"]
    out = viewer.layers["lazy RRIM x4"]
    assert type(out.data).__module__.startswith("dask") and out.data.shape == (192, 160)
    np.testing.assert_allclose(out.scale, (0.5, 0.5))
    assert out.metadata[layer_logic.META_KEY]["store"] == str(store)
    assert "bicubic" not in " ".join(x.name for x in viewer.layers)
    first = np.asarray(out.data)
    # 3rd run: replace; the same result again, the layer named by napari "… [1]"
    answer[0] = "replace"
    assert w.run() is not None
    _wait(qtbot, w)
    assert not notes["error"], notes["error"]
    assert w.status.value.startswith("Added 'lazy RRIM x4 [1]'"), w.status.value
    np.testing.assert_array_equal(np.asarray(viewer.layers["lazy RRIM x4 [1]"].data), first)
    # a 4th run, the dialog cancelled: nothing runs, the store is kept
    answer[0] = None
    assert w.run() is None and "kept" in w.status.value and store.exists()


def test_fine_tuned_percentile_model_runs_with_percentiles(viewer, qtbot, notes):
    """Issue 24 #6: the weights' metadata says percentile normalisation; the widget (default
    'auto') runs it so, and records it."""
    import torch

    from napari_rrim_sr.registry import core as reg_module
    from napari_rrim_sr.registry.loading import save_weights

    reg = reg_module.get_registry()
    torch.manual_seed(3)
    hp = {"num_feat": 8, "num_block": 1, "scale": 4, "in_channels": 1, "out_channels": 1}
    save_weights(
        reg_module.user_weights_dir(create=True) / "my-finetune.safetensors",
        reg.build("rrim", **hp),
        backbone="rrim",
        hparams=hp,
        normalization="8-bit data: dtype range (/255); other data: 0.1-99.9 percentiles per file",
    )
    data = _gray(seed=2)
    data[3, 3] = 65000  # a hot pixel: min..max and percentiles differ
    viewer.add_image(data, name="cells")
    w = _widget(viewer)
    w.rescan_weights()
    w.model.value = "my-finetune"
    assert w.normalization.value == "auto"
    for suffix in ("", " [1]"):
        assert w.run() is not None, w.status.value
        _wait(qtbot, w)
        assert not notes["error"], notes["error"]
        rec = viewer.layers[f"cells RRIM x4{suffix}"].metadata[layer_logic.META_KEY]
        assert rec["model_id"] == "my-finetune"
        assert rec["normalization"]["mode"] == "percentile", rec["normalization"]
        assert rec["normalization"]["hi"] < 65000  # the hot pixel is not the white point


def test_backend_box_travels_in_the_request(viewer, qtbot, notes):
    viewer.add_image(_gray(seed=4), name="cells")
    w = _widget(viewer)
    assert list(w.backend.choices) == ["auto", "torch", "openvino"] and w.backend.value == "auto"
    assert not w.backend.native.isVisibleTo(w.native)  # an advanced setting
    w.advanced.value = True
    assert w.backend.native.isVisibleTo(w.native) and w.normalization.native.isVisibleTo(w.native)
    w.backend.value = "openvino"
    (item,) = w.make_items()
    assert item.request.backend == "openvino"
    w.backend.value = "torch"
    assert w.run() is not None
    _wait(qtbot, w)
    assert not notes["error"], notes["error"]
    assert viewer.layers["cells RRIM x4"].metadata[layer_logic.META_KEY]["backend"] == "torch"


def test_back_to_automatic_after_a_hand_pick(viewer, qtbot, notes):
    viewer.add_image(_gray(seed=5), name="cells")
    w = _widget(viewer)
    auto = w.model.value
    assert auto == "tiny-rrim-x4-gray" and w.auto_button.native.isHidden()
    assert w.choice_info.value.startswith("Automatic:") and w.choice_info.tooltip
    w.model.value = "tiny-rrim-x4-rgb"
    assert w._model_touched and not w.auto_button.native.isHidden()
    assert "Chosen by you" in w.choice_info.value
    w.auto_button.changed.emit(True)  # the button's click
    assert not w._model_touched and w.model.value == auto and w.auto_button.native.isHidden()
    assert w.choice_info.value.startswith("Automatic:")
    assert w.run() is not None
    _wait(qtbot, w)
    rec = viewer.layers["cells RRIM x4"].metadata[layer_logic.META_KEY]
    assert rec["model_id"] == auto and rec["model_choice"]["reason"] != "chosen by the user"


def test_single_tile_image_shows_a_busy_bar_not_zero(viewer, qtbot, notes):
    viewer.add_image(_gray(seed=6), name="one tile")
    w = _widget(viewer)
    states = []
    worker = w.run()
    assert (w.progress_bar.min, w.progress_bar.max) == (0, 0)  # busy from the start
    worker.yielded.connect(lambda p: states.append((p.tiles_done, p.tiles_total, w.progress_bar.max)))
    _wait(qtbot, w)
    assert not notes["error"], notes["error"]
    tiles = [s for s in states if s[1]]
    assert tiles and tiles[0][1] == 1
    assert all(mx == 0 for done, _, mx in tiles if done == 0)  # busy, not "0 %", until the tile is done
    assert w.progress_bar.max == 100  # reset for the next run


def test_dock_has_a_sane_minimum_width(make_napari_viewer, tiny_registry, qtbot):
    from qtpy.QtWidgets import QApplication

    from napari_rrim_sr._napari.metrics_widget import MetricsWidget

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.add_image(_gray(), name="img")
    w = _widget(viewer)
    viewer.window.add_dock_widget(MetricsWidget(viewer), name="Super-resolution metrics")
    QApplication.processEvents()
    assert w.native.minimumWidth() >= 300
    assert w.native.width() >= 300, w.native.width()
