"""Regenerate docs/images/finetune_widget.png (run under a display, e.g. ``xvfb-run -a``).

    OMP_NUM_THREADS=1 xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_finetune_screenshot.py

Fine-tunes the shipped ``rrim-x4-gray`` on the shipped nuclei sample (CC0) for a short budget
in the *Fine-tune* widget (a temporary user weights folder, so nothing is installed), then
takes the screenshot with the live curve, the preview and the final table.
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


def main(minutes: float = 0.75, max_steps: int = 60) -> int:
    warnings.filterwarnings("ignore")
    _prefer_pyqt6()
    tmp = Path(tempfile.mkdtemp(prefix="rrim-ft-screenshot-"))
    os.environ["NAPARI_RRIM_SR_WEIGHTS_DIR"] = str(tmp / "weights")
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_rrim_sr._napari.finetune_widget import FINETUNE_WIDGET_NAME, FinetuneWidget

    viewer = napari.Viewer(title="napari-rrim-sr", show=True)
    viewer.window._qt_window.resize(1600, 1000)  # the screen the docks must fit (issue 24)
    app = QApplication.instance()
    (src,) = viewer.open_sample("napari-rrim-sr", "microscopy")
    w = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(w, name=FINETUNE_WIDGET_NAME)
    w.layers.value = [src]
    w.base.value = "rrim-x4-gray"
    w.custom_minutes.value = minutes
    w.max_steps.value = max_steps
    w.name.value = "rrim-x4-gray-ft-nuclei"
    w.out.value = str(tmp / "run")
    w.show_preview()
    w.start()
    t0 = time.time()
    while w.busy:
        app.processEvents()
        time.sleep(0.05)
        if time.time() - t0 > 900:
            print("the run did not finish", file=sys.stderr)
            return 1
    try:  # dismiss notification pop-ups (they would cover the canvas)
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for widget in app.allWidgets():
            if isinstance(widget, NapariQtNotification):
                widget.close()
    except ImportError:  # pragma: no cover
        pass
    for _ in range(40):
        app.processEvents()
        time.sleep(0.02)
    if w.result is None:
        print("the run failed:", w.status.value, file=sys.stderr)
        return 1
    # the dock scrolls (it fits a 1000-px screen): show its lower part, the curve and the scores
    w.native.ensureWidgetVisible(w.table.native)
    for _ in range(10):
        app.processEvents()
        time.sleep(0.02)
    from PIL import Image

    OUT.mkdir(parents=True, exist_ok=True)
    arr = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(arr[..., :3]).save(OUT / "finetune_widget.png", optimize=True)
    print("wrote", OUT / "finetune_widget.png", arr.shape)
    print(w.result.table())
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
