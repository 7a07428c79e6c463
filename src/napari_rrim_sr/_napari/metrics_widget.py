"""The *Super-resolution metrics* dock widget: RMSE / PSNR / SSIM / FSIM of an SR layer (and its
bicubic sibling) against a reference, or a self-check of a source layer through a model.

Thin wiring of :mod:`napari_rrim_sr.quality.layer_metrics` and :func:`napari_rrim_sr.pipeline.selfcheck.self_check_iter`
(run in a worker with progress and Cancel). The self-check uses the model the *Upscale* widget
has selected for the same layer, else the automatic choice for the data, and says which.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    Table,
)
from napari.qt.threading import create_worker

from napari_rrim_sr._napari import _common as C
from napari_rrim_sr._napari import _fit as F
from napari_rrim_sr.errors import InputError, RRIMError, user_message
from napari_rrim_sr.io import geometry as L
from napari_rrim_sr.io.geometry import current_plane
from napari_rrim_sr.pipeline import no_weights_message
from napari_rrim_sr.pipeline.selfcheck import self_check_iter
from napari_rrim_sr.quality import layer_metrics as LM

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

#: what ``auto`` does (:func:`napari_rrim_sr.quality.layer_metrics.metrics_data_range`), said as it is
DATA_RANGE_TOOLTIP = (
    "The range PSNR/SSIM are relative to (the range used is stated under the table). auto: 255 for "
    "8-bit data; for 16-bit (integer) data the dtype's range when the reference uses at least a "
    "quarter of it, else the reference's max − min (e.g. 12-bit data stored as uint16); for float "
    "data the reference's max − min. 'dtype range' and 'reference min-max' force one of them."
)

#: fixed decimals per metric row of the table (RMSE: from its magnitude, see :func:`_rmse_decimals`)
METRIC_DECIMALS = {"PSNR (dB)": 2, "SSIM": 4, "FSIM": 4, "FSIMc": 4}


def _rmse_decimals(values) -> int:
    """One number of decimals for a whole RMSE row: 4 significant digits of its largest value."""
    finite = [abs(float(v)) for v in values if np.isfinite(v)]
    big = max(finite, default=0.0)
    if big >= 1000:
        return 0
    if big >= 1:
        return 3 - int(np.floor(np.log10(big)))
    return 4 if big >= 0.01 or big == 0 else 6


def metric_formats(index, data) -> list[str]:
    """One ``str.format`` pattern per table row: the same fixed decimals across a metric's row
    (no "0.1648" next to "-8.773e-04")."""
    out = []
    for label, row in zip(index, data):
        nd = METRIC_DECIMALS.get(str(label))
        if nd is None:
            nd = _rmse_decimals(row)
        out.append(f"{{:.{nd}f}}")
    return out


class MetricsWidget(C.ScrollableContainer):
    """RMSE / PSNR / SSIM / FSIM of an SR layer (and its bicubic sibling) against a reference,
    or a self-check of a source layer through a model."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self._viewer = napari_viewer
        self._layer_choices = C.LayerChoices(napari_viewer, self)
        self._worker = None
        self._cancelled = False
        self._model_touched = False
        self._setting_model = False
        self._ptext = C.ProgressText()
        #: layers the table describes (cleared when one is deleted)
        self._shown_layers: list = []
        #: the last result shown: ``{"model": {...}, "bicubic": {...}, "convention": str}``
        self.last_result: dict | None = None
        self.mode = ComboBox(
            label="Mode",
            value="compare",
            choices=[
                ("Compare an SR layer with a reference", "compare"),
                ("Self-check a source layer", "self"),
            ],
            tooltip="Compare: score an upscaled layer against a high-resolution reference. Self-check: "
            "downscale a layer, upscale it back and score against the original.",
        )
        self.sr_layer = ComboBox(
            label="SR layer", choices=self._layer_choices.choices, tooltip="The upscaled layer to score."
        )
        self.bicubic_layer = ComboBox(
            label="Bicubic layer",
            nullable=True,
            choices=self._layer_choices.choices,
            tooltip="Optional: the bicubic comparison of the same run, scored too.",
        )
        self.reference = ComboBox(
            label="Reference (HR)",
            nullable=True,  # empty rather than the SR layer itself when only one layer is open
            choices=self._layer_choices.choices,
            tooltip="The high-resolution ground truth, same shape as the SR layer.",
        )
        self.source = ComboBox(
            label="Source layer",
            choices=self._layer_choices.source_choices,
            visible=False,
            tooltip="The layer to self-check (its displayed plane).",
        )
        self.model = ComboBox(
            label="Model",
            choices=lambda _w=None: [(C.entry_label(e), e.id) for e in C.registry().weights()],
            visible=False,
            tooltip="The model to self-check: follows the Upscale widget's selection "
            "for the same layer (see the note below); pick another to override.",
        )
        self.model_note = C.wrap_label(Label(value="", visible=False))
        self.y_channel = CheckBox(
            text="Y channel for RGB (BT.601)",
            value=True,
            tooltip="The SR papers' convention; gray layers are scored as they are.",
        )
        self.border = SpinBox(
            label="Border (px)",
            min=0,
            max=256,
            value=4,
            tooltip="Pixels ignored along each edge (the papers crop the scale factor).",
        )
        self.data_range = ComboBox(
            label="Data range",
            value="auto",
            choices=list(LM.DATA_RANGE_CHOICES),
            tooltip=DATA_RANGE_TOOLTIP,
        )
        self.error_maps = CheckBox(
            text="Add error maps |SR − HR|", value=False, tooltip="Add the absolute error images as layers."
        )
        self.compute_button = PushButton(text="Compute", tooltip="Compute the metrics (in the background).")
        self.cancel_button = PushButton(text="Cancel", enabled=False, tooltip="Stop a self-check in progress.")
        buttons = Container(widgets=[self.compute_button, self.cancel_button], layout="horizontal", labels=False)
        self.progress_bar = ProgressBar(
            value=0, min=0, max=100, visible=False, label="Progress", tooltip="Progress of the self-check."
        )
        self.title = C.wrap_label(Label(value=""))
        self.table = Table(value={"data": [], "index": [], "columns": []})
        self.table.min_height = 150
        self.table.tooltip = "Metrics (higher is better except RMSE)."
        self._formats = _FixedFormats(self.table.native)
        self.convention = C.wrap_label(Label(value=""))
        super().__init__(
            widgets=[
                self.mode,
                self.sr_layer,
                self.bicubic_layer,
                self.reference,
                self.source,
                self.model,
                self.model_note,
                self.y_channel,
                self.border,
                self.data_range,
                self.error_maps,
                buttons,
                self.progress_bar,
                self.title,
                self.table,
                self.convention,
            ],
            labels=True,
        )
        C.fit_dock(self)
        for combo in (
            self.mode,
            self.sr_layer,
            self.bicubic_layer,
            self.reference,
            self.source,
            self.model,
            self.data_range,
        ):
            F.shrinkable(combo)  # the dock keeps its width (no sideways scrolling)
        self.mode.changed.connect(self._on_mode)
        self.sr_layer.changed.connect(self._on_sr_changed)
        self.source.changed.connect(self._sync_model)
        self.model.changed.connect(self._on_model_changed)
        self.compute_button.changed.connect(self.compute)
        self.cancel_button.changed.connect(self.cancel)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        napari_viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self._detach = C.on_detached(self, self.cancel)
        for lay in reversed(C.image_layers(napari_viewer)):  # the newest RRIM result, if any
            parsed = L.parse_result_name(lay.name)
            if parsed and parsed[1] == "rrim":
                self.sr_layer.value = lay
                break
        self._on_sr_changed()
        self._distinct_defaults()

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _distinct_defaults(self) -> None:
        """The SR and reference boxes never start on the same layer (nor the bicubic box)."""
        sr, ref = self.sr_layer.value, self.reference.value
        layers = C.image_layers(self._viewer)
        if sr is not None and (ref is sr or ref is None):
            others = [lay for lay in layers if lay is not sr]
            same = [lay for lay in others if tuple(lay.data.shape) == tuple(sr.data.shape)]
            if same or others:
                self.reference.value = (same or others)[0]
            elif ref is sr:  # the only layer: no reference yet (not the SR layer itself)
                self.reference.value = None
        if self.bicubic_layer.value is not None and self.bicubic_layer.value in (
            self.sr_layer.value,
            self.reference.value,
        ):
            self.bicubic_layer.value = None

    def _on_mode(self, *_):
        compare = self.mode.value == "compare"
        if str(self.title.value).startswith("⚠"):  # an error of the other mode's inputs
            self.title.value = ""
        for w in (self.sr_layer, self.bicubic_layer, self.reference):
            w.visible = compare
        for w in (self.source, self.model, self.model_note):
            w.visible = not compare
        if not compare:
            self._sync_model()

    def _on_model_changed(self, *_):
        if not self._setting_model:
            self._model_touched = True
            self.model_note.value = f"Model chosen by you: {self.model.value}"

    def _set_model(self, wid) -> None:
        self._setting_model = True
        try:
            self.model.value = wid
        finally:
            self._setting_model = False

    def _sync_model(self, *_):
        """Use the Upscale widget's selection for the same layer, else the automatic choice for
        the data; the note says which."""
        if self._model_touched:
            return
        src = self.source.value
        ids = list(self.model.choices or ())
        up = C.upscale_widget_of(self._viewer)
        if up is not None and src is not None and up.source.value is src and up.model.value in ids:
            self._set_model(up.model.value)
            why = "your choice there" if up._model_touched else (up.choice.reason if up.choice else "its default")
            self.model_note.value = f"Uses the Upscale widget's model for '{src.name}': {up.model.value} ({why})"
            return
        if src is None:
            self.model_note.value = ""
            return
        from napari_rrim_sr._napari.channel_views import auto_choice

        try:
            choice = auto_choice(src.data, rgb=bool(src.rgb), available_ids=ids, metadata=src.metadata)
        except Exception as exc:  # noqa: BLE001 - never block the widget
            self.model_note.value = f"Could not measure '{src.name}' ({exc}); using {self.model.value}"
            return
        if choice.weights_id in ids:
            self._set_model(choice.weights_id)
            self.model_note.value = f"Chosen from the data of '{src.name}': {choice.reason}"
        else:
            self.model_note.value = f"Using {self.model.value} ({choice.reason})"

    def _on_sr_changed(self, *_):
        """Preselect the bicubic sibling, a same-shape reference and the source of an SR
        result layer."""
        sr = self.sr_layer.value
        if sr is None:
            return
        layers = C.image_layers(self._viewer)
        names = {lay.name: lay for lay in layers}
        ref = self.reference.value
        if ref is None or ref is sr or tuple(ref.data.shape) != tuple(sr.data.shape):
            for lay in layers:
                if (
                    lay is not sr
                    and L.parse_result_name(lay.name) is None
                    and tuple(lay.data.shape) == tuple(sr.data.shape)
                ):
                    self.reference.value = lay
                    break
        sib = L.sibling_name(sr.name, "bicubic")
        if sib in names:
            self.bicubic_layer.value = names[sib]
        parsed = L.parse_result_name(sr.name)
        if parsed and parsed[0] in names and self.source.value is None:
            self.source.value = names[parsed[0]]

    # -- stale state -------------------------------------------------------------------------
    def clear(self, title: str = "") -> None:
        """Empty the table (its numbers no longer describe what is on screen)."""
        self.table.value = {"data": [], "index": [], "columns": []}
        self.convention.value = ""
        self.title.value = title
        self.last_result = None
        self._shown_layers = []

    def _on_layer_inserted(self, event=None):
        """A layer added later becomes the reference when there was none (one layer was open)."""
        try:
            if self.reference.value is None or self.reference.value is self.sr_layer.value:
                self._on_sr_changed()
                self._distinct_defaults()
        except RuntimeError:  # pragma: no cover - this widget was closed (Qt object deleted)
            pass

    def _on_layer_removed(self, event=None):
        gone = getattr(event, "value", None)
        if gone is not None and any(gone is lay for lay in self._shown_layers):
            try:
                self.clear(f"'{gone.name}' was deleted; its metrics were cleared.")
            except RuntimeError:  # pragma: no cover - this widget was closed (Qt object deleted)
                pass

    # -- compute ---------------------------------------------------------------------------
    def compute(self, *_):
        """Compute in a worker thread; returns the worker (None if nothing started)."""
        if self.busy:
            C.notify_info("Metrics are already being computed.")
            return None
        try:
            gen, context = self._make_task()
        except RRIMError as exc:
            self.clear(f"⚠ {exc}")
            C.notify_error(str(exc))
            return None
        self._cancelled = False
        self._ptext.reset()
        self._gen = gen
        worker = create_worker(C.drive, gen, _start_thread=False)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(lambda res: self._on_returned(res, context))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.compute_button.enabled = False
        self.cancel_button.enabled = context["mode"] == "self"
        self.progress_bar.value = 0
        self.progress_bar.visible = context["mode"] == "self"
        self.title.value = "Computing…"
        worker.start()
        return worker

    def cancel(self, *_):
        if getattr(self, "_worker", None) is None or self._cancelled:
            return
        self._cancelled = True
        self.title.value = "Cancelling…"
        self._worker.quit()

    def _on_yielded(self, p):
        if isinstance(p, str):
            return
        text, frac = self._ptext.update(p)
        pct = round(100 * frac)
        self.progress_bar.value = max(self.progress_bar.value, pct)
        if not self._cancelled:
            self.title.value = f"Self-check: {text}…"

    def _make_task(self):
        rgb_y = bool(self.y_channel.value)
        border = int(self.border.value)
        range_choice = str(self.data_range.value)
        if self.mode.value == "compare":
            sr, ref, bic = self.sr_layer.value, self.reference.value, self.bicubic_layer.value
            if sr is None or ref is None:
                raise InputError("Pick an SR layer and a reference layer to compare.")
            LM.check_comparable(sr, ref, bic)
            ctx = {
                "mode": "compare",
                "sr": sr,
                "ref": ref,
                "bic": bic,
                "title": f"'{sr.name}' vs '{ref.name}'",
                "layers": [x for x in (sr, ref, bic) if x is not None],
            }
            gen = self._compare_task(
                np.asarray(sr.data),
                np.asarray(ref.data),
                None if bic is None else np.asarray(bic.data),
                rgb=bool(ref.rgb),
                y_channel=rgb_y and bool(ref.rgb),
                border=border,
                range_choice=range_choice,
                error_maps=bool(self.error_maps.value),
            )
            return gen, ctx
        self._sync_model()
        src, wid = self.source.value, self.model.value
        if src is None:
            raise InputError("Pick a source layer to self-check.")
        if not wid:
            raise InputError(no_weights_message())
        if src.multiscale:
            raise InputError(f"'{src.name}' is multiscale; metrics need plain layers")
        plane, slice_index = current_plane(src, self._viewer.dims.point)
        ctx = {
            "mode": "self",
            "src": src,
            "slice_index": slice_index,
            "layers": [src],
            "title": f"Self-check of '{src.name}' with {wid}",
        }
        gen = self_check_iter(
            plane,
            wid,
            rgb=bool(src.rgb),
            y_channel=rgb_y and bool(src.rgb),
            border=border,
            range_choice=range_choice,
            error_maps=bool(self.error_maps.value),
            registry=C.registry(),
        )
        return gen, ctx

    @staticmethod
    def _compare_task(sr, ref, bic, **kw):
        yield "metrics"
        return LM.compare_layers(sr, ref, bic, **kw)

    def _on_returned(self, result, ctx):
        if self._cancelled:
            return
        if isinstance(result, C.Failure):
            msg = user_message(result.exc)
            if not C.check_error(result.exc):
                log.error("metrics failed:\n%s", result.traceback)
            self.clear(f"⚠ {msg}")
            C.notify_error(msg)
            return
        present = list(self._viewer.layers)
        if not all(any(x is lay for lay in present) for x in ctx["layers"]):
            self.clear("A layer was deleted while the metrics were computed; nothing to show.")
            return
        res, maps = result
        self.show_results(res, title=ctx["title"])
        self._shown_layers = list(ctx["layers"])
        for kind, err in maps.items():
            self._add_error_map(err, kind, ctx)

    def _add_error_map(self, err, kind, ctx):
        if ctx["mode"] == "compare":
            data, kw = L.error_map_layer(
                err, kind, reference=ctx["ref"], compared=ctx["sr"] if kind == "model" else ctx["bic"]
            )
        else:
            data, kw = L.error_map_layer(err, kind, source=ctx["src"], slice_index=ctx["slice_index"])
        # normal blending (additive would wash out the layers below); one map shown at a time:
        # the RRIM map, the bicubic one is added hidden (its eye in the layer list shows it)
        kw["blending"] = "translucent"
        kw["visible"] = kind == "model"
        self._viewer.add_image(data, **kw)

    def show_results(self, result: dict, *, title: str = "", source=None, weights_id: str | None = None) -> None:
        """Fill the table from ``{"model": {...}, "bicubic": {...}, "convention": str}``;
        ``source``/``weights_id`` (a self-check made elsewhere) set the self-check fields too."""
        if source is not None:
            self.reset_choices()
            self.mode.value = "self"
            self._on_mode()
            if source in list(C.image_layers(self._viewer)):
                self.source.value = source
            if weights_id and weights_id in (self.model.choices or ()):
                self._set_model(weights_id)
                self.model_note.value = f"Self-check of the Upscale run with {weights_id}"
            self._shown_layers = [source]
        table = LM.metrics_table(result)
        # numbers stay numbers (the table shows 4 decimals; scripts read full precision)
        self.table.value = {"data": table["data"], "index": table["index"], "columns": table["columns"]}
        self._formats.set(
            metric_formats(table["index"], table["data"]),
            signed_column=len(table["columns"]) - 1 if len(table["columns"]) == 3 else None,
        )
        self.title.value = title
        self.convention.value = "Convention: " + table["convention"] if table["convention"] else ""
        self.last_result = result

    def _on_finished(self, *_):
        if self._cancelled:
            try:
                self._gen.close()
            except Exception:  # pragma: no cover
                log.debug("closing the cancelled self-check failed", exc_info=True)
            C.release_memory()
            self.clear("Cancelled; nothing was computed.")
        self._worker = None
        self._gen = None
        try:
            self.compute_button.enabled = True
            self.cancel_button.enabled = False
            self.progress_bar.visible = False
        except RuntimeError:  # pragma: no cover - widget deleted
            pass


class _FixedFormats:
    """Shows the table's numbers with fixed decimals per row (the metric); the cells keep their
    full-precision values (``table.value`` and copy read those)."""

    def __init__(self, table):
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QStyledItemDelegate

        owner = self

        class _Delegate(QStyledItemDelegate):
            def initStyleOption(self, option, index):
                super().initStyleOption(option, index)
                text = owner.text(index.row(), index.column(), index.data())
                if text is not None:
                    option.text = text
                    option.displayAlignment = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter

        self._table = table
        self._formats: list[str] = []
        self._signed: int | None = None
        self._delegate = _Delegate(table)
        table.setItemDelegate(self._delegate)

    def set(self, formats: list[str], signed_column: int | None = None) -> None:
        self._formats, self._signed = list(formats), signed_column
        self._table.viewport().update()

    def text(self, row: int, column: int, value) -> str | None:
        if row >= len(self._formats):
            return None
        try:
            v = float(value)
        except (TypeError, ValueError):
            return None
        if not np.isfinite(v):
            return "–"
        fmt = self._formats[row]
        if column == self._signed:
            fmt = fmt.replace("{:", "{:+")
        return fmt.format(v)
