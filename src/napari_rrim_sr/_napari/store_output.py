"""The upscale widget's OME-Zarr output for lazy sources (a mixin of :class:`UpscaleWidget`).

A dask/zarr-backed layer whose result would not fit in memory
(:func:`napari_rrim_sr.chunked.plan_output` says ``"store"``) is written chunk by chunk to an
OME-Zarr store the user chooses (:func:`napari_rrim_sr.chunked.upscale_to_store`, resumable) and
added as a lazy layer; the widget says which it will do before it runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker

from .. import layers as L
from ..errors import user_message
from . import _common as C

log = logging.getLogger(__name__)


class StoreOutput:
    """Mixin: needs ``source``, ``model``, ``current_slice``, ``output_info``, ``memory_budget``,
    the advanced settings, ``status``, the run buttons, ``_entry()``, ``_on_finished()``."""

    @staticmethod
    def is_lazy(layer) -> bool:
        """A layer whose data is dask/zarr-backed (not already in memory)."""
        data = getattr(layer, "data", None)
        if data is None or isinstance(data, np.ndarray) or getattr(layer, "multiscale", False):
            return False
        mod = type(data).__module__
        return mod.startswith(("dask", "zarr"))

    def output_plan(self, layer=None) -> tuple[str, str] | None:
        """``("memory" | "store", reason)`` for a lazy source (:func:`chunked.plan_output`), else None."""
        layer = self.source.value if layer is None else layer
        if layer is None or not self.is_lazy(layer) or layer.rgb:
            return None
        from ..chunked import plan_output

        entry = self._entry(self.model.value) if self.model.value else None
        factor = int(entry.scale) if entry is not None else 4
        shape = tuple(layer.data.shape)
        if self.current_slice.value and L.is_stack(layer.ndim):
            shape = shape[-2:]
        return plan_output(shape, layer.data.dtype, factor, budget=self.memory_budget)

    def _show_output_plan(self) -> None:
        plan = self.output_plan()
        self.output_info.visible = plan is not None
        if plan is not None:
            kind, why = plan
            self.output_info.value = (
                f"Output: an OME-Zarr store you choose when you press Run, shown as a lazy layer: {why}"
                if kind == "store"
                else f"Output: in memory: {why}"
            )

    def ask_store_path(self) -> str | None:
        """Where to write the OME-Zarr result (a save dialog; tests replace it)."""
        from qtpy.QtWidgets import QFileDialog

        name = f"{self.source.value.name if self.source.value is not None else 'result'}.ome.zarr"
        path, _ = QFileDialog.getSaveFileName(
            self.native, "Write the result to an OME-Zarr store", name, "OME-Zarr (*.ome.zarr *.zarr)"
        )
        return path or None

    def _run_to_store(self, layer):
        wid = self.model.value
        path = self.ask_store_path()
        if not path:
            self.status.value = "No store chosen; nothing was run."
            return None
        norm = str(self.normalization.value)
        kw = {
            "device": str(self.device.value),
            "precision": str(self.precision.value),
            "tile": int(self.tile.value) or None,
        }
        if norm in ("dtype", "range", "percentile"):
            kw["normalization"] = norm
            kw["percentiles"] = (float(self.p_low.value), float(self.p_high.value))
        data, scale, translate, name = layer.data, tuple(layer.scale), tuple(layer.translate), layer.name

        def task():
            from ..chunked import upscale_to_store

            yield f"writing '{name}' to {Path(path).name}"
            return upscale_to_store(
                data, path, scale=scale, translate=translate, model=wid, name=name, overwrite=False, **kw
            )

        self._store_ctx = {"layer": layer, "path": path, "weights_id": wid, "choice": self.choice}
        self._items = []
        self._cancelled = False
        worker = create_worker(C.drive, task(), _start_thread=False)
        worker.yielded.connect(lambda msg: setattr(self.status, "value", f"{msg}…"))
        worker.returned.connect(self._on_store_returned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._gen = None
        self.run_button.enabled = False
        self.cancel_button.enabled = False  # a store run is resumable, not cancellable between chunks here
        worker.start()
        return worker

    def _on_store_returned(self, lazy):
        ctx = self._store_ctx
        if isinstance(lazy, C.Failure):
            msg = user_message(lazy.exc)
            if not C.check_error(lazy.exc):
                log.error("store run failed:\n%s", lazy.traceback)
            self.status.value = f"⚠ {msg}"
            C.notify_error(msg)
            return
        layer = ctx["layer"]
        if not any(lay is layer for lay in self._viewer.layers):
            self.status.value = f"'{layer.name}' was deleted during the run; the store {ctx['path']} is kept."
            return
        entry = self._entry(ctx["weights_id"])
        factor = int(entry.scale) if entry is not None else 4
        record = {
            "kind": "rrim",
            "method": "model, chunk by chunk into an OME-Zarr store",
            "store": str(ctx["path"]),
            "model_id": ctx["weights_id"],
            "factor": factor,
            "model_choice": ctx["choice"].as_dict() if ctx["choice"] is not None else None,
        }
        kw = L.result_layer_kwargs(L.source_info(layer), lazy, kind="rrim", factor=factor, record=record)
        added = self._viewer.add_image(lazy, **kw)
        self.last_layers = [added]
        self.last_results = []
        self.status.value = f"Added '{added.name}' (lazy, from {ctx['path']})."
        C.notify_info(self.status.value)
