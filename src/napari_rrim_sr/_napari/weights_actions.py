"""The upscale widget's *Weights file…* and *Export…* actions (a mixin of :class:`UpscaleWidget`).

Both are one core call in a worker: :func:`napari_rrim_sr.registry.user_files.add_user_weights`
(validates a checkpoint by loading it; optionally installs a copy) and
:func:`napari_rrim_sr.export.export_model` (bioimage.io package or ONNX; a missing ``export``
extra is its clear error, shown here).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal

from napari_rrim_sr._napari import _common as C
from napari_rrim_sr.errors import user_message
from napari_rrim_sr.pipeline import no_weights_message

log = logging.getLogger(__name__)

EXPORT_FORMATS = (("bioimage.io package (.zip)", "bioimageio"), ("ONNX (.onnx)", "onnx"))


class _ExportRelay(QObject):
    """Carries the export's step messages from the worker thread to the GUI thread."""

    step = Signal(str)


def default_input_range(metadata: dict | None, layer=None) -> tuple[tuple[float, float], str]:
    """The value range a bioimage.io package maps to the network's 0..1, and why.

    The weights' own ``input_range`` (metadata) wins; else the source layer's data: 8-bit: 0..255;
    other integers: the dtype's range when the data use at least a quarter of it, else the data's
    min..max (12-bit data in uint16, as the widget's automatic normalisation does); floats: the
    data's min..max. No layer: 0..255."""
    meta = dict(metadata or {})
    asked = meta.get("input_range")
    if isinstance(asked, (list, tuple)) and len(asked) == 2:
        try:
            lo, hi = float(asked[0]), float(asked[1])
            if hi > lo:
                return (lo, hi), "from the weights' metadata"
        except (TypeError, ValueError):
            pass
    if layer is None or getattr(layer, "multiscale", False):
        return (0.0, 255.0), "8-bit data (no source layer to measure)"
    data = layer.data
    dt = np.dtype(data.dtype)
    name = getattr(layer, "name", "the source layer")
    if dt.kind in "iu" and dt.itemsize == 1:
        info = np.iinfo(dt)
        return (float(info.min), float(info.max)), f"the {dt} range of '{name}'"
    arr = np.asarray(data)
    if getattr(layer, "rgb", False) and arr.shape[-1] == 4:
        arr = arr[..., :3]
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if dt.kind in "iu":
        info = np.iinfo(dt)
        span = float(info.max) - float(info.min)
        if hi - min(lo, 0.0) >= 0.25 * span or hi <= lo:
            return (float(info.min), float(info.max)), f"the {dt} range of '{name}'"
    if hi <= lo:
        hi = lo + 1.0
    return (lo, hi), f"the {dt} data of '{name}' ({lo:g}..{hi:g})"


class WeightsActions:
    """Mixin: needs ``model``, ``copy_weights``, ``weights_file``, ``export_format``,
    ``export_button``, ``status``, ``_file_entries``, ``_registry()``, ``_reload_models()``,
    ``_on_model_changed()`` on the widget."""

    def ask_open_path(self) -> str | None:
        """The weights file to load (a file dialog; tests replace it)."""
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(
            self.native, "Load weights", "", "Weights (*.safetensors *.pth *.pt *.ckpt);;All files (*)"
        )
        return path or None

    def ask_save_path(self, fmt: str) -> str | None:
        """Where to export (a save-file dialog; tests replace it)."""
        from qtpy.QtWidgets import QFileDialog

        ext = ".zip" if fmt == "bioimageio" else ".onnx"
        stem = Path(str(self.model.value or "model")).stem
        path, _ = QFileDialog.getSaveFileName(
            self.native, "Export weights", f"{stem}{ext}", f"{fmt} (*{ext});;All files (*)"
        )
        return path or None

    def load_weights_file(self, *_, path: str | None = None):
        """Validate a checkpoint in a worker and list it (copied into the user folder when
        ticked); returns the worker (None if nothing started)."""
        path = path or self.ask_open_path()
        if not path:
            return None
        copy = bool(self.copy_weights.value)
        self.status.value = f"Checking {Path(path).name}…"
        self.weights_file.enabled = False

        def task():
            from napari_rrim_sr.registry.user_files import add_user_weights

            yield f"checking {Path(path).name}"
            return add_user_weights(path, copy=copy, registry=C.registry())

        worker = create_worker(C.drive, task(), _start_thread=False)
        worker.returned.connect(lambda res: self._on_weights_loaded(res, path))
        worker.finished.connect(lambda *_: setattr(self.weights_file, "enabled", True))
        self._weights_worker = worker
        worker.start()
        return worker

    def _on_weights_loaded(self, res, path):
        if isinstance(res, C.Failure):
            msg = user_message(res.exc)
            self.status.value = f"⚠ {msg}"
            C.notify_error(msg)
            return
        if res.source == "file":
            self._file_entries[str(res.path)] = res
            key = str(res.path)
        else:
            key = res.id
        self._reload_models()
        self.model.value = key  # the user's choice now
        self._model_touched = True
        self._on_model_changed(touched=False)
        self.status.value = f"Loaded {Path(path).name}: {C.describe_entry(res)}"

    def ask_input_range(self, default: tuple[float, float], why: str) -> tuple[float, float] | None:
        """The bioimage.io package's input range (a small dialog; tests replace it); None: cancelled."""
        from qtpy.QtWidgets import QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QLabel

        dlg = QDialog(self.native)
        dlg.setWindowTitle("bioimage.io input range")
        form = QFormLayout(dlg)
        note = QLabel(
            f"The input values the package maps to the network's 0..1 (the package bakes one range). Suggested: {why}."
        )
        note.setWordWrap(True)
        form.addRow(note)
        boxes = []
        for label, value in (("lowest value", default[0]), ("highest value", default[1])):
            box = QDoubleSpinBox(dlg)
            box.setDecimals(4)
            box.setRange(-1e12, 1e12)
            box.setValue(float(value))
            box.setToolTip("8-bit: 0..255; 16-bit: 0..65535; 12-bit in uint16: 0..4095")
            form.addRow(label, box)
            boxes.append(box)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(dlg.accept)
        buttons.rejected.connect(dlg.reject)
        form.addRow(buttons)
        if not dlg.exec():
            return None
        return float(boxes[0].value()), float(boxes[1].value())

    def export_input_range(self, wid: str) -> tuple[tuple[float, float], str]:
        """The suggested input range for exporting ``wid``: its metadata, else the source layer."""
        try:
            meta = getattr(self._registry().find_weights(wid), "metadata", None)
        except Exception:  # noqa: BLE001 - a file that no longer reads: the layer decides
            meta = None
        return default_input_range(meta, getattr(self.source, "value", None))

    def export_weights(self, *_, path: str | None = None, input_range: tuple[float, float] | None = None):
        """Export the selected weights (format from the box) in a worker with progress (the
        status line and napari's activity indicator); returns the worker.

        A path from the save dialog replaces an existing file: the dialog has asked already. A
        bioimage.io package asks for its input range (suggested from the weights or the source layer)."""
        wid = self.model.value
        if not wid:
            C.notify_error(no_weights_message())
            return None
        fmt = str(self.export_format.value)
        from_dialog = not path
        path = path or self.ask_save_path(fmt)
        if not path:
            return None
        overwrite = from_dialog and Path(path).exists()  # Qt's save dialog confirmed replacing it
        if fmt == "bioimageio" and input_range is None:
            default, why = self.export_input_range(wid)
            input_range = self.ask_input_range(default, why)
            if input_range is None:
                return None
        if fmt == "bioimageio" and not input_range[1] > input_range[0]:
            msg = f"the input range {input_range[0]:g}..{input_range[1]:g} is empty; the highest value must be larger"
            self.status.value = f"⚠ {msg}"
            C.notify_error(msg)
            return None
        rng = tuple(float(v) for v in input_range) if input_range else (0.0, 255.0)
        self.export_button.enabled = False
        what = f"{wid} as {fmt}" + (f" for inputs {rng[0]:g}..{rng[1]:g}" if fmt == "bioimageio" else "")
        self.status.value = f"Exporting {what}…"
        relay = _ExportRelay()
        relay.step.connect(lambda msg: self._on_export_step(msg, what))
        registry = self._registry()

        def task():
            from napari_rrim_sr.export import export_model

            yield "export"
            return export_model(
                wid, fmt, path, overwrite=overwrite, progress=relay.step.emit, registry=registry, input_range=rng
            )

        worker = create_worker(C.drive, task(), _start_thread=False, _progress={"total": 0, "desc": f"Exporting {wid}"})
        worker.returned.connect(self._on_exported)
        worker.finished.connect(lambda *_: setattr(self.export_button, "enabled", bool(self.model.value)))
        self._export_worker = worker
        self._export_relay = relay  # alive until the next export
        self.export_steps: list[str] = []
        worker.start()
        return worker

    def _on_export_step(self, msg: str, what: str) -> None:
        self.export_steps.append(msg)
        self.status.value = f"Exporting {what}: {msg}…"
        pbar = getattr(getattr(self, "_export_worker", None), "pbar", None)
        if pbar is not None:
            try:
                pbar.set_description(f"Export: {msg}")
            except Exception:  # noqa: BLE001 - pragma: no cover - the bar closed already
                pass

    def _on_exported(self, res):
        if isinstance(res, C.Failure):
            msg = user_message(res.exc)
            if "not overwriting" in msg:  # the core's command-line advice, said for the GUI
                where = getattr(res.exc, "path", None)
                msg = (
                    f"{Path(str(where)).name if where else 'the file'} exists and was not replaced: "
                    "export again and confirm replacing it in the save dialog, or choose another name"
                )
            if not C.check_error(res.exc) and "ExportError" not in type(res.exc).__name__:
                log.error("export failed:\n%s", res.traceback)
            self.status.value = f"⚠ Export failed: {msg}"
            C.notify_error(f"Export failed: {msg}")
            return
        self.status.value = f"Exported to {res}"
        C.notify_info(f"Exported to {res}")
