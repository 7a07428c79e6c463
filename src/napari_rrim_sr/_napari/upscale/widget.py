"""The *Upscale (RRIM x4)* dock widget: the view (:mod:`.view`) wired to the Qt-free controller
(:mod:`.controller`) and ONE napari worker per run.

Run: the view's values become :class:`~.controller.FormValues`; the controller fills one
:class:`napari_rrim_sr.pipeline.UpscaleRequest` per source (or channel/band), plans them
(errors are one line, before anything runs) and the widget drives
:meth:`~.controller.UpscaleController.run_iter` in a ``thread_worker`` (progress bar, Cancel
between tiles or chunks). A lazy layer whose result does not fit in memory goes to an OME-Zarr
store through the same run, with the same progress and Cancel, and resume or replace for an
existing store (:class:`~.panels.StorePanel`). Results become layers; the source, the bicubic
comparison and earlier results are hidden so that one comparable set shows.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress

from napari_rrim_sr._napari import METRICS_WIDGET_NAME, PLUGIN_NAME
from napari_rrim_sr._napari import _common as common
from napari_rrim_sr._napari.upscale.controller import FormValues, UpscaleController
from napari_rrim_sr._napari.upscale.panels import StorePanel, WeightsPanel
from napari_rrim_sr._napari.upscale.progress_text import ProgressText
from napari_rrim_sr._napari.upscale.view import CONTROL_NAMES, UpscaleView
from napari_rrim_sr.errors import InputError, RRIMError, user_message
from napari_rrim_sr.registry.interpolation import interpolation_pair

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

#: the narrowest the dock gets beside another one (issue 24: squeezed to 160 px, text cut off)
MIN_WIDTH = 330


class UpscaleWidget(common.ScrollableContainer):
    """Upscale image layers with a registered model (and bicubic, for comparison)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self._viewer = napari_viewer
        self._layer_choices = common.LayerChoices(napari_viewer, self)
        self.controller = UpscaleController(registry_fn=common.registry)
        self.view = UpscaleView(
            source_choices=self._layer_choices.source_choices, weights_choices=self._weights_choices
        )
        for name in CONTROL_NAMES:
            setattr(self, name, getattr(self.view, name))
        self._advanced_widgets = tuple(self.view.advanced_panel)
        for w in self._advanced_widgets:
            w.visible = False
        self._setting_model = False
        self._worker = None
        self._gen = None
        self._pbar = None
        self._cancelled = False
        self._items: list = []
        self._ptext = ProgressText()
        self._t0 = 0.0
        self._can_channels = False
        self._batch_n = 0
        #: the automatic choice for the current source (a ``ModelChoice``; None before one is made)
        self.choice = None
        #: the last completed run's last ``pipeline.Result`` (None after a cancel or before a run)
        self.last_result = None
        #: every ``pipeline.Result`` of the last completed run
        self.last_results: list = []
        #: the layers added by the last completed run
        self.last_layers: list = []
        super().__init__(widgets=self.view.panels, labels=False)
        common.fit_dock(self)
        try:
            self.native.setMinimumWidth(MIN_WIDTH)
        except AttributeError:  # pragma: no cover - non-Qt backend
            pass
        self.weights = WeightsPanel(
            self.view,
            self.controller,
            native=self.native,
            reload=self._reload_models,
            model_changed=self._on_model_changed,
        )
        self.store = StorePanel(native=self.native, source_name=lambda: getattr(self.source.value, "name", None))
        self.source.changed.connect(self._on_source_changed)
        self.current_slice.changed.connect(lambda *_: self._show_output_plan())
        self.channels.changed.connect(self._on_mode_changed)
        self.fourth_band.changed.connect(self._on_mode_changed)
        self.model.changed.connect(self._on_model_changed)
        self.auto_button.changed.connect(self.back_to_automatic)
        self.rescan.changed.connect(self.rescan_weights)
        self.weights_file.changed.connect(lambda *_: self.load_weights_file())
        self.export_button.changed.connect(lambda *_: self.export_weights())
        self.advanced.changed.connect(self._on_advanced)
        self.normalization.changed.connect(self._on_norm_changed)
        self.add_bicubic.changed.connect(lambda *_: self._show_output_plan())
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self._viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._viewer.layers.selection.events.changed.connect(self._on_selection)
        self._watch = watch = common.RegistryWatch()
        watch.changed.connect(self._on_registry_changed)
        self.native.destroyed.connect(lambda *_: watch.close())  # no listener outlives the widget
        self._detach = common.on_detached(self, self._on_dock_closed)
        common.register_upscale_widget(napari_viewer, self)
        active = self._viewer.layers.selection.active
        if isinstance(active, Image) and not common.is_our_result(active):
            self.source.value = active
        self._on_source_changed()
        self._on_selection()

    # -- state ---------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def worker(self):
        """The running worker (None when idle)."""
        return self._worker

    @property
    def _model_touched(self) -> bool:
        """Whether the user picked the model by hand (the metrics widget reads it)."""
        return self.controller.model_touched

    @_model_touched.setter
    def _model_touched(self, value: bool) -> None:
        self.controller.model_touched = bool(value)

    @property
    def memory_budget(self) -> int | None:
        """Bytes a lazy layer's result may take in memory (None: half the free memory)."""
        return self.controller.memory_budget

    @memory_budget.setter
    def memory_budget(self, value: int | None) -> None:
        self.controller.memory_budget = value

    def form(self) -> FormValues:
        """The view's values, as the controller takes them (what is offered, not what Qt
        shows: a hidden window reports every control as not visible)."""
        from napari_rrim_sr._napari.channel_views import is_rgba

        layer = self.source.value
        wid = self.model.value or None
        pair = interpolation_pair(wid, list(self.model.choices or ())) if wid else None
        return FormValues(
            weights_id=wid,
            user_model=self.controller.model_touched,
            alpha=float(self.alpha.value) if pair is not None else None,
            device=str(self.device.value),
            precision=str(self.precision.value),
            backend=str(self.backend.value),
            tile=int(self.tile.value),
            normalization=str(self.normalization.value),
            percentiles=(float(self.p_low.value), float(self.p_high.value)),
            current_slice=bool(self.current_slice.value),
            self_ensemble=bool(self.self_ensemble.value),
            bicubic=bool(self.add_bicubic.value),
            metrics=bool(self.compute_metrics.value),
            channels=bool(self.channels.value and self._can_channels),
            fourth_band=str(self.fourth_band.value) if (layer is not None and is_rgba(layer)) else None,
            one_set=bool(self.one_set.value),
        )

    def _weights_choices(self, _widget=None):
        out = [(common.entry_label(e), e.id) for e in common.registry().weights()]
        out += [(common.entry_label(e) + " [file]", key) for key, e in self.controller.file_entries.items()]
        return out

    def _entry(self, wid):
        return self.controller.entry(wid)

    def set_source(self, layer) -> None:
        """Preset the source layer (the menu command uses this)."""
        self.reset_choices()
        if layer is not None and not isinstance(layer, Image):
            raise InputError(
                f"'{layer.name}' is a {type(layer).__name__} layer; Upscale (RRIM x4) works on image layers"
            )
        if layer is not None and common.is_our_result(layer):  # not offered as a source: say why
            common.notify_info(f"'{layer.name}' was made by this plugin; upscale its source instead.")
            return
        if layer is not None:
            self.source.value = layer

    # -- weights (the panel's actions, under the names scripts and tests use) ----------------
    def load_weights_file(self, *_, path: str | None = None):
        """Validate a checkpoint in a worker and list it; returns the worker (None if nothing started)."""
        return self.weights.load_weights_file(path=path)

    def export_weights(self, *_, path: str | None = None):
        """Export the selected weights in a worker; returns the worker (None if nothing started)."""
        return self.weights.export_weights(path=path)

    def rescan_weights(self, *_):
        """Look for weights again (files, plugins) and list them; keeps the selection if it is
        still there."""
        common.registry().weights(refresh=True)
        self._reload_models()

    def _on_registry_changed(self):
        try:
            self._reload_models()
        except RuntimeError:  # pragma: no cover - widget already deleted
            pass

    def _reload_models(self):
        keep = self.model.value
        with self.model.changed.blocked():
            self.model.reset_choices()
            if keep is not None and keep in self.model.choices:
                self.model.value = keep
        if not self.controller.model_touched:
            self._on_source_changed()
        else:
            self._on_model_changed(touched=False)

    # -- source, channels, the automatic choice ----------------------------------------------
    def _on_active_layer(self, event=None):
        layer = self._viewer.layers.selection.active
        if isinstance(layer, Image) and not self.busy and self.source.value is None and not common.is_our_result(layer):
            self.source.value = layer

    def _selected_sources(self) -> list:
        return [
            lay
            for lay in self._viewer.layers
            if lay in self._viewer.layers.selection and isinstance(lay, Image) and not common.is_our_result(lay)
        ]

    def _on_selection(self, event=None):
        n = len(self._selected_sources())
        self._batch_n = n
        self.batch.visible = n > 1
        self.batch.text = f"All selected layers ({n})" if n > 1 else "All selected layers"

    def _on_advanced(self, *_):
        for w in self._advanced_widgets:
            w.visible = bool(self.advanced.value)
        self._on_norm_changed()

    def _on_norm_changed(self, *_):
        pct = self.normalization.value == "percentile" and bool(self.advanced.value)
        self.p_low.visible = pct
        self.p_high.visible = pct

    def _on_source_changed(self, *_):
        from napari_rrim_sr._napari.channel_views import classify_fourth_band, is_rgba

        layer = self.source.value
        rgba = layer is not None and is_rgba(layer)
        self.fourth_band.visible = rgba
        self.band_info.visible = rgba
        if rgba:
            kind, why = classify_fourth_band(layer.data)
            with self.fourth_band.changed.blocked():
                self.fourth_band.value = kind
            self.band_info.value = why
        can_channels = self.controller.can_channels(layer)
        self._can_channels = can_channels
        self.channels.visible = can_channels
        with self.channels.changed.blocked():
            from napari_rrim_sr._napari.channel_views import leading_axis_is_channels

            self.channels.value = bool(can_channels and leading_axis_is_channels(layer))
        self._on_mode_changed()

    def views(self, layer=None) -> list:
        """What a run processes for ``layer``: the layer itself, or one channel view per
        channel/band."""
        layer = self.source.value if layer is None else layer
        return self.controller.views(layer, self.form() if layer is self.source.value else None)

    def _on_mode_changed(self, *_):
        from napari_rrim_sr.io import geometry as layer_logic

        layer = self.source.value
        mode = self.controller.channel_mode(layer, self.form()) if layer is not None else None
        is_stack = (
            layer is not None and layer_logic.is_stack(layer.ndim) and not (mode == "leading" and layer.ndim == 3)
        )
        self.current_slice.visible = is_stack
        if layer is not None:
            self._auto_choose(layer)
        self._on_model_changed(touched=False)

    def _auto_choose(self, layer) -> None:
        ids = list(self.model.choices or ())
        self.choice = self.controller.auto_choice(layer, self.form(), ids)
        if not self.controller.model_touched and self.choice.weights_id is not None:
            self._setting_model = True
            try:
                self.model.value = self.choice.weights_id
            finally:
                self._setting_model = False
        self._show_choice()

    def back_to_automatic(self, *_):
        """Forget the hand-picked model: choose from the data again (issue 24)."""
        self.controller.model_touched = False
        layer = self.source.value
        if layer is not None:
            self._auto_choose(layer)
        self._on_model_changed(touched=False)

    def _show_choice(self) -> None:
        text, tip = self.controller.choice_text(self.choice, self.model.value)
        self.choice_info.value = text
        self.choice_info.tooltip = tip or None
        self.auto_button.visible = self.controller.model_touched

    def _on_model_changed(self, *_, touched: bool = True):
        if touched and not self._setting_model:
            self.controller.model_touched = True
        wid = self.model.value
        entry = self._entry(wid) if wid else None
        if not wid:
            from napari_rrim_sr.pipeline import no_weights_message

            self.model_info.value = "⚠ " + no_weights_message()
        elif entry is None:
            self.model_info.value = f"⚠ unknown weights {wid!r}"
        else:
            layer = self.source.value
            mode = self.controller.channel_mode(layer, self.form()) if layer is not None else None
            kind = "multiband" if mode == "samples" else ("rgb" if layer is not None and layer.rgb else None)
            self.model_info.value = self.controller.details_text(
                common.describe_entry(entry), entry, self.choice, kind=kind
            )
        pair = interpolation_pair(wid, list(self.model.choices or ())) if wid else None
        self.alpha.visible = pair is not None
        if pair is not None:
            self.alpha.value = 0.0 if wid == pair[0] else 1.0
        self.run_button.enabled = bool(wid) and not self.busy
        self.export_button.enabled = bool(wid)
        self._show_choice()
        self._show_output_plan()

    # -- where the result goes ---------------------------------------------------------------
    def output_plan(self, layer=None) -> tuple[str, str] | None:
        """``("memory" | "store", reason)`` for a lazy source, else None."""
        layer = self.source.value if layer is None else layer
        return self.controller.output_plan(layer, self.form())

    def _show_output_plan(self) -> None:
        plan = self.output_plan()
        self.output_info.visible = plan is not None
        if plan is not None:
            kind, why = plan
            if kind == "store":
                bic = (
                    " No bicubic comparison is made for a store result (it would not fit in memory either)."
                    if self.add_bicubic.value
                    else ""
                )
                self.output_info.value = (
                    "Output: an OME-Zarr store you choose when you press Run, shown as a lazy layer, "
                    f"with progress and Cancel (an existing store can be resumed or replaced): {why}.{bic}"
                )
            else:
                self.output_info.value = f"Output: in memory: {why}"

    def ask_store_path(self) -> str | None:
        """Where to write the OME-Zarr result (a save dialog; tests replace it)."""
        return self.store.ask_path()

    def ask_store_mode(self, path) -> str | None:
        """``"resume"``, ``"replace"`` or None (cancel) for an existing store (tests replace it)."""
        return self.store.ask_mode(path)

    # -- run -----------------------------------------------------------------------------
    def make_items(self) -> list:
        """Plan every in-memory run of the current settings (raises InputError before
        anything runs)."""
        layer = self.source.value
        sources = self._selected_sources() if (self.batch.value and self._batch_n > 1) else [layer]
        items = self.controller.items_for(sources, self.form(), point=self._viewer.dims.point, current=layer)
        return self.controller.plan_items(items)

    def run(self, *_):
        """Start a run in ONE worker thread; returns the worker (None if nothing started)."""
        if self.busy:
            common.notify_info("An upscale run is already in progress; cancel it first.")
            return None
        try:
            plan = None if (self.batch.value and self._batch_n > 1) else self.output_plan()
            if plan is not None and plan[0] == "store":
                items = self._store_items()
                if items is None:
                    return None
            else:
                items = self.make_items()
        except RRIMError as exc:
            msg = self.controller.gui_message(str(exc))
            self.status.value = f"⚠ {msg}"
            common.notify_error(msg)
            return None
        return self._start(items, store=plan is not None and plan[0] == "store")

    def _store_items(self):
        layer = self.source.value
        form = self.form()
        if not form.weights_id:
            from napari_rrim_sr.pipeline import no_weights_message

            raise InputError(no_weights_message())
        path = self.ask_store_path()
        if not path:
            self.status.value = "No store chosen; nothing was run."
            return None
        mode = "new"
        if self.controller.store_exists(path):
            mode = self.ask_store_mode(path)
            if mode is None:
                self.status.value = "The store exists and was kept; nothing was run."
                return None
        return [self.controller.store_item(layer, form, path, mode, point=self._viewer.dims.point)]

    def _start(self, items, *, store: bool):
        self._items = items
        self._cancelled = False
        self._ptext.reset(unit="chunk" if store else "tile")
        self._t0 = time.monotonic()
        self._gen = self.controller.run_iter(items)
        worker = create_worker(common.drive, self._gen, _start_thread=False)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._pbar = napari_progress(total=100, desc=f"RRIM: {items[0].label}")
        self.progress_bar.min, self.progress_bar.max = 0, 0  # busy until the first tile is done
        self.progress_bar.visible = True
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        req = items[0].request
        if store:
            path = req.output.path
            what = f"'{items[0].layer.name}' into {path.name} ({'resuming' if req.output.resume else 'new store'})"
            self.status.value = f"Upscaling {what}…"
        else:
            if len(items) > 1:
                what = f"{len(items)} images"
            else:
                from napari_rrim_sr.io import geometry as layer_logic

                layer = items[0].layer
                stack = layer_logic.is_stack(layer.ndim)
                what = "current slice" if req.slice_index else ("whole stack" if stack else "image")
            self.status.value = f"Upscaling {what} of '{items[0].layer.name}'…"
        worker.start()
        return worker

    def cancel(self, *_):
        """Stop the run after the tile (or chunk) being processed; no layer is added."""
        if self._worker is None:
            return
        self._cancelled = True
        self.status.value = "Cancelling after the current tile…"
        self._worker.quit()

    def _on_dock_closed(self):
        if getattr(self, "_worker", None) is not None and not self._cancelled:
            log.info("upscale dock closed during a run: cancelling")
            self.cancel()

    def _on_yielded(self, p):
        i, n = int(getattr(p, "item", 0)), max(int(getattr(p, "items", 1)), 1)
        if getattr(p, "message", "") == "starting" and not getattr(p, "tiles_total", 0):
            label = self._items[min(i, len(self._items) - 1)].label
            self._ptext.reset(prefix=f"{label} ({i + 1}/{n}): " if n > 1 else "", unit=self._ptext.unit)
            return
        text, frac = self._ptext.update(p)
        overall = (i + frac) / n
        pct = round(100 * overall)
        text += common.eta_text(time.monotonic() - self._t0, overall)
        if not self._cancelled:  # first: napari's progress update below may process later events
            self.status.value = f"{text}…"
        if pct > 0 and self.progress_bar.max == 0:
            self.progress_bar.max = 100  # a real fraction from now on
        if pct > self.progress_bar.value:
            self.progress_bar.value = pct
            if self._pbar is not None and pct > self._pbar.n:
                self._pbar.update(pct - self._pbar.n)

    def _on_returned(self, results):
        if self._cancelled or results is None:
            return
        if isinstance(results, common.Failure):
            req = self._items[0].request if self._items else None
            stack = bool(req is not None and req.slices == "all" and getattr(req.source.data, "ndim", 2) > 2)
            msg = self.controller.gui_message(user_message(results.exc, stack=stack))
            if not common.check_error(results.exc):
                log.error("upscale run failed:\n%s", results.traceback)
            self.status.value = f"⚠ {msg}"
            common.notify_error(msg)
            return
        try:
            self._add_results(results)
        except Exception as exc:  # noqa: BLE001 - never leave the status frozen mid-run (issue 24 #1)
            log.error("adding the results failed", exc_info=True)
            msg = f"The run finished but its result could not be shown: {user_message(exc)}"
            self.status.value = f"⚠ {msg}"
            common.notify_error(msg)

    def _add_results(self, results) -> None:
        to_add, dropped = self.controller.result_layers(self._items, results, list(self._viewer.layers))
        added, rr, bic = [], [], []
        for spec in to_add:
            layer = self._viewer.add_image(spec.data, **spec.kwargs)
            added.append(layer)
            (rr if spec.kind == "rrim" else bic).append(layer)
        self.last_results = list(results)
        self.last_layers = added
        if not added:
            self.status.value = f"'{self._items[0].layer.name}' was deleted during the run; no layer was added."
            store = getattr(results[-1], "store", None) if results else None
            if store is not None:
                self.status.value += f" The store {store} is kept."
            common.notify_info(self.status.value)
            return
        self.last_result = results[-1]
        hidden = []
        if self.one_set.value:
            sources = []
            for it in self._items:
                if not any(s is it.layer for s in sources):
                    sources.append(it.layer)
            hidden = self.controller.layers_to_hide(list(self._viewer.layers), sources, rr)
            for lay in hidden:
                lay.visible = False
        self._viewer.layers.selection.active = added[-1]
        text = self.controller.summary(
            [x.name for x in rr], [x.name for x in bic], results, dropped=dropped, hidden=bool(hidden)
        )
        if results[-1].metrics:
            self._show_metrics(results[-1])
        self.status.value = text
        common.notify_info(text)

    def _show_metrics(self, result) -> None:
        try:
            _, widget = self._viewer.window.add_plugin_dock_widget(PLUGIN_NAME, METRICS_WIDGET_NAME)
        except Exception:  # pragma: no cover - headless viewer without a window
            log.debug("could not open the metrics widget", exc_info=True)
            return
        widget = getattr(widget, "__wrapped__", widget)
        if hasattr(widget, "show_results"):
            name = result.plan.request.source.name
            layer = next((it.layer for it in self._items if it.label == name), None)
            widget.show_results(
                result.metrics,
                title=f"Self-check of '{name}' with {result.plan.model.id}",
                source=layer,
                weights_id=result.plan.model.id,
            )

    def _on_finished(self, *_):
        if self._cancelled:
            if self._gen is not None:
                try:  # run the engine's cleanup (finally blocks) now, not at garbage collection
                    self._gen.close()
                except Exception:  # pragma: no cover
                    log.debug("closing the cancelled run failed", exc_info=True)
            common.release_memory()
            store = self._items and self._items[0].request.output.kind == "store"
            self.status.value = (
                "Cancelled; no layer was added. The finished chunks are kept: Run again and choose Resume."
                if store
                else "Cancelled; no layer was added."
            )
            self.last_result = None
        self._gen = None
        self._worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        try:
            self.progress_bar.visible = False
            self.progress_bar.max = 100
            self.cancel_button.enabled = False
            self.run_button.enabled = bool(self.model.value)
        except RuntimeError:  # pragma: no cover - the dock was closed and deleted
            pass
