"""Regenerate the README screenshots in docs/images/ (run under a display, e.g. ``xvfb-run -a``).

    xvfb-run -a python docs/make_screenshots.py

Uses the installed default weights. Where no trained weights are installed it makes a tiny
randomly initialised RRIM in a temporary user weights folder and says so on the canvas, so a
screenshot never passes an untrained model off as a trained one: re-run this script once
trained weights are shipped.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "images"


def _prefer_pyqt6() -> None:
    """napari's default Qt backend (PyQt6) when installed, even if PyQt5 is there too."""
    import importlib.util

    if importlib.util.find_spec("PyQt6") is not None:
        os.environ.setdefault("QT_API", "pyqt6")


def _ensure_weights() -> bool:
    """True when trained weights are available; else install tiny untrained ones (labelled)."""
    from napari_rrim_sr.registry.core import get_registry, reset_registry

    if get_registry().default_weights(1) is not None:
        return True
    tmp = Path(tempfile.mkdtemp(prefix="rrim-screenshot-weights-"))
    os.environ["NAPARI_RRIM_SR_WEIGHTS_DIR"] = str(tmp)
    import torch

    from napari_rrim_sr.registry.core import Registry
    from napari_rrim_sr.registry.loading import save_weights

    torch.manual_seed(0)
    hp = {"in_channels": 1, "out_channels": 1, "scale": 4, "num_feat": 8, "num_block": 1}
    save_weights(
        tmp / "untrained-rrim-x4-gray.safetensors",
        Registry(discover=False).build("rrim", **hp),
        backbone="rrim",
        hparams=hp,
        name="untrained-rrim-x4-gray",
        description="randomly initialised, for screenshots of the workflow only",
    )
    reset_registry()
    return False


def _close_toasts(app) -> None:
    """Dismiss notification pop-ups so they do not cover the canvas."""
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # pragma: no cover
        return
    for w in app.allWidgets():
        if isinstance(w, NapariQtNotification):
            w.close()
    app.processEvents()


def _wait(app, widget, busy, timeout=600):
    t0 = time.time()
    while busy():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("run did not finish")
    _settle(app)


def _settle(app, n=25):
    for _ in range(n):
        app.processEvents()
        time.sleep(0.02)


def main() -> int:
    warnings.filterwarnings("ignore")  # no warning toasts over the canvas
    _prefer_pyqt6()
    trained = _ensure_weights()
    import napari
    from qtpy.QtWidgets import QApplication

    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-rrim-sr", show=True)
    viewer.window._qt_window.resize(1600, 1000)  # the screen size the widgets must fit (issue 19)
    app = QApplication.instance()
    (src,) = viewer.open_sample("napari-rrim-sr", "microscopy")
    if not trained:
        viewer.text_overlay.visible = True
        viewer.text_overlay.text = "UNTRAINED test weights: workflow only, not model quality"
        viewer.text_overlay.color = "yellow"
        viewer.text_overlay.font_size = 12
    # Layers > Transform > Upscale (RRIM x4): docks the widget preset to the active layer
    from napari._app_model import get_app_model

    up = get_app_model().commands.execute_command("napari-rrim-sr.upscale").result()
    up.add_bicubic.value = True
    up.run()
    _wait(app, up, lambda: up.busy)
    if not up.last_layers:
        print("the run failed:", up.status.value, file=sys.stderr)
        return 1
    # source, bicubic and RRIM side by side, aligned (the widget hid the first two after the run:
    # one comparable set at a time; in a grid all three are side by side, so show them)
    for lay in [src, *up.last_layers]:
        lay.visible = True
    viewer.grid.enabled = True
    viewer.grid.shape = (1, 3)
    viewer.layers.selection.active = up.last_layers[-1]
    viewer.reset_view()
    _settle(app)
    _close_toasts(app)
    _save(viewer.screenshot(canvas_only=False, flash=False), OUT / "upscale_widget.png")

    # the metrics widget: self-check of the source with error maps
    for name, inner in dict(viewer.window.dock_widgets).items():  # napari 0.6+: inner widgets
        if "Upscale (RRIM x4)" in name:
            viewer.window.remove_dock_widget(getattr(inner, "native", inner))
    _, met = viewer.window.add_plugin_dock_widget("napari-rrim-sr", "Super-resolution metrics")
    met.mode.value = "self"
    met.source.value = src  # the model follows the upscale widget's choice for this layer (see its note)
    met.error_maps.value = True
    met.compute()
    _wait(app, met, lambda: met.busy)
    for lay in up.last_layers:
        lay.visible = False
    viewer.reset_view()
    _settle(app)
    _close_toasts(app)
    _save(viewer.screenshot(canvas_only=False, flash=False), OUT / "metrics_widget.png")
    viewer.close()
    print("trained weights" if trained else "UNTRAINED weights (labelled on the canvas)")
    return 0


def _save(arr, path: Path) -> None:
    from PIL import Image

    Image.fromarray(arr[..., :3]).save(path, optimize=True)  # no alpha channel
    print("wrote", path, arr.shape)


if __name__ == "__main__":
    raise SystemExit(main())
