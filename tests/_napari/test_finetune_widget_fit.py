"""Issue 24 #2: the Fine-tune dock fits a 1600x1000 screen next to the Upscale and Metrics docks
(it scrolls; Run/Cancel of every dock stay reachable), its preview, live curve and results table
stay readable, matplotlib's layout warnings never reach napari's toasts, and every control has a
tooltip. Run under ``xvfb-run -a -s "-screen 0 1600x1000x24"``; the screenshots land in
``$RRIM_TEST_SCREENSHOTS`` when set (else in the test's tmp folder)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")
pytest.importorskip("matplotlib")

pytestmark = pytest.mark.gui

SCREEN_W, SCREEN_H = 1600, 1000


def _shot(widget, tmp_path: Path, name: str) -> Path:
    """Grab a Qt widget to a PNG (the test's tmp folder, or $RRIM_TEST_SCREENSHOTS)."""
    folder = Path(os.environ.get("RRIM_TEST_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.png"
    assert widget.grab().save(str(out)), out
    assert out.stat().st_size > 1000
    return out


def _stack() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    base = 2000 + 1500 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    return np.stack([base + rng.normal(0, 60, base.shape) for _ in range(3)]).clip(0, 65535).astype(np.uint16)


def _points(n: int = 6) -> list[dict]:
    return [
        {"step": 10 * i, "psnr": 30.0 + 0.3 * i, "ssim": 0.8, "base_psnr": 30.0, "bicubic_psnr": 28.5} for i in range(n)
    ]


def _fake_result():
    scores = {k: {"psnr": v, "ssim": 0.8} for k, v in (("model", 31.5), ("base", 30.0), ("bicubic", 28.5))}
    return SimpleNamespace(
        name="ft-test",
        recipe={"init": "tiny-rrim-x4-gray"},
        scores=scores,
        beats_base=True,
        status="done",
        steps=50,
        installed="/tmp/x.safetensors",
        card="/tmp/card.md",
    )


@pytest.fixture
def three_docks(make_napari_viewer, tiny_registry):
    """A shown 1600x1000 window with the Upscale, Metrics and Fine-tune docks (in that order)."""
    from napari_rrim_sr._napari.finetune_widget import FINETUNE_WIDGET_NAME, FinetuneWidget
    from napari_rrim_sr._napari.metrics_widget import MetricsWidget
    from napari_rrim_sr._napari.widgets import UpscaleWidget

    viewer = make_napari_viewer(show=True)
    win = viewer.window._qt_window
    win.resize(SCREEN_W, SCREEN_H)
    viewer.add_image(_stack(), name="stack")
    up = UpscaleWidget(viewer)
    viewer.window.add_dock_widget(up, name="Upscale (RRIM x4)")
    met = MetricsWidget(viewer)
    viewer.window.add_dock_widget(met, name="Super-resolution metrics")
    ft = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(ft, name=FINETUNE_WIDGET_NAME)
    ft.layers.value = [viewer.layers["stack"]]
    ft.base.value = "tiny-rrim-x4-gray"
    return viewer, up, met, ft


def _process():
    from qtpy.QtWidgets import QApplication

    for _ in range(3):
        QApplication.processEvents()


def _reachable(scroll, button, screen_bottom: int) -> None:
    scroll.ensureWidgetVisible(button.native)
    _process()
    assert not button.native.visibleRegion().isEmpty(), f"'{button.text}' is not visible"
    y = button.native.mapToGlobal(button.native.rect().bottomLeft()).y()
    assert y <= screen_bottom, (button.text, y, screen_bottom)


def test_three_docks_fit_the_screen_and_finetune_stays_readable(three_docks, tmp_path):
    from qtpy.QtWidgets import QScrollArea

    viewer, up, met, ft = three_docks
    win = viewer.window._qt_window
    ft.show_preview()
    for p in _points():
        ft._on_point(p)
    ft._on_returned(_fake_result())
    _process()
    assert win.height() <= SCREEN_H, f"the main window is {win.height()} px tall"
    _shot(win, tmp_path, "three_docks_1600x1000")
    screen_bottom = win.mapToGlobal(win.rect().bottomLeft()).y()
    assert isinstance(ft.native, QScrollArea), "the Fine-tune dock does not scroll"
    assert ft.native.horizontalScrollBar().maximum() == 0, "the Fine-tune dock scrolls sideways (cut figures)"
    assert met.native.horizontalScrollBar().maximum() == 0, "the Metrics dock scrolls sideways (clipped)"
    for widget, buttons in (
        (up, (up.run_button, up.cancel_button)),
        (met, (met.compute_button, met.cancel_button)),
        (ft, (ft.start_btn, ft.cancel_btn)),
    ):
        for button in buttons:
            _reachable(widget.native, button, screen_bottom)
    # readable: the preview and the curve keep their size when scrolled to; the table shows its 3 rows
    for canvas, min_h in ((ft.preview, 150), (ft.curve, 190)):
        ft.native.ensureWidgetVisible(canvas.native)
        _process()
        assert canvas.native.height() >= min_h, canvas.native.height()
        assert canvas.native.width() >= 0.85 * ft.native.viewport().width(), "not the dock's width"
        seen = canvas.native.visibleRegion().boundingRect()
        assert seen.height() >= canvas.native.height() - 2, ("only part of the figure is visible", seen.height())
    _shot(win, tmp_path, "three_docks_finetune_curve")
    table = ft.table.native
    ft.native.ensureWidgetVisible(table)
    _process()
    assert table.rowCount() == 3
    bottom_of_last_row = table.rowViewportPosition(2) + table.rowHeight(2)
    assert 0 <= table.rowViewportPosition(0) and bottom_of_last_row <= table.viewport().height(), (
        bottom_of_last_row,
        table.viewport().height(),
    )
    assert not table.horizontalScrollBar().isVisible(), "the score columns do not fit the dock"
    _shot(win, tmp_path, "three_docks_finetune_table")


def test_finetune_figures_raise_no_layout_warnings(three_docks):
    """napari turns every warning into a toast: drawing the preview and the curve docked (and even
    squeezed) must not warn about the layout."""
    _viewer, _up, _met, ft = three_docks
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        ft.show_preview()
        for p in _points():
            ft._on_point(p)
        _process()
        for canvas in (ft.preview, ft.curve):
            canvas.native.draw()
            canvas.figure.set_size_inches(1.2, 0.3)  # a canvas squeezed to a strip
            canvas.native.draw()
    layout = [str(w.message) for w in got if "layout" in str(w.message).lower()]
    assert not layout, layout


def _all_controls(container):
    from magicgui.widgets import Container, Label, ProgressBar, Table
    from magicgui.widgets.bases import ButtonWidget, ValueWidget

    for wdg in container:
        if isinstance(wdg, Container):
            yield from _all_controls(wdg)
        elif isinstance(wdg, (ButtonWidget, ValueWidget, Table, ProgressBar)) and not isinstance(wdg, Label):
            yield wdg


def test_every_finetune_control_has_a_tooltip(make_napari_viewer, tiny_registry):
    from napari_rrim_sr._napari.finetune_widget import FinetuneWidget

    viewer = make_napari_viewer()
    viewer.add_image(_stack(), name="stack")
    ft = FinetuneWidget(viewer)
    controls = list(_all_controls(ft))
    assert len(controls) >= 15, [type(c).__name__ for c in controls]
    missing = [
        f"{type(c).__name__} {getattr(c, 'label', '') or getattr(c, 'text', '')}"
        for c in controls
        if not (c.tooltip or "").strip()
    ]
    assert not missing, missing
    for canvas in (ft.preview, ft.curve):
        assert canvas.native.toolTip().strip()
