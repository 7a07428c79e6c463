"""The *Fine-tune* dock widget: train registered weights on the user's own layers, with a live
held-out curve, Cancel (keeps the best checkpoint) and the final scores.

Thin by design: the values are read into one :class:`~napari_rrim_sr.training.finetune.FinetuneSettings`
and :func:`~napari_rrim_sr.training.finetune.finetune` runs in a napari ``thread_worker``.
Curve points travel from the worker thread to the GUI thread through a Qt signal (queued
connection). The result is registered in the user weights folder by the core, so the upscale
widget lists it after a rescan.
"""

from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, LineEdit, PushButton, Select, SpinBox
from magicgui.widgets import Table as MTable
from napari.layers import Image
from napari.qt.threading import thread_worker
from qtpy.QtCore import QObject, Signal

from napari_rrim_sr._napari import _common as C
from napari_rrim_sr._napari import _fit as F
from napari_rrim_sr.errors import RRIMError

if TYPE_CHECKING:
    import napari

FINETUNE_WIDGET_NAME = "Fine-tune (own data)"
MINUTES = (5.0, 15.0, 60.0)
#: the dock's minimum height (px): with the Upscale and Metrics docks all three fit 1000 px
FIT_MIN_HEIGHT = 330


class _Relay(QObject):
    """Carries curve points and status lines from the worker thread to the GUI thread."""

    point = Signal(dict)
    status = Signal(str)


def _plane_data(layer) -> np.ndarray:
    return np.asarray(layer.data)  # 2D, a stack (slices are samples) or YXC RGB


#: matplotlib's warnings when a figure is too small for its labels: napari would show each as a toast
_LAYOUT_WARNINGS = r"(Tight|tight|constrained).*(layout|Layout).*not applied|.*axes sizes collapsed"


class _Canvas:
    """A small matplotlib canvas with a readable minimum size (matplotlib is optional: without
    it, nothing is drawn).

    Why a minimum size and constrained layout: docked under other widgets, an unconstrained canvas
    shrinks to a few pixels, and ``tight_layout`` then warns at every draw (napari shows each
    warning as a toast). The dock scrolls instead; any layout warning left is dropped at draw time.
    """

    def __init__(self, height: float = 2.2, min_height: int = 160, tooltip: str = ""):
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
        except ImportError:  # pragma: no cover - matplotlib missing
            self.figure = self.native = None
            self.widget = Container(labels=False)
            return

        class _QuietCanvas(FigureCanvasQTAgg):
            def draw(self):
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=_LAYOUT_WARNINGS)
                    super().draw()

        self.figure = Figure(figsize=(3.6, height), dpi=90, layout="constrained")
        self.native = _QuietCanvas(self.figure)
        self.native.setMinimumSize(220, min_height)
        self.native.setToolTip(tooltip)
        #: the magicgui widget that holds the canvas (an item of the dock's list)
        self.widget = Container(labels=False)
        self.widget.margins = (0, 0, 0, 0)
        self.widget.native.layout().addWidget(self.native)

    def draw(self) -> None:
        if self.native is not None:
            self.native.draw_idle()


class FinetuneWidget(C.ScrollableContainer):
    """Data (layers, or LR/HR layers), degradations with a preview, base weights, time budget."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.layers = Select(
            label="data layers",
            choices=self._layer_choices,
            tooltip="Image layers of your own data to learn from (slices of a stack are samples). "
            "Low-resolution inputs are made from them (see 'LR made with').",
        )
        self.paired = CheckBox(
            text="paired LR/HR layers",
            value=False,
            tooltip="Tick when you have real low- and high-resolution images of the same field "
            "(the HR layer must be the model's factor larger).",
        )
        self.lr_layer = ComboBox(
            label="LR layer",
            choices=self._layer_choices,
            visible=False,
            tooltip="The low-resolution acquisition (the model's input).",
        )
        self.hr_layer = ComboBox(
            label="HR layer",
            choices=self._layer_choices,
            visible=False,
            tooltip="The high-resolution acquisition of the same field (the target).",
        )
        self.degradations = ComboBox(
            label="LR made with",
            value="auto",
            choices=["auto", "clean", "shot", "read", "shot+read"],
            tooltip="How low-resolution inputs are made from your data: downscaling only (clean) or "
            "with photon (shot) and camera (read) noise; auto: measured from the data.",
        )
        self.blur = CheckBox(
            text="also blur", value=False, tooltip="Also blur before downscaling (an out-of-focus or wider PSF)."
        )
        self.preview_btn = PushButton(
            text="Measure and preview",
            tooltip="Measure the noise of the first data layer and show a synthetic LR patch next to the real data.",
        )
        self.stats = Label(value="")
        self.preview = _Canvas(1.8, min_height=150, tooltip="A patch of your data and the synthetic LR made from it.")
        self.base = ComboBox(
            label="base weights",
            choices=self._weights_choices,
            tooltip="The weights to start from (their factor and channels are kept).",
        )
        self.minutes = ComboBox(
            label="time budget (min)",
            choices=[(f"{m:g}", m) for m in MINUTES],
            value=MINUTES[0],
            tooltip="How long to train; the best held-out checkpoint is kept.",
        )
        self.custom_minutes = FloatSpinBox(
            label="or minutes",
            value=0.0,
            min=0.0,
            max=24 * 60,
            step=0.5,
            tooltip="Any other budget in minutes (0: use the box above).",
        )
        self.max_steps = SpinBox(
            label="max steps (0 = budget)",
            value=0,
            min=0,
            max=10_000_000,
            tooltip="Stop after this many steps even if time is left (0: only the time budget).",
        )
        self.name = LineEdit(
            label="new weights name",
            value="",
            tooltip="The id the new weights are registered under (empty: base name + '-ft-' + date).",
        )
        self.out = LineEdit(
            label="run folder (empty = default)",
            value="",
            tooltip="Where checkpoints, the curve and the model card are written "
            "(empty: a 'finetune' folder next to the user weights).",
        )
        self.start_btn = PushButton(text="Fine-tune", tooltip="Start fine-tuning (in the background).")
        self.cancel_btn = PushButton(
            text="Cancel (keep best)",
            enabled=False,
            tooltip="Stop after the current step; the best checkpoint so far is registered.",
        )
        buttons = Container(widgets=[self.start_btn, self.cancel_btn], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.status = Label(value="")
        self.curve = _Canvas(2.2, min_height=190, tooltip="Held-out PSNR during training, with the base and bicubic.")
        self.table = MTable(value=[])
        self.table.tooltip = "Held-out scores of the new weights, the base weights and bicubic (higher is better)."
        # a header and the three rows (new, base, bicubic) without scrolling
        self.table.min_height = 130
        try:  # the columns share the dock's width (no horizontal scrolling for two numbers)
            from qtpy.QtWidgets import QHeaderView

            self.table.native.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        except (AttributeError, ImportError):  # pragma: no cover - non-Qt backend
            pass
        self.extend(
            [
                self.layers,
                self.paired,
                self.lr_layer,
                self.hr_layer,
                self.degradations,
                self.blur,
                self.preview_btn,
                self.stats,
                self.preview.widget,
                self.base,
                self.minutes,
                self.custom_minutes,
                self.max_steps,
                self.name,
                self.out,
                buttons,
                self.status,
                self.curve.widget,
                self.table,
            ]
        )
        for lab in (self.stats, self.status):
            C.wrap_label(lab)
        for wdg in (self.stats, self.preview.widget, buttons, self.status, self.curve.widget, self.table):
            F.full_width(wdg)
        for combo in (self.lr_layer, self.hr_layer, self.degradations, self.base, self.minutes):
            F.shrinkable(combo)
        self.layers.max_height = 96  # a list of a few layers, not half the dock
        # scrolls below this; tall enough to show the curve or the preview whole
        C.fit_dock(self, min_height=FIT_MIN_HEIGHT)
        self.curve_points: list[dict] = []
        self.result = None
        self._worker = None
        self._cancel = threading.Event()
        self._relay = _Relay()
        self._relay.point.connect(self._on_point)
        self._relay.status.connect(self._on_status)
        self.paired.changed.connect(self._on_paired)
        self.preview_btn.changed.connect(self.show_preview)
        self.start_btn.changed.connect(self.start)
        self.cancel_btn.changed.connect(self.cancel)
        ev = napari_viewer.layers.events
        for e in (ev.inserted, ev.removed):
            e.connect(lambda *_: self.reset_choices())

    # -- choices ----------------------------------------------------------------------------
    def _layer_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [(lay.name, lay) for lay in self.viewer.layers if isinstance(lay, Image)]

    @staticmethod
    def _weights_choices(_widget=None) -> list[tuple[str, str]]:
        from napari_rrim_sr.registry.core import get_registry

        return [(f"{e.id}  (x{e.scale}, {e.in_channels} ch)", e.id) for e in get_registry().weights()]

    def _on_paired(self, *_):
        on = bool(self.paired.value)
        self.layers.visible, self.lr_layer.visible, self.hr_layer.visible = not on, on, on
        self.degradations.visible = self.blur.visible = self.preview_btn.visible = not on

    @property
    def busy(self) -> bool:
        return self._worker is not None

    # -- settings ---------------------------------------------------------------------------
    def settings(self):
        """The widget's values as one FinetuneSettings (the core validates them)."""
        from napari_rrim_sr.registry.core import user_weights_dir
        from napari_rrim_sr.training.finetune import FinetuneSettings

        minutes = float(self.custom_minutes.value or self.minutes.value)
        name = self.name.value.strip()
        if not name:
            import datetime as _dt

            name = f"{self.base.value}-ft-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        out = self.out.value.strip() or str(user_weights_dir().parent / "finetune" / name)
        s = FinetuneSettings(
            init=str(self.base.value),
            minutes=minutes,
            out=out,
            name=name,
            degradations=str(self.degradations.value),
            blur=bool(self.blur.value),
            max_steps=int(self.max_steps.value),
        )
        if self.paired.value:
            if self.lr_layer.value is None or self.hr_layer.value is None:
                raise RRIMError("choose the LR and the HR layer")
            s.pairs = [(_plane_data(self.lr_layer.value), _plane_data(self.hr_layer.value))]
        else:
            chosen = list(self.layers.value or [])
            if not chosen:
                raise RRIMError("choose one or more image layers to fine-tune on")
            s.data = [_plane_data(lay) for lay in chosen]
        return s

    # -- preview ----------------------------------------------------------------------------
    def show_preview(self, *_):
        """Measure the first chosen layer and draw a synthetic LR patch next to the real data."""
        from napari_rrim_sr.training import finetune as ft

        try:
            s = self.settings()
            planes = ft.load_planes(s.data[:1]).planes
            stats = ft.measure_statistics(planes)
            deg, why = ft.choose_degradations(stats, kind=s.degradations, blur=s.blur)
            from napari_rrim_sr.registry.core import get_registry

            scale = get_registry().find_weights(s.init).scale
            real, syn = ft.degradation_preview(planes[len(planes) // 2], deg, scale, size=64)
        except RRIMError as exc:
            self.stats.value = f"⚠ {exc}"
            return None
        self.stats.value = why
        fig = self.preview.figure
        if fig is not None:
            fig.clear()
            for i, (img, title) in enumerate(((real, "real data"), (syn, "synthetic LR"))):
                ax = fig.add_subplot(1, 2, i + 1)
                ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(title, fontsize=8)
                ax.axis("off")
            self.preview.draw()
        return real, syn

    # -- run --------------------------------------------------------------------------------
    def start(self, *_):
        if self.busy:
            return None
        try:
            settings = self.settings()
        except RRIMError as exc:
            self.status.value = f"⚠ {exc}"
            return None
        from napari_rrim_sr.training.finetune import finetune

        self._cancel.clear()
        self.curve_points, self.result = [], None
        self.table.value = []
        relay, cancel = self._relay, self._cancel

        @thread_worker
        def work():
            try:
                return finetune(settings, on_point=relay.point.emit, on_status=relay.status.emit, cancel=cancel)
            except Exception as exc:  # noqa: BLE001 - shown in the widget
                return exc

        self._worker = work()
        self._worker.returned.connect(self._on_returned)
        self._worker.finished.connect(self._on_finished)
        self.start_btn.enabled, self.cancel_btn.enabled = False, True
        self.status.value = f"fine-tuning {settings.init} for {settings.minutes:g} min..."
        self._worker.start()
        return self._worker

    def cancel(self, *_):
        self._cancel.set()
        self.status.value = "cancelling: finishing the step, keeping the best checkpoint..."

    def _on_status(self, text: str) -> None:
        self.status.value = text

    def _on_point(self, p: dict) -> None:
        self.curve_points.append(p)
        fig = self.curve.figure
        if fig is None:
            return
        fig.clear()
        ax = fig.add_subplot(1, 1, 1)
        steps = [q["step"] for q in self.curve_points]
        ax.plot(steps, [q["psnr"] for q in self.curve_points], "o-", ms=3, label="fine-tuned")
        ax.axhline(p["base_psnr"], color="C1", ls="--", label="base")
        ax.axhline(p["bicubic_psnr"], color="gray", ls=":", label="bicubic")
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("held-out PSNR (dB)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="lower right")
        self.curve.draw()

    def _on_returned(self, result) -> None:
        if isinstance(result, BaseException):
            self.status.value = f"⚠ {result}"
            return
        self.result = result
        labels = [result.name, result.recipe.get("init", "base"), "bicubic"]
        rows = [
            [round(result.scores[k]["psnr"], 3), round(result.scores[k]["ssim"], 4)]
            for k in ("model", "base", "bicubic")
        ]
        self.table.value = {"data": rows, "index": labels, "columns": ["PSNR dB", "SSIM"]}
        verdict = "beats its base model" if result.beats_base else "does NOT beat its base model (keep the base)"
        self.status.value = (
            f"{result.status} after {result.steps} steps: {result.name} {verdict}; registered "
            f"({result.installed}); model card {result.card}"
        )

    def _on_finished(self, *_):
        self._worker = None
        self.start_btn.enabled, self.cancel_btn.enabled = True, False
