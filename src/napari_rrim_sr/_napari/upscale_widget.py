"""The *Upscale (RRIM x4)* dock widget: thin wiring of :mod:`napari_rrim_sr.job`.

It reads its values into :class:`~napari_rrim_sr.job.UpscaleSettings`, plans with
:func:`~napari_rrim_sr.job.plan_upscale` and runs :func:`~napari_rrim_sr.job.run_upscale` in a
napari ``thread_worker`` (Cancel is checked between tiles). The model is preselected from the
data by :mod:`napari_rrim_sr.model_choice` and the reason shown; channel stacks and 4-band
images whose 4th band is not alpha are upscaled channel by channel (gray model, as the CLI does)
and returned as channel layers (:mod:`.channel_views`); several selected layers run in one
batch. *Weights file…*/*Export…* are in :mod:`.weights_actions`, the OME-Zarr output of lazy
sources in :mod:`.store_output`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress

from .. import job as J
from .. import layers as L
from ..devices import device_choices
from ..errors import InputError, RRIMError, user_message
from . import METRICS_WIDGET_NAME, PLUGIN_NAME
from . import _common as C
from . import channel_views as V
from .store_output import StoreOutput
from .weights_actions import EXPORT_FORMATS, RegistryWithFiles, WeightsActions

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class _Item:
    """One planned run of a batch: the job, the layer it came from, the choice, extra layer kw."""

    job: J.UpscaleJob
    layer: Any
    choice: Any
    label: str
    layer_extra: dict


# -- the widget --------------------------------------------------------------------------------


class UpscaleWidget(WeightsActions, StoreOutput, C.ScrollableContainer):
    """Upscale image layers with a registered model (and bicubic, for comparison)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self._viewer = napari_viewer
        self._layer_choices = C.LayerChoices(napari_viewer, self)
        self._model_touched = False
        self._setting_model = False
        self._worker = None
        self._gen = None
        self._pbar = None
        self._cancelled = False
        self._items: list[_Item] = []
        self._ptext = C.ProgressText()
        self._batch_pos = (0, 1)
        self._file_entries: dict[str, Any] = {}
        self._can_channels = False
        self._batch_n = 0
        #: the automatic choice for the current source (a ``ModelChoice``; None before one is made)
        self.choice = None
        #: the last completed run (an ``UpscaleResult``; the last of a batch), for scripts and tests
        self.last_result = None
        #: every ``UpscaleResult`` of the last completed run
        self.last_results: list = []
        #: the layers added by the last completed run
        self.last_layers: list = []

        self.source = ComboBox(
            label="Source",
            choices=self._layer_choices.source_choices,
            tooltip="The image layer to upscale (never modified). Layers made by this plugin are not offered.",
        )
        self.batch = CheckBox(
            text="All selected layers",
            value=False,
            visible=False,
            tooltip="Upscale every image layer selected in the layer list in one run, "
            "each with its own automatic model choice (unless you pick a model).",
        )
        self.channels = CheckBox(
            text="Leading axis is channels",
            value=False,
            visible=False,
            tooltip="The first axis holds channels (stains), not Z or time: upscale "
            "every channel on its own and return one layer per channel.",
        )
        self.fourth_band = ComboBox(
            label="4th band",
            choices=[("alpha (transparency)", "alpha"), ("band (e.g. near-infrared)", "band")],
            value="alpha",
            visible=False,
            tooltip="napari reads a 4th sample as alpha. 'band': upscale all four "
            "bands one by one with the gray model and keep them as bands.",
        )
        self.band_info = C.wrap_label(Label(value="", visible=False))
        self.model = ComboBox(
            label="Model",
            choices=self._weights_choices,
            tooltip="Weights to run: preselected from the data (why: below); pick another to override.",
        )
        self.choice_info = C.wrap_label(Label(value=""))
        self.model_info = C.wrap_label(Label(value=""))
        self.weights_file = PushButton(
            text="Weights file…",
            tooltip="Load a checkpoint (.safetensors/.pth: RRIM, ESRGAN, Real-ESRGAN "
            "Compact, SPAN, SwinIR); it is validated before it is listed.",
        )
        self.copy_weights = CheckBox(
            text="keep a copy",
            value=True,
            tooltip="Install a copy in the user weights folder so it is listed next "
            "time; unticked: use the file where it is, for this session.",
        )
        self.rescan = PushButton(text="Rescan", tooltip="Look for new weights files and plugins now.")
        wrow = Container(widgets=[self.weights_file, self.copy_weights, self.rescan], layout="horizontal", labels=False)
        self.export_format = ComboBox(
            label="Export",
            choices=list(EXPORT_FORMATS),
            value="bioimageio",
            tooltip="Format to export the selected weights to (needs the 'export' extra).",
        )
        self.export_button = PushButton(text="Export…", tooltip="Export the selected weights: asks where to save.")
        erow = Container(widgets=[self.export_format, self.export_button], layout="horizontal", labels=False)
        self.alpha = FloatSlider(
            label="PSNR ↔ GAN (α)",
            min=0.0,
            max=1.0,
            step=0.05,
            value=0.0,
            visible=False,
            tooltip="Network interpolation between the PSNR- and GAN-trained weights of the "
            "same backbone: 0 = PSNR (smoother, higher PSNR), 1 = GAN (sharper texture).",
        )
        self.current_slice = CheckBox(
            text="Current slice only",
            value=True,
            visible=False,
            tooltip="For stacks: upscale only the displayed slice (unticked: the whole stack).",
        )
        self.add_bicubic = CheckBox(
            text="Add bicubic comparison",
            value=True,
            tooltip="Also add a bicubic upscale at the model's factor, for comparison.",
        )
        self.one_set = CheckBox(
            text="Show only the new result",
            value=True,
            tooltip="Hide the source, the bicubic comparison and earlier results of the same source "
            "after a run, so that additive channel layers do not add up to white; tick a layer's eye "
            "in the layer list to compare.",
        )
        self.compute_metrics = CheckBox(
            text="Self-check metrics",
            value=False,
            tooltip="Downscale the source by the model's factor, upscale it with the model and with "
            "bicubic and score both against the source (RMSE, PSNR, SSIM, FSIM).",
        )
        self.advanced = CheckBox(
            text="Advanced settings",
            value=False,
            tooltip="Show device, precision, tiling, normalisation and self-ensemble.",
        )
        self.device = ComboBox(
            label="Device",
            choices=device_choices(),
            value="auto",
            tooltip="Where the model runs; auto: the fastest available accelerator.",
        )
        self.precision = ComboBox(
            label="Precision",
            choices=PRECISIONS,
            value="auto",
            tooltip="auto: bf16 where the hardware runs it natively, else fp32.",
        )
        self.tile = SpinBox(
            label="Tile (0 = auto)",
            min=0,
            max=8192,
            step=16,
            value=0,
            tooltip="Input tile edge in pixels; smaller tiles use less memory.",
        )
        self.normalization = ComboBox(
            label="Normalisation",
            choices=list(J.NORMALIZATION_CHOICES),
            value="auto",
            tooltip="auto: dtype range when the data use it, else the data's min..max "
            "(e.g. 12-bit values in uint16); percentiles: robust to hot pixels.",
        )
        self.p_low = FloatSpinBox(
            label="Low percentile",
            min=0.0,
            max=100.0,
            step=0.1,
            value=0.1,
            visible=False,
            tooltip="Intensity mapped to 0 (percentile of the data).",
        )
        self.p_high = FloatSpinBox(
            label="High percentile",
            min=0.0,
            max=100.0,
            step=0.1,
            value=99.9,
            visible=False,
            tooltip="Intensity mapped to 1 (percentile).",
        )
        self.self_ensemble = CheckBox(
            text="Self-ensemble (x8 time)",
            value=False,
            tooltip="Average the model over the 8 rotations/flips of the input: slightly "
            "higher fidelity (+0.04 dB PSNR on Kodak24) for eight times the compute.",
        )
        self._advanced_widgets = (self.device, self.precision, self.tile, self.normalization, self.self_ensemble)
        for w in self._advanced_widgets:
            w.visible = False
        self.run_button = PushButton(text="Run", tooltip="Upscale now (in the background).")
        self.cancel_button = PushButton(
            text="Cancel", enabled=False, tooltip="Stop after the tile in progress; nothing is added."
        )
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        self.progress_bar = ProgressBar(
            value=0, min=0, max=100, visible=False, label="Progress", tooltip="Progress of the run."
        )
        self.status = C.wrap_label(Label(value=""))
        self.output_info = C.wrap_label(Label(value="", visible=False))
        #: memory budget (bytes) for the in-memory result of a lazy layer; None: half the free memory
        self.memory_budget: int | None = None
        super().__init__(
            widgets=[
                self.source,
                self.batch,
                self.channels,
                self.fourth_band,
                self.band_info,
                self.model,
                self.choice_info,
                self.model_info,
                wrow,
                erow,
                self.alpha,
                self.current_slice,
                self.add_bicubic,
                self.one_set,
                self.compute_metrics,
                self.advanced,
                self.device,
                self.precision,
                self.tile,
                self.normalization,
                self.p_low,
                self.p_high,
                self.self_ensemble,
                self.output_info,
                buttons,
                self.progress_bar,
                self.status,
            ],
            labels=True,
        )
        C.fit_dock(self)
        self.source.changed.connect(self._on_source_changed)
        self.current_slice.changed.connect(lambda *_: self._show_output_plan())
        self.channels.changed.connect(self._on_mode_changed)
        self.fourth_band.changed.connect(self._on_mode_changed)
        self.model.changed.connect(self._on_model_changed)
        self.rescan.changed.connect(self.rescan_weights)
        self.weights_file.changed.connect(self.load_weights_file)
        self.export_button.changed.connect(self.export_weights)
        self.advanced.changed.connect(self._on_advanced)
        self.normalization.changed.connect(self._on_norm_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self._viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._viewer.layers.selection.events.changed.connect(self._on_selection)
        self._watch = watch = C.RegistryWatch()
        watch.changed.connect(self._on_registry_changed)
        self.native.destroyed.connect(lambda *_: watch.close())  # no listener outlives the widget
        self._detach = C.on_detached(self, self._on_dock_closed)
        C.register_upscale_widget(napari_viewer, self)
        active = self._viewer.layers.selection.active
        if isinstance(active, Image) and not C.is_our_result(active):
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

    def _registry(self):
        base = C.registry()
        return RegistryWithFiles(base, self._file_entries) if self._file_entries else base

    def _weights_choices(self, _widget=None):
        out = [(C.entry_label(e), e.id) for e in C.registry().weights()]
        out += [(C.entry_label(e) + " [file]", key) for key, e in self._file_entries.items()]
        return out

    def _entry(self, wid):
        try:
            return self._registry().find_weights(wid)
        except RRIMError:
            return None

    def set_source(self, layer) -> None:
        """Preset the source layer (the menu command uses this)."""
        self.reset_choices()
        if layer is not None and not isinstance(layer, Image):
            raise InputError(
                f"'{layer.name}' is a {type(layer).__name__} layer; Upscale (RRIM x4) works on image layers"
            )
        if layer is not None and C.is_our_result(layer):  # not offered as a source: say why
            C.notify_info(f"'{layer.name}' was made by this plugin; upscale its source instead.")
            return
        if layer is not None:
            self.source.value = layer

    def rescan_weights(self, *_):
        """Look for weights again (files, plugins) and list them; keeps the selection if it is
        still there."""
        C.registry().weights(refresh=True)
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
        if not self._model_touched:
            self._on_source_changed()
        else:
            self._on_model_changed(touched=False)

    def _on_active_layer(self, event=None):
        layer = self._viewer.layers.selection.active
        if isinstance(layer, Image) and not self.busy and self.source.value is None and not C.is_our_result(layer):
            self.source.value = layer

    def _selected_sources(self) -> list:
        return [
            lay
            for lay in self._viewer.layers
            if lay in self._viewer.layers.selection and isinstance(lay, Image) and not C.is_our_result(lay)
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
        layer = self.source.value
        rgba = layer is not None and V.is_rgba(layer)
        self.fourth_band.visible = rgba
        self.band_info.visible = rgba
        if rgba:
            kind, why = V.classify_fourth_band(layer.data)
            with self.fourth_band.changed.blocked():
                self.fourth_band.value = kind
            self.band_info.value = why
        can_channels = layer is not None and not layer.rgb and layer.ndim >= 3
        self._can_channels = can_channels
        self.channels.visible = can_channels
        with self.channels.changed.blocked():
            self.channels.value = bool(can_channels and V.leading_axis_is_channels(layer))
        self._on_mode_changed()

    def _channel_mode(self, layer=None) -> str | None:
        """``"leading"`` (channel stack), ``"samples"`` (4 bands) or None (as napari shows it):
        the widget's answers for its source, the data's and metadata's for other layers."""
        layer = self.source.value if layer is None else layer
        if layer is None:
            return None
        if layer is self.source.value:
            return V.channel_mode(
                layer,
                fourth_band=str(self.fourth_band.value),
                channels=bool(self.channels.value and self._can_channels),
            )
        return V.channel_mode(layer)

    def views(self, layer=None) -> list:
        """What a run processes for ``layer``: the layer itself, or one channel view per
        channel/band (:mod:`.channel_views`)."""
        layer = self.source.value if layer is None else layer
        return V.channel_views(layer, self._channel_mode(layer))

    def _on_mode_changed(self, *_):
        layer = self.source.value
        mode = self._channel_mode()
        is_stack = layer is not None and L.is_stack(layer.ndim) and not (mode == "leading" and layer.ndim == 3)
        self.current_slice.visible = is_stack
        if layer is not None:
            self._auto_choose(layer)
        self._on_model_changed(touched=False)

    def _auto_choose(self, layer) -> None:
        ids = [v for v in (self.model.choices or ())]
        views = self.views(layer)
        rgb = bool(getattr(views[0], "rgb", False))
        try:
            choice = V.auto_choice(views[0].data, rgb=rgb, available_ids=ids, metadata=layer.metadata)
        except Exception as exc:
            log.debug("automatic model choice failed", exc_info=True)
            choice = None
            reason = f"could not measure the data ({exc})"
        else:
            reason = choice.reason
        if choice is None or choice.weights_id not in ids:
            wid = L.preselected_weights(layer.metadata, 3 if rgb else 1, ids, C.registry())
            from ..model_choice import ModelChoice

            reason = f"{reason}; using the default for {3 if rgb else 1}-channel data" if choice else reason
            choice = ModelChoice(wid, reason)
        if len(views) > 1:
            choice = replace(
                choice, reason=f"{views[0].name}: {choice.reason} (each channel is measured on its own at run time)"
            )
        self.choice = choice
        if not self._model_touched and choice.weights_id is not None:
            self._setting_model = True
            try:
                self.model.value = choice.weights_id
            finally:
                self._setting_model = False
        self._show_choice()

    def _show_choice(self) -> None:
        c = self.choice
        if c is None:
            self.choice_info.value = ""
        elif self._model_touched:
            self.choice_info.value = (
                f"Chosen by you. The automatic choice would be {c.weights_id or 'none'}: {c.reason}"
            )
        else:
            self.choice_info.value = f"Automatic: {c.reason}"

    def _on_model_changed(self, *_, touched: bool = True):
        if touched and not self._setting_model:
            self._model_touched = True
        wid = self.model.value
        entry = self._entry(wid) if wid else None
        if not wid:
            self.model_info.value = "⚠ " + J.no_weights_message()
        elif entry is None:
            self.model_info.value = f"⚠ unknown weights {wid!r}"
        else:
            self.model_info.value = C.describe_entry(entry)
        ids = [v for v in (self.model.choices or ())]
        pair = J.interpolation_pair(wid, ids) if wid else None
        self.alpha.visible = pair is not None
        if pair is not None:
            self.alpha.value = 0.0 if wid == pair[0] else 1.0
        self.run_button.enabled = bool(wid) and not self.busy
        self.export_button.enabled = bool(wid)
        self._show_choice()
        self._show_output_plan()

    # -- run -----------------------------------------------------------------------------
    def settings(self) -> J.UpscaleSettings:
        """The widget's values as one settings object."""
        return J.UpscaleSettings(
            weights_id=self.model.value or None,
            alpha=float(self.alpha.value),  # used only when the weights have a PSNR/GAN partner
            device=str(self.device.value),
            precision=str(self.precision.value),
            tile=int(self.tile.value) or None,
            normalization=str(self.normalization.value),
            percentiles=(float(self.p_low.value), float(self.p_high.value)),
            current_slice=bool(self.current_slice.value),
            self_ensemble=bool(self.self_ensemble.value),
            bicubic=bool(self.add_bicubic.value),
            metrics=bool(self.compute_metrics.value),
        )

    def _plan_layer(self, layer, settings, user_model: bool) -> list[_Item]:
        if not isinstance(layer, Image):
            raise InputError(
                f"'{layer.name}' is a {type(layer).__name__} layer; Upscale (RRIM x4) works on image layers"
            )
        views = self.views(layer)
        ids = [v for v in (self.model.choices or ())]
        items = []
        for view in views:
            if user_model:
                from ..model_choice import ModelChoice

                choice = ModelChoice(settings.weights_id, "chosen by the user")
            elif view is layer and layer is self.source.value and self.choice is not None:
                choice = self.choice
            else:
                choice = V.auto_choice(view.data, rgb=bool(view.rgb), available_ids=ids, metadata=layer.metadata)
                if choice.weights_id not in ids:
                    choice = replace(
                        choice, weights_id=settings.weights_id, reason=f"{choice.reason}; using {settings.weights_id}"
                    )
            s = replace(settings, weights_id=choice.weights_id)
            if view is not layer and view.ndim == 2:
                s = replace(s, current_slice=False)
            job = J.plan_upscale(view, s, point=self._viewer.dims.point, registry=self._registry())
            extra = {}
            if isinstance(view, V.ChannelView):
                extra = {"colormap": view.colormap, "blending": "additive"}
                if view.axis == "samples" and view.index == 3:
                    extra["visible"] = False  # NIR over true colour would wash it out
            items.append(_Item(job, layer, choice, view.name, extra))
        return items

    def make_jobs(self) -> list[_Item]:
        """Plan every run of the current settings (raises InputError before anything runs)."""
        layer = self.source.value
        sources = self._selected_sources() if (self.batch.value and self._batch_n > 1) else [layer]
        if not sources or sources[0] is None:
            raise InputError(
                "No image layer to upscale: open an image (File ▸ Open, or File ▸ "
                "Open Sample ▸ RRIM super-resolution) and pick it as source."
            )
        settings = self.settings()
        if not settings.weights_id:
            raise InputError(J.no_weights_message())
        items: list[_Item] = []
        for lay in sources:
            items.extend(self._plan_layer(lay, settings, self._model_touched))
        return items

    def make_job(self) -> J.UpscaleJob:
        """The job of the source layer alone (the first of a channel split)."""
        items = [it for it in self.make_jobs() if it.layer is self.source.value]
        return items[0].job

    def run(self, *_):
        """Start a run in a worker thread; returns the worker (None if nothing started)."""
        if self.busy:
            C.notify_info("An upscale run is already in progress; cancel it first.")
            return None
        try:
            plan = None if (self.batch.value and self._batch_n > 1) else self.output_plan()
            if plan is not None and plan[0] == "store":
                if not self.model.value:
                    raise InputError(J.no_weights_message())
                return self._run_to_store(self.source.value)
            items = self.make_jobs()
        except RRIMError as exc:
            self.status.value = f"⚠ {exc}"
            C.notify_error(str(exc))
            return None
        self._items = items
        self._job = items[0].job
        self._cancelled = False
        self._ptext.reset()
        self._started = 0
        self._t0 = time.monotonic()
        self._batch_pos = (0, len(items))
        self._gen = self._run_all(items)
        worker = create_worker(C.drive, self._gen, _start_thread=False)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        name = items[0].job.source.get("name")
        self._pbar = napari_progress(total=100, desc=f"RRIM: {name}")
        self.progress_bar.value = 0
        self.progress_bar.visible = True
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        job = items[0].job
        if len(items) > 1:
            what = f"{len(items)} images"
        else:
            what = "current slice" if job.slice_index else ("whole stack" if L.is_stack(job.ndim) else "image")
        self.status.value = f"Upscaling {what} of '{self._items[0].layer.name}'…"
        worker.start()
        return worker

    @staticmethod
    def _run_all(items):
        results = []
        for it in items:  # each run's first event is the engine's "starting": the widget counts them
            results.append((yield from J.run_upscale(it.job)))
        return results

    def cancel(self, *_):
        """Stop the run after the tile being processed; no layer is added."""
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
        if getattr(p, "message", "") == "starting":  # the next run of a batch begins
            self._started += 1
            i, n = self._started - 1, len(self._items)
            self._batch_pos = (i, n)
            label = self._items[min(i, n - 1)].label
            self._ptext.reset(prefix=f"{label} ({i + 1}/{n}): " if n > 1 else "")
        text, frac = self._ptext.update(p)
        i, n = self._batch_pos
        overall = (i + frac) / max(n, 1)
        pct = round(100 * overall)
        text += C.eta_text(time.monotonic() - self._t0, overall)
        if pct > self.progress_bar.value:
            self.progress_bar.value = pct
            if self._pbar is not None and pct > self._pbar.n:
                self._pbar.update(pct - self._pbar.n)
        if not self._cancelled:
            self.status.value = f"{text}…"

    def _on_returned(self, results):
        if self._cancelled or results is None:
            return
        if isinstance(results, C.Failure):
            stack = L.is_stack(self._job.ndim) and not self._job.slice_index
            msg = user_message(results.exc, stack=stack)
            if not C.check_error(results.exc):
                log.error("upscale run failed:\n%s", results.traceback)
            self.status.value = f"⚠ {msg}"
            C.notify_error(msg)
            return
        present = list(self._viewer.layers)
        added, dropped = [], []
        rr, bic = [], []  # the layers as napari named them ("… RRIM x4 [1]" on a second run)
        for it, result in zip(self._items, results):
            if not any(lay is it.layer for lay in present):
                dropped.append(it.label)
                continue
            extra = {"model_choice": it.choice.as_dict()} if it.choice is not None else {}
            if result.bicubic is not None:
                kw = result.layer_kwargs("bicubic", extra=extra)
                kw.update(it.layer_extra)
                bic.append(self._viewer.add_image(result.bicubic, **kw))
                added.append(bic[-1])
            kw = result.layer_kwargs("rrim", extra=extra)
            kw.update(it.layer_extra)
            rr.append(self._viewer.add_image(result.sr, **kw))
            added.append(rr[-1])
        self.last_results = list(results)
        self.last_layers = added
        if dropped and not added:
            self.status.value = f"'{self._items[0].layer.name}' was deleted during the run; no layer was added."
            C.notify_info(self.status.value)
            return
        self.last_result = results[-1]
        hidden = self._show_one_set([it.layer for it in self._items], rr) if self.one_set.value else []
        self._viewer.layers.selection.active = added[-1]
        result = results[-1]
        text = f"Added '{rr[-1].name}'" if len(rr) == 1 else f"Added {len(rr)} upscaled layers"
        if bic:
            text += f" and '{bic[-1].name}'" if len(bic) == 1 else " and their bicubic comparisons"
        text += f" in {sum(r.elapsed_s for r in results):.1f} s ({result.device}, {result.precision})."
        if hidden:
            text += " Hid the source and the bicubic/earlier results (tick their eye to compare)."
        if dropped:
            text += f" Skipped {', '.join(dropped)} (deleted during the run)."
        if result.metrics:
            m, b = result.metrics.get("model", {}), result.metrics.get("bicubic", {})
            if "psnr" in m and "psnr" in b:
                text += f" Self-check PSNR: model {float(m['psnr']):.2f} dB vs bicubic {float(b['psnr']):.2f} dB."
            self._show_metrics(result)
        self.status.value = text
        C.notify_info(text)

    def _show_one_set(self, sources: list, shown: list) -> list:
        """Hide every layer but the new model results among the sources and our results of
        them (issue 24 #5: additive layers on top of each other wash out); returns the hidden."""
        hide = []
        names = {lay.name for lay in sources}
        keep = {id(lay) for lay in shown}
        for lay in self._viewer.layers:
            if id(lay) in keep or not lay.visible:
                continue
            rec = (lay.metadata or {}).get(L.META_KEY) if isinstance(lay, Image) else None
            src = rec.get("source_layer", "") if isinstance(rec, dict) else None
            mine = any(lay is s for s in sources) or (
                isinstance(src, str)
                and C.is_our_result(lay)
                and any(src == n or src.startswith(n + " [") for n in names)
            )
            if mine:
                lay.visible = False
                hide.append(lay)
        return hide

    def _show_metrics(self, result) -> None:
        try:
            _, widget = self._viewer.window.add_plugin_dock_widget(PLUGIN_NAME, METRICS_WIDGET_NAME)
        except Exception:  # pragma: no cover - headless viewer without a window
            log.debug("could not open the metrics widget", exc_info=True)
            return
        widget = getattr(widget, "__wrapped__", widget)
        if hasattr(widget, "show_results"):
            name = result.job.source.get("name")
            source = self._viewer.layers[name] if name in self._viewer.layers else None  # noqa: SIM401 - no .get
            widget.show_results(
                result.metrics,
                title=f"Self-check of '{name}' with {result.model.get('model_id')}",
                source=source,
                weights_id=result.job.weights_id,
            )

    def _on_finished(self, *_):
        if self._cancelled:
            if self._gen is not None:
                try:  # run the engine's cleanup (finally blocks) now, not at garbage collection
                    self._gen.close()
                except Exception:  # pragma: no cover
                    log.debug("closing the cancelled run failed", exc_info=True)
            C.release_memory()
            self.status.value = "Cancelled; no layer was added."
        self._gen = None
        self._worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        try:
            self.progress_bar.visible = False
            self.cancel_button.enabled = False
            self.run_button.enabled = bool(self.model.value)
        except RuntimeError:  # pragma: no cover - the dock was closed and deleted
            pass
