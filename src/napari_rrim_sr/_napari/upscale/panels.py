"""Behaviour composed into the Upscale widget: each panel is given what it needs.

* :class:`WeightsPanel`: *Weights file…*, *Export…* (the actions of
  :class:`napari_rrim_sr._napari.weights_actions.WeightsActions`), on the controls and the
  controller it is handed, not on attributes of a host class;
* :class:`StorePanel`: where an OME-Zarr result goes, and what to do with an existing store
  (resume or replace), asked in dialogs that tests replace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from napari_rrim_sr._napari.weights_actions import WeightsActions


class WeightsPanel(WeightsActions):
    """Load a weights file or export the selected weights.

    ``view``: the model controls and the status line; ``controller``: the weights files of this
    session and the user's pick; ``native``: the parent of the file dialogs; ``reload``: list
    the weights again; ``model_changed``: refresh what depends on the model.
    """

    def __init__(self, view, controller, *, native, reload: Callable, model_changed: Callable):
        self.model = view.model
        self.source = view.source  # the layer whose dtype suggests an export's input range
        self.copy_weights = view.copy_weights
        self.weights_file = view.weights_file
        self.export_format = view.export_format
        self.export_button = view.export_button
        self.status = view.status
        self.native = native
        self._controller = controller
        self._reload = reload
        self._model_changed = model_changed
        self._weights_worker = None
        self._export_worker = None

    # what WeightsActions reads and calls
    @property
    def _file_entries(self) -> dict:
        return self._controller.file_entries

    @property
    def _model_touched(self) -> bool:
        return self._controller.model_touched

    @_model_touched.setter
    def _model_touched(self, value: bool) -> None:
        self._controller.model_touched = bool(value)

    def _registry(self):
        return self._controller.registry()

    def _reload_models(self):
        self._reload()

    def _on_model_changed(self, *_, touched: bool = True):
        self._model_changed(touched=touched)


class StorePanel:
    """The OME-Zarr store of a result too large for memory: where, and resume or replace."""

    def __init__(self, *, native, source_name: Callable):
        self.native = native
        self._source_name = source_name

    def ask_path(self) -> str | None:
        """Where to write the OME-Zarr result (a save dialog)."""
        from qtpy.QtWidgets import QFileDialog

        name = f"{self._source_name() or 'result'}.ome.zarr"
        path, _ = QFileDialog.getSaveFileName(
            self.native,
            "Write the result to an OME-Zarr store",
            name,
            "OME-Zarr (*.ome.zarr *.zarr)",
            options=QFileDialog.DontConfirmOverwrite,  # an existing store is asked about next
        )
        return path or None

    def ask_mode(self, path) -> str | None:
        """An existing store: ``"resume"`` (keep its finished chunks), ``"replace"`` or None."""
        from qtpy.QtWidgets import QMessageBox

        box = QMessageBox(self.native)
        box.setWindowTitle("The store exists")
        box.setText(f"{Path(path).name} already exists.")
        box.setInformativeText(
            "Resume: keep the chunks already written and compute the rest (same model and settings).\n"
            "Replace: delete it and start over."
        )
        resume = box.addButton("Resume", QMessageBox.AcceptRole)
        replace = box.addButton("Replace", QMessageBox.DestructiveRole)
        box.addButton(QMessageBox.Cancel)
        box.exec_() if hasattr(box, "exec_") else box.exec()
        clicked = box.clickedButton()
        if clicked is resume:
            return "resume"
        if clicked is replace:
            return "replace"
        return None
