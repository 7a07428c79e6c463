"""Issue 24, the Metrics widget's small things, in a real viewer (run under xvfb-run): fixed number
formats per metric, error maps that do not wash out the view, no stale error after a mode switch,
a data-range tooltip that says what auto does, and SR/Reference never starting on one layer."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


def _widget(viewer):
    from napari_rrim_sr._napari.metrics_widget import MetricsWidget

    w = MetricsWidget(viewer)
    viewer.window.add_dock_widget(w, name="Super-resolution metrics")
    return w


def _compute(qtbot, w):
    worker = w.compute()
    assert worker is not None, w.title.value
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)


def _shown_cells(w) -> list[list[str]]:
    """The table's cells as Qt draws them (through the table's item delegate)."""
    from qtpy.QtWidgets import QStyleOptionViewItem

    t = w.table.native
    out = []
    for r in range(t.rowCount()):
        row = []
        for c in range(t.columnCount()):
            opt = QStyleOptionViewItem()
            t.itemDelegate().initStyleOption(opt, t.model().index(r, c))
            row.append(opt.text)
        out.append(row)
    return out


def _decimals(text: str) -> int:
    assert re.fullmatch(r"[+-]?\d+(\.\d+)?", text), f"not a fixed-point number: {text!r}"
    return len(text.split(".")[1]) if "." in text else 0


def test_table_numbers_use_one_fixed_format_per_metric(viewer):
    """No "0.1648" next to "-8.773e-04": every row has one fixed number of decimals."""
    w = _widget(viewer)
    result = {
        "model": {"rmse": 3.21, "psnr": 38.1234, "ssim": 0.1648, "fsim": 0.95},
        "bicubic": {"rmse": 3.3, "psnr": 37.9, "ssim": 0.165677, "fsim": 0.949},
        "convention": "test",
    }
    w.show_results(result, title="t")
    shown = _shown_cells(w)
    assert len(shown) == 4 and all(len(r) == 3 for r in shown)
    for label, row in zip(w.table.value["index"], shown):
        decimals = {_decimals(t) for t in row}
        assert len(decimals) == 1, (label, row)
    ssim = shown[2]
    assert ssim == ["0.1648", "0.1657", "-0.0009"], ssim  # the difference too, signed, not 1e-04
    assert shown[1][0] == "38.12" and shown[1][2].startswith("+")
    # the values themselves keep full precision
    assert w.table.value["data"][2][0] == pytest.approx(0.1648)


def test_uint16_compare_formats_error_maps_and_data_range(viewer, qtbot):
    rng = np.random.default_rng(1)
    hr = rng.integers(100, 4000, size=(40, 44), dtype=np.uint16)  # 12-bit data in uint16
    sr = np.clip(hr.astype(int) + rng.integers(-30, 31, size=hr.shape), 0, 65535).astype(np.uint16)
    bic = np.clip(hr.astype(int) + rng.integers(-90, 91, size=hr.shape), 0, 65535).astype(np.uint16)
    below = viewer.add_image(hr, name="hr")
    viewer.add_image(bic, name="x bicubic x4")
    viewer.add_image(sr, name="x RRIM x4")
    w = _widget(viewer)
    w.sr_layer.value = viewer.layers["x RRIM x4"]
    w.reference.value = below
    assert w.bicubic_layer.value is viewer.layers["x bicubic x4"]
    w.error_maps.value = True
    for _ in range(2):  # each flow twice in a row
        _compute(qtbot, w)
        for row in _shown_cells(w):
            assert len({_decimals(t) for t in row}) == 1, row
    # the data range used is the reference's max - min, and the tooltip says auto does that
    span = float(hr.max()) - float(hr.min())
    assert f"data range {span:g}" in w.convention.value, w.convention.value
    tip = w.data_range.tooltip
    assert "max − min" in tip and "16-bit" in tip
    # error maps: never additive, and one shown at a time (the RRIM one)
    maps = [lay for lay in viewer.layers if lay.name.startswith("|")]
    assert len(maps) == 4
    assert all(str(m.blending) != "additive" for m in maps), [str(m.blending) for m in maps]
    shown = [m for m in maps[-2:] if m.visible]
    assert len(shown) == 1 and "RRIM" in shown[0].name


def test_mode_switch_drops_the_old_error(viewer):
    rng = np.random.default_rng(2)
    viewer.add_image(rng.integers(0, 256, size=(32, 36), dtype=np.uint8), name="src")
    viewer.add_image(rng.integers(0, 256, size=(8, 9), dtype=np.uint8), name="small")
    w = _widget(viewer)
    w.sr_layer.value = viewer.layers["small"]
    w.reference.value = viewer.layers["src"]
    assert w.compute() is None
    assert w.title.value.startswith("⚠") and "differ in shape" in w.title.value
    w.mode.value = "self"
    assert "differ in shape" not in w.title.value
    w.mode.value = "compare"
    assert "differ in shape" not in w.title.value


def test_sr_and_reference_never_start_on_one_layer(viewer):
    img = viewer.add_image(np.random.default_rng(3).integers(0, 256, size=(16, 16), dtype=np.uint8), name="only")
    w = _widget(viewer)
    assert w.sr_layer.value is img
    assert w.reference.value is not img
    assert w.compute() is None and "reference" in w.title.value.lower()
    # a second layer opened later becomes the reference
    other = viewer.add_image(np.zeros((16, 16), np.uint8), name="hr")
    assert w.reference.value is other and w.sr_layer.value is img
    # and a second widget made now starts on two different layers too
    w2 = _widget(viewer)
    assert w2.sr_layer.value is not w2.reference.value
