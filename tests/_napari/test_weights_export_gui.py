"""Issue 24, the Upscale widget's Export… action in a real viewer (run under xvfb-run): replacing a
file the save dialog confirmed, no command-line advice in the GUI, and a bioimage.io export with an
input range suggested from the source layer, with progress while it runs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


@pytest.fixture
def widget(make_napari_viewer, tiny_registry):
    from napari_rrim_sr._napari.widgets import UpscaleWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 60000, size=(24, 24), dtype=np.uint16), name="cells")
    w = UpscaleWidget(viewer)
    viewer.window.add_dock_widget(w, name="Upscale (RRIM x4)")
    w.model.value = "tiny-rrim-x4-gray"
    return w


def _replace(widget, name: str, func) -> None:
    """Replace a dialog method (as a user's answer) on the widget's weights panel, which asks."""
    object.__setattr__(getattr(widget, "weights", widget), name, func)


def _wait(qtbot, w, worker):
    assert worker is not None, w.status.value
    qtbot.waitUntil(lambda: not worker.is_running and w.export_button.enabled, timeout=TIMEOUT_MS)


def test_export_replaces_the_file_the_save_dialog_confirmed(widget, qtbot, notes, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    w = widget
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an older export")
    _replace(w, "ask_save_path", lambda fmt: str(out))  # Qt's dialog: "replace?" -> yes
    w.export_format.value = "onnx"
    _wait(qtbot, w, w.export_weights())
    assert not notes["error"], notes["error"]
    assert out.stat().st_size > 1000 and out.read_bytes() != b"an older export"
    assert "Exported" in w.status.value
    # again (the file exists now): the dialog confirmed again, so the core is told to replace it
    import napari_rrim_sr.export as export_pkg

    seen = {}
    monkeypatch.setattr(export_pkg, "export_model", lambda *a, **kw: seen.update(kw) or a[2])
    _wait(qtbot, w, w.export_weights())
    assert seen.get("overwrite") is True and not notes["error"], (seen, notes)


def test_a_refused_replace_gives_gui_advice_not_cli_flags(widget, qtbot, notes, tmp_path):
    pytest.importorskip("onnx")
    w = widget
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    w.export_format.value = "onnx"
    _wait(qtbot, w, w.export_weights(path=str(out)))  # a path given without the dialog: not replaced
    assert out.read_bytes() == b"keep me"
    assert notes["error"], "no message"
    shown = notes["error"][-1] + " " + w.status.value
    assert "--overwrite" not in shown and "overwrite=True" not in shown, shown
    assert "save dialog" in shown


def test_bioimageio_export_asks_the_input_range_and_shows_progress(widget, qtbot, notes, tmp_path, monkeypatch):
    """A 16-bit source: the package is suggested for 0..65535 (not 0..255); the steps show."""
    import napari_rrim_sr.export as export_pkg

    w = widget
    calls = {}

    def fake_export(model, fmt, out, *, overwrite=False, progress=None, registry=None, input_range=(0.0, 255.0)):
        calls.update(model=model, fmt=fmt, overwrite=overwrite, input_range=tuple(input_range))
        for step in ("loading weights", "torchscript", "test tensors"):
            progress(step)
            time.sleep(0.2)
        Path(out).write_bytes(b"zip")
        return out

    monkeypatch.setattr(export_pkg, "export_model", fake_export)
    out = tmp_path / "pkg.zip"
    _replace(w, "ask_save_path", lambda fmt: str(out))
    asked = []

    def answer(default, why):
        asked.append((tuple(default), why))
        return default

    _replace(w, "ask_input_range", answer)
    w.export_format.value = "bioimageio"
    worker = w.export_weights()
    assert worker is not None and getattr(worker, "pbar", None) is not None  # napari's activity indicator
    # progress while it runs: the step in the status line and on the activity bar
    qtbot.waitUntil(lambda: "torchscript" in w.status.value or "test tensors" in w.status.value, timeout=TIMEOUT_MS)
    assert "Export:" in str(worker.pbar.desc)
    _wait(qtbot, w, worker)
    assert not notes["error"], notes["error"]
    assert asked and asked[0][0] == (0.0, 65535.0) and "uint16" in asked[0][1], asked
    assert calls["input_range"] == (0.0, 65535.0) and calls["fmt"] == "bioimageio"
    assert w.weights.export_steps == ["loading weights", "torchscript", "test tensors"]
    assert "Exported" in w.status.value
    # 12-bit data in uint16: its own range is suggested; a cancelled range dialog exports nothing
    layer = w.source.value
    layer.data = (np.asarray(layer.data) // 16).astype(np.uint16)  # 0..3749
    default, why = w.weights.export_input_range("tiny-rrim-x4-gray")
    assert default == (float(layer.data.min()), float(layer.data.max())), (default, why)
    _replace(w, "ask_input_range", lambda default, why: None)
    n = len(calls)
    calls.clear()
    assert w.export_weights() is None and not calls and n
