"""The upscale widget's *Weights file…* and *Export…* actions (a mixin of :class:`UpscaleWidget`).

Both are one core call in a worker: :func:`napari_rrim_sr.user_weights.add_user_weights`
(validates a checkpoint by loading it; optionally installs a copy) and
:func:`napari_rrim_sr.export.export_model` (bioimage.io package or ONNX; a missing ``export``
extra is its clear error, shown here).
"""

from __future__ import annotations

import logging
from pathlib import Path

from napari.qt.threading import create_worker

from .. import job as J
from ..errors import user_message
from . import _common as C

log = logging.getLogger(__name__)

EXPORT_FORMATS = (("bioimage.io package (.zip)", "bioimageio"), ("ONNX (.onnx)", "onnx"))


class RegistryWithFiles:
    """The registry plus weights files the user loaded without copying (listed by path)."""

    def __init__(self, base, files: dict):
        self._base = base
        self._files = files

    def weights(self, refresh: bool = False):
        return self._base.weights(refresh) + list(self._files.values())

    def find_weights(self, weights_id: str):
        if weights_id in self._files:
            return self._files[weights_id]
        return self._base.find_weights(weights_id)

    def __getattr__(self, name):
        return getattr(self._base, name)


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
            from ..user_weights import add_user_weights

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

    def export_weights(self, *_, path: str | None = None):
        """Export the selected weights (format from the box) in a worker; returns the worker."""
        wid = self.model.value
        if not wid:
            C.notify_error(J.no_weights_message())
            return None
        fmt = str(self.export_format.value)
        path = path or self.ask_save_path(fmt)
        if not path:
            return None
        self.export_button.enabled = False
        self.status.value = f"Exporting {wid} as {fmt}…"
        steps: list[str] = []

        def task():
            from ..export import export_model

            yield "export"
            return export_model(wid, fmt, path, overwrite=False, progress=steps.append, registry=self._registry())

        worker = create_worker(C.drive, task(), _start_thread=False)
        worker.returned.connect(self._on_exported)
        worker.finished.connect(lambda *_: setattr(self.export_button, "enabled", bool(self.model.value)))
        self._export_worker = worker
        worker.start()
        return worker

    def _on_exported(self, res):
        if isinstance(res, C.Failure):
            msg = user_message(res.exc)
            if not C.check_error(res.exc) and "ExportError" not in type(res.exc).__name__:
                log.error("export failed:\n%s", res.traceback)
            self.status.value = f"⚠ Export failed: {msg}"
            C.notify_error(f"Export failed: {msg}")
            return
        self.status.value = f"Exported to {res}"
        C.notify_info(f"Exported to {res}")
