"""The two dock widgets: *Upscale (RRIM x4)* and *Super-resolution metrics*.

Both are magicgui ``Container`` s. Heavy work runs in napari ``thread_worker`` s (generators),
so the viewer stays responsive; the upscale worker yields once per tile/slice (progress bar,
Cancel checked between tiles). The rules for result layers (names, alignment, appearance,
provenance) are in the Qt-free :mod:`napari_rrim_sr.layers`; this module only wires them.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
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
    Table,
)
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info

from .. import job as J
from .. import layer_metrics as LM
from .. import layers as L
from ..devices import device_choices
from ..errors import InputError, RRIMError, user_message
from . import METRICS_WIDGET_NAME, PLUGIN_NAME

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# -- helpers ---------------------------------------------------------------------------------

@dataclass
class Failure:
    """An exception caught in a worker thread (superqt swallows RuntimeErrors, e.g. CUDA OOM,
    as "worker deleted" warnings, so the worker returns failures instead of raising them)."""

    exc: BaseException
    traceback: str


def _drive(gen):
    """Worker body: run ``gen`` to its return value; never raise."""
    try:
        return (yield from gen)
    except Exception as exc:  # noqa: BLE001 - reported to the user in the GUI thread
        _release_memory()
        return Failure(exc, traceback.format_exc())


def _release_memory() -> None:
    try:
        from ..devices import release_memory

        release_memory(None)
    except Exception:  # pragma: no cover - best effort
        log.debug("could not release device memory", exc_info=True)


def _registry():
    from ..registry import get_registry

    return get_registry()


def _image_layers(viewer) -> list:
    return [lay for lay in viewer.layers if isinstance(lay, Image)]


def _wrap_label(label: Label) -> Label:
    try:
        label.native.setWordWrap(True)
    except AttributeError:  # pragma: no cover - non-Qt backend
        pass
    return label


class _LayerChoices:
    """Keeps ComboBoxes of image layers in sync with the viewer (insert/remove/rename)."""

    def __init__(self, viewer, widget: Container):
        self._viewer = viewer
        self._widget = widget
        ev = viewer.layers.events
        ev.inserted.connect(self._on_inserted)
        ev.removed.connect(self._refresh)
        ev.moved.connect(self._refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self._refresh)

    def _on_inserted(self, event=None):
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self._refresh)
        self._refresh()

    def _refresh(self, event=None):
        try:
            self._widget.reset_choices()
        except RuntimeError:  # pragma: no cover - Qt object already deleted
            pass

    def choices(self, _widget=None):
        return [(lay.name, lay) for lay in _image_layers(self._viewer)]


def _weights_choices(_widget=None):
    return [(f"{e.id}  (x{e.scale}, {e.in_channels}->{e.out_channels} ch)", e.id)
            for e in _registry().weights()]


def _describe_weights(weights_id: str | None) -> str:
    if not weights_id:
        return "⚠ " + J.no_weights_message()
    try:
        e = _registry().find_weights(weights_id)
    except RRIMError as exc:
        return f"⚠ {exc}"
    desc = e.description or "no description"
    untrained = ""
    if not (e.metadata.get("recipe") or e.metadata.get("metrics")):
        untrained = " (no training recipe or metrics recorded)"
    return (f"{e.backbone} · x{e.scale} · {e.in_channels}→{e.out_channels} channels · "
            f"{e.source}: {desc}{untrained}")


# -- the upscale widget ----------------------------------------------------------------------

class UpscaleWidget(Container):
    """Upscale an image layer x4 with a registered model (and bicubic, for comparison)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        self._viewer = napari_viewer
        self._layer_choices = _LayerChoices(napari_viewer, self)
        self._model_touched = False
        self._worker = None
        self._gen = None
        self._pbar = None
        self._cancelled = False
        #: the last completed run (an ``UpscaleResult``), for scripting and tests
        self.last_result = None
        #: the layers added by the last completed run
        self.last_layers: list = []

        self.source = ComboBox(label="Source layer", choices=self._layer_choices.choices,
                               tooltip="The image layer to upscale (never modified).")
        self.model = ComboBox(label="Model", choices=_weights_choices,
                              tooltip="Weights from the registry: shipped, user folder, plugins.")
        self.rescan = PushButton(text="Rescan weights")
        self.model_info = _wrap_label(Label(value=""))
        self.alpha = FloatSlider(
            label="PSNR ↔ GAN (α)", min=0.0, max=1.0, step=0.05, value=0.0, visible=False,
            tooltip="Network interpolation between the PSNR- and GAN-trained weights of the "
                    "same backbone: 0 = PSNR (smoother, higher PSNR), 1 = GAN (sharper texture).",
        )
        self.device = ComboBox(label="Device", choices=device_choices(), value="auto")
        self.precision = ComboBox(label="Precision", choices=PRECISIONS, value="auto",
                                  tooltip="auto: bf16 where the hardware runs it natively, else fp32.")
        self.tile = SpinBox(label="Tile size (0 = auto)", min=0, max=8192, step=16, value=0,
                            tooltip="Input tile edge in pixels; smaller tiles use less memory.")
        self.normalization = ComboBox(
            label="Normalisation", choices=list(J.NORMALIZATION_CHOICES), value="auto",
            tooltip="auto: dtype range when the data use it, else the data's min..max "
                    "(e.g. 12-bit values in uint16); percentiles: robust to hot pixels.",
        )
        self.p_low = FloatSpinBox(label="Low percentile", min=0.0, max=100.0, step=0.1, value=0.1,
                                  visible=False)
        self.p_high = FloatSpinBox(label="High percentile", min=0.0, max=100.0, step=0.1,
                                   value=99.9, visible=False)
        self.current_slice = CheckBox(text="Current slice only", value=True, visible=False,
                                      tooltip="For stacks: upscale only the displayed slice "
                                              "(unticked: the whole stack).")
        self.self_ensemble = CheckBox(
            text="Self-ensemble (x8 time)", value=False,
            tooltip="Average the model over the 8 rotations/flips of the input: slightly "
                    "higher fidelity (+0.04 dB PSNR on Kodak24) for eight times the compute.",
        )
        self.add_bicubic = CheckBox(text="Add bicubic comparison", value=True)
        self.compute_metrics = CheckBox(
            text="Compute metrics (self-check)", value=False,
            tooltip="Downscale the source x1/4, upscale it with the model and with bicubic and "
                    "score both against the source (RMSE, PSNR, SSIM, FSIM).",
        )
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal",
                            labels=False)
        self.progress_bar = ProgressBar(value=0, min=0, max=100, visible=False, label="Progress")
        self.status = _wrap_label(Label(value=""))
        super().__init__(
            widgets=[
                self.source, self.model, self.rescan, self.model_info, self.alpha, self.device,
                self.precision, self.tile, self.normalization, self.p_low, self.p_high,
                self.current_slice, self.self_ensemble, self.add_bicubic, self.compute_metrics, buttons,
                self.progress_bar, self.status,
            ],
            labels=True,
        )
        self.source.changed.connect(self._on_source_changed)
        self.model.changed.connect(self._on_model_changed)
        self.rescan.changed.connect(self.rescan_weights)
        self.normalization.changed.connect(self._on_norm_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self._viewer.layers.selection.events.active.connect(self._on_active_layer)
        active = self._viewer.layers.selection.active
        if isinstance(active, Image):
            self.source.value = active
        self._on_source_changed()
        self._on_model_changed(touched=False)

    # -- state ---------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def worker(self):
        """The running worker (None when idle)."""
        return self._worker

    def set_source(self, layer) -> None:
        """Preset the source layer (the menu command uses this)."""
        self.reset_choices()
        if layer is not None and not isinstance(layer, Image):
            raise InputError(
                f"'{layer.name}' is a {type(layer).__name__} layer; Upscale (RRIM x4) works on "
                "image layers"
            )
        if layer is not None:
            self.source.value = layer

    def rescan_weights(self, *_):
        _registry().weights(refresh=True)
        with self.model.changed.blocked():
            self.model.reset_choices()
        self._on_source_changed()

    def _on_active_layer(self, event=None):
        layer = self._viewer.layers.selection.active
        if isinstance(layer, Image) and not self.busy and self.source.value is None:
            self.source.value = layer

    def _on_source_changed(self, *_):
        layer = self.source.value
        is_stack = layer is not None and L.is_stack(layer.ndim)
        self.current_slice.visible = is_stack
        if layer is not None and not self._model_touched:
            default = L.preselected_weights(layer.metadata, 3 if layer.rgb else 1,
                                            self.model.choices or (), _registry())
            if default is not None:
                with self.model.changed.blocked():  # a default is not the user's choice
                    self.model.value = default
        self._on_model_changed(touched=False)

    def _on_model_changed(self, *_, touched: bool = True):
        if touched:
            self._model_touched = True
        wid = self.model.value
        self.model_info.value = _describe_weights(wid)
        pair = J.interpolation_pair(wid, J.available_weight_ids(_registry())) if wid else None
        self.alpha.visible = pair is not None
        if pair is not None:
            self.alpha.value = 0.0 if wid == pair[0] else 1.0
        self.run_button.enabled = bool(wid) and not self.busy

    def _on_norm_changed(self, *_):
        pct = self.normalization.value == "percentile"
        self.p_low.visible = pct
        self.p_high.visible = pct

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

    def make_job(self) -> J.UpscaleJob:
        """Plan a run of the source layer with the widget's settings (raises InputError)."""
        layer = self.source.value
        if layer is None:
            raise InputError("No image layer to upscale: open an image (File ▸ Open, or File ▸ "
                             "Open Sample ▸ RRIM super-resolution) and pick it as source.")
        if not isinstance(layer, Image):
            raise InputError(f"'{layer.name}' is a {type(layer).__name__} layer; Upscale (RRIM x4) "
                             "works on image layers")
        return J.plan_upscale(layer, self.settings(), point=self._viewer.dims.point, registry=_registry())

    def run(self, *_):
        """Start a run in a worker thread; returns the worker (None if nothing started)."""
        if self.busy:
            show_info("An upscale run is already in progress; cancel it first.")
            return None
        try:
            job = self.make_job()
        except RRIMError as exc:
            self.status.value = f"⚠ {exc}"
            show_error(str(exc))
            return None
        self._job = job
        self._cancelled = False
        self._gen = J.run_upscale(job)
        worker = create_worker(_drive, self._gen, _start_thread=False)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._pbar = napari_progress(total=100, desc=f"RRIM x4: {job.source.get('name')}")
        self.progress_bar.value = 0
        self.progress_bar.visible = True
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        what = "current slice" if job.slice_index else (
            "whole stack" if L.is_stack(job.ndim) else "image")
        self.status.value = f"Upscaling {what} of '{job.source.get('name')}'…"
        worker.start()
        return worker

    def cancel(self, *_):
        """Stop the run after the tile being processed; no layer is added."""
        if self._worker is None:
            return
        self._cancelled = True
        self.status.value = "Cancelling after the current tile…"
        self._worker.quit()

    def _on_yielded(self, p):
        frac = getattr(p, "fraction", None)
        if frac is None:
            tt = max(int(getattr(p, "tiles_total", 0) or 0), 1)
            frac = float(getattr(p, "tiles_done", 0)) / tt
        pct = int(round(100 * min(max(float(frac), 0.0), 1.0)))
        tiles_total = int(getattr(p, "tiles_total", 0) or 0)
        if tiles_total:
            text = f"tile {p.tiles_done}/{tiles_total}"
            if int(getattr(p, "slices_total", 1) or 1) > 1:
                text += f", slice {p.slices_done}/{p.slices_total}"
            self.progress_bar.value = pct
            if self._pbar is not None and pct > self._pbar.n:
                self._pbar.update(pct - self._pbar.n)
        else:
            text = getattr(p, "message", "") or "working"
        if not self._cancelled:
            self.status.value = f"{text}…"

    def _on_returned(self, result):
        if self._cancelled or result is None:
            return
        if isinstance(result, Failure):
            stack = L.is_stack(self._job.ndim) and not self._job.slice_index
            msg = user_message(result.exc, stack=stack)
            if not isinstance(result.exc, (RRIMError, MemoryError)):
                log.error("upscale run failed:\n%s", result.traceback)
            self.status.value = f"⚠ {msg}"
            show_error(msg)
            return
        self.last_result = result
        added = []
        if result.bicubic is not None:
            added.append(self._viewer.add_image(result.bicubic, **result.layer_kwargs("bicubic")))
        added.append(self._viewer.add_image(result.sr, **result.layer_kwargs("rrim")))
        self.last_layers = added
        self._viewer.layers.selection.active = added[-1]
        text = (f"Added '{added[-1].name}'" + (f" and '{added[0].name}'" if len(added) > 1 else "")
                + f" in {result.elapsed_s:.1f} s ({result.device}, {result.precision}).")
        if result.metrics:
            m, b = result.metrics.get("model", {}), result.metrics.get("bicubic", {})
            if "psnr" in m and "psnr" in b:
                text += (f" Self-check PSNR: RRIM {float(m['psnr']):.2f} dB vs bicubic "
                         f"{float(b['psnr']):.2f} dB.")
            self._show_metrics(result)
        self.status.value = text
        show_info(text)

    def _show_metrics(self, result) -> None:
        try:
            _, widget = self._viewer.window.add_plugin_dock_widget(PLUGIN_NAME, METRICS_WIDGET_NAME)
        except Exception:  # pragma: no cover - headless viewer without a window
            log.debug("could not open the metrics widget", exc_info=True)
            return
        widget = getattr(widget, "__wrapped__", widget)
        if hasattr(widget, "show_results"):
            name = result.job.source.get("name")
            source = self._viewer.layers[name] if name in self._viewer.layers else None
            widget.show_results(result.metrics, title=f"Self-check of '{name}' with {result.model.get('model_id')}",
                                source=source, weights_id=result.job.weights_id)

    def _on_finished(self, *_):
        if self._cancelled:
            if self._gen is not None:
                try:  # run the engine's cleanup (finally blocks) now, not at garbage collection
                    self._gen.close()
                except Exception:  # pragma: no cover
                    log.debug("closing the cancelled run failed", exc_info=True)
            _release_memory()
            self.status.value = "Cancelled; no layer was added."
        self._gen = None
        self._worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.progress_bar.visible = False
        self.cancel_button.enabled = False
        self.run_button.enabled = bool(self.model.value)


# -- the metrics widget ----------------------------------------------------------------------

class MetricsWidget(Container):
    """RMSE / PSNR / SSIM / FSIM of an SR layer (and its bicubic sibling) against a reference,
    or a self-check of a source layer through a model."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        self._viewer = napari_viewer
        self._layer_choices = _LayerChoices(napari_viewer, self)
        self._worker = None
        #: the last result shown: ``{"model": {...}, "bicubic": {...}, "convention": str}``
        self.last_result: dict | None = None
        self.mode = ComboBox(label="Mode", value="compare", choices=[
            ("Compare an SR layer with a reference", "compare"),
            ("Self-check a source layer", "self"),
        ])
        self.sr_layer = ComboBox(label="SR layer", choices=self._layer_choices.choices)
        self.bicubic_layer = ComboBox(label="Bicubic layer", nullable=True,
                                      choices=self._layer_choices.choices)
        self.reference = ComboBox(label="Reference (HR)", choices=self._layer_choices.choices)
        self.source = ComboBox(label="Source layer", choices=self._layer_choices.choices,
                               visible=False)
        self.model = ComboBox(label="Model", choices=_weights_choices, visible=False)
        self.y_channel = CheckBox(text="Y channel for RGB (BT.601)", value=True,
                                  tooltip="The SR papers' convention; gray layers are scored as "
                                          "they are.")
        self.border = SpinBox(label="Border (px)", min=0, max=256, value=4)
        self.data_range = ComboBox(label="Data range", value="auto", choices=list(LM.DATA_RANGE_CHOICES))
        self.error_maps = CheckBox(text="Add error maps |SR − HR|", value=False)
        self.compute_button = PushButton(text="Compute")
        self.title = _wrap_label(Label(value=""))
        self.table = Table(value={"data": [], "index": [], "columns": []})
        self.table.min_height = 170
        self.convention = _wrap_label(Label(value=""))
        super().__init__(widgets=[
            self.mode, self.sr_layer, self.bicubic_layer, self.reference, self.source, self.model,
            self.y_channel, self.border, self.data_range, self.error_maps, self.compute_button,
            self.title, self.table, self.convention,
        ], labels=True)
        self.mode.changed.connect(self._on_mode)
        self.sr_layer.changed.connect(self._on_sr_changed)
        self.compute_button.changed.connect(self.compute)
        for lay in reversed(_image_layers(napari_viewer)):  # the newest RRIM result, if any
            parsed = L.parse_result_name(lay.name)
            if parsed and parsed[1] == "rrim":
                self.sr_layer.value = lay
                break
        self._on_sr_changed()

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _on_mode(self, *_):
        compare = self.mode.value == "compare"
        for w in (self.sr_layer, self.bicubic_layer, self.reference):
            w.visible = compare
        for w in (self.source, self.model):
            w.visible = not compare

    def _on_sr_changed(self, *_):
        """Preselect the bicubic sibling, a same-shape reference and the source of an SR
        result layer."""
        sr = self.sr_layer.value
        if sr is None:
            return
        layers = _image_layers(self._viewer)
        names = {lay.name: lay for lay in layers}
        ref = self.reference.value
        if ref is None or ref is sr or tuple(ref.data.shape) != tuple(sr.data.shape):
            for lay in layers:
                if (lay is not sr and L.parse_result_name(lay.name) is None
                        and tuple(lay.data.shape) == tuple(sr.data.shape)):
                    self.reference.value = lay
                    break
        sib = L.sibling_name(sr.name, "bicubic")
        if sib in names:
            self.bicubic_layer.value = names[sib]
        parsed = L.parse_result_name(sr.name)
        if parsed and parsed[0] in names and self.source.value is None:
            self.source.value = names[parsed[0]]

    # -- compute ---------------------------------------------------------------------------
    def compute(self, *_):
        """Compute in a worker thread; returns the worker (None if nothing started)."""
        if self.busy:
            show_info("Metrics are already being computed.")
            return None
        try:
            gen, context = self._make_task()
        except RRIMError as exc:
            self.title.value = f"⚠ {exc}"
            show_error(str(exc))
            return None
        worker = create_worker(_drive, gen, _start_thread=False)
        worker.returned.connect(lambda res: self._on_returned(res, context))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.compute_button.enabled = False
        self.title.value = "Computing…"
        worker.start()
        return worker

    def _make_task(self):
        rgb_y = bool(self.y_channel.value)
        border = int(self.border.value)
        range_choice = str(self.data_range.value)
        if self.mode.value == "compare":
            sr, ref, bic = self.sr_layer.value, self.reference.value, self.bicubic_layer.value
            LM.check_comparable(sr, ref, bic)
            ctx = {"mode": "compare", "sr": sr, "ref": ref, "bic": bic,
                   "title": f"'{sr.name}' vs '{ref.name}'"}
            gen = self._compare_task(np.asarray(sr.data), np.asarray(ref.data),
                                     None if bic is None else np.asarray(bic.data),
                                     rgb=bool(ref.rgb), y_channel=rgb_y and bool(ref.rgb), border=border,
                                     range_choice=range_choice,
                                     error_maps=bool(self.error_maps.value))
            return gen, ctx
        src, wid = self.source.value, self.model.value
        if src is None:
            raise InputError("Pick a source layer to self-check.")
        if not wid:
            raise InputError(J.no_weights_message())
        if src.multiscale:
            raise InputError(f"'{src.name}' is multiscale; metrics need plain layers")
        plane, slice_index = J.current_plane(src, self._viewer.dims.point)
        ctx = {"mode": "self", "src": src, "slice_index": slice_index,
               "title": f"Self-check of '{src.name}' with {wid}"}
        gen = self._self_check_task(plane, wid, rgb=bool(src.rgb), y_channel=rgb_y and bool(src.rgb),
                                    border=border, range_choice=range_choice,
                                    error_maps=bool(self.error_maps.value))
        return gen, ctx

    def _compare_task(self, sr, ref, bic, **kw):
        yield "metrics"
        return LM.compare_layers(sr, ref, bic, **kw)

    def _self_check_task(self, plane, weights_id, **kw):
        yield "self-check"
        return J.self_check(plane, weights_id, registry=_registry(), **kw)

    def _on_returned(self, result, ctx):
        if isinstance(result, Failure):
            msg = user_message(result.exc)
            if not isinstance(result.exc, (RRIMError, MemoryError)):
                log.error("metrics failed:\n%s", result.traceback)
            self.title.value = f"⚠ {msg}"
            show_error(msg)
            return
        res, maps = result
        self.show_results(res, title=ctx["title"])
        for kind, err in maps.items():
            self._add_error_map(err, kind, ctx)

    def _add_error_map(self, err, kind, ctx):
        if ctx["mode"] == "compare":
            data, kw = L.error_map_layer(err, kind, reference=ctx["ref"],
                                         compared=ctx["sr"] if kind == "model" else ctx["bic"])
        else:
            data, kw = L.error_map_layer(err, kind, source=ctx["src"], slice_index=ctx["slice_index"])
        self._viewer.add_image(data, **kw)

    def show_results(self, result: dict, *, title: str = "", source=None,
                     weights_id: str | None = None) -> None:
        """Fill the table from ``{"model": {...}, "bicubic": {...}, "convention": str}``;
        ``source``/``weights_id`` (a self-check made elsewhere) set the self-check fields too."""
        if source is not None:
            self.reset_choices()
            self.mode.value = "self"
            self._on_mode()
            if source in [lay for lay in _image_layers(self._viewer)]:
                self.source.value = source
            if weights_id and weights_id in (self.model.choices or ()):
                self.model.value = weights_id
        table = LM.metrics_table(result)
        # numbers stay numbers (the table shows 4 decimals; scripts read full precision)
        self.table.value = {"data": table["data"], "index": table["index"],
                            "columns": table["columns"]}
        self.title.value = title
        self.convention.value = "Convention: " + table["convention"] if table["convention"] else ""
        self.last_result = result

    def _on_finished(self, *_):
        self._worker = None
        self.compute_button.enabled = True
