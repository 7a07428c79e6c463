"""The Fine-tune dock widget in a real napari viewer (run under xvfb-run): a small stack, a few
steps of the tiny test model, the live curve, Cancel, the registered weights and the table."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")
pytest.importorskip("matplotlib")

pytestmark = pytest.mark.gui

TIMEOUT_MS = 120_000


def _stack() -> np.ndarray:
    from test_finetune import _stack as real_stack

    return real_stack()


@pytest.fixture
def widget(make_napari_viewer, tiny_registry):
    from napari_rrim_sr._napari.finetune_widget import FINETUNE_WIDGET_NAME, FinetuneWidget

    viewer = make_napari_viewer()
    viewer.add_image(_stack(), name="stack")
    w = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(w, name=FINETUNE_WIDGET_NAME)
    return w


def test_preview_shows_synthetic_lr_next_to_real_data(widget):
    widget.layers.value = [widget.viewer.layers["stack"]]
    widget.base.value = "tiny-rrim-x4-gray"
    real, syn = widget.show_preview()
    assert real.shape == syn.shape and widget.stats.value.split(":")[0] in ("clean", "read", "shot", "shot+read")
    assert len(widget.preview.figure.axes) == 2


def test_finetune_curve_updates_cancel_keeps_best_and_registers(widget, qtbot, tmp_path, tiny_registry):
    widget.layers.value = [widget.viewer.layers["stack"]]
    widget.base.value = "tiny-rrim-x4-gray"
    widget.custom_minutes.value = 1.0
    widget.max_steps.value = 400
    widget.name.value = "gui-ft"
    widget.out.value = str(tmp_path / "gui-ft")
    worker = widget.start()
    assert worker is not None, widget.status.value
    qtbot.waitUntil(lambda: len(widget.curve_points) >= 3, timeout=TIMEOUT_MS)  # the live curve
    assert widget.curve.figure.axes and widget.curve.figure.axes[0].lines
    widget.cancel_btn.changed.emit(True)  # the Cancel button
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    res = widget.result
    assert res is not None, widget.status.value
    assert res.status == "cancelled" and res.steps < 400
    assert res.best_step == max((p for p in res.curve if p["step"] > 0), key=lambda p: p["psnr"])["step"]
    # registered: the registry (what the upscale widget lists) knows the new weights
    ids = [e.id for e in tiny_registry.weights()]
    assert "gui-ft" in ids
    from napari_rrim_sr._napari.upscale.widget import UpscaleWidget

    up = UpscaleWidget(widget.viewer)  # the upscale widget's model list offers them at once
    assert "gui-ft" in [v for _, v in up._weights_choices()]
    table = widget.table.value
    assert list(table["index"]) == ["gui-ft", "tiny-rrim-x4-gray", "bicubic"]
    assert table["data"][0][0] == pytest.approx(res.scores["model"]["psnr"], abs=1e-3)
    assert "registered" in widget.status.value
