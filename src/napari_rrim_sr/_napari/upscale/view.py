"""The Upscale widget's controls, declared (magicgui) and grouped in panels; no behaviour.

Each panel is a magicgui ``Container`` of the controls of one step (source, model, options,
advanced settings, run). Choices that depend on the viewer or the registry come in as callables.
:class:`UpscaleView` composes the panels and exposes every control by name
(:data:`CONTROL_NAMES`), which :class:`~.widget.UpscaleWidget` wires.
"""

from __future__ import annotations

from typing import Callable

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

from napari_rrim_sr._napari.upscale.controller import BACKENDS, PRECISIONS
from napari_rrim_sr._napari.weights_actions import EXPORT_FORMATS
from napari_rrim_sr.engine.devices import device_choices

NORMALIZATION_CHOICES = (
    ("auto", "auto"),
    ("dtype range", "dtype"),
    ("data range (min-max)", "range"),
    ("percentiles", "percentile"),
)


def _wrapped(label: Label) -> Label:
    try:
        label.native.setWordWrap(True)
    except AttributeError:  # pragma: no cover - non-Qt backend
        pass
    return label


class SourcePanel(Container):
    """What to upscale: the layer, a batch of selected layers, channels or bands."""

    def __init__(self, source_choices: Callable):
        self.source = ComboBox(
            label="Source",
            choices=source_choices,
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
        self.band_info = _wrapped(Label(value="", visible=False))
        super().__init__(
            widgets=[self.source, self.batch, self.channels, self.fourth_band, self.band_info], labels=True
        )


class ModelPanel(Container):
    """Which weights: the automatic choice (and why), a hand pick, a file, export."""

    def __init__(self, weights_choices: Callable):
        self.model = ComboBox(
            label="Model",
            choices=weights_choices,
            tooltip="Weights to run: chosen from the data (why: below); pick another to override.",
        )
        self.auto_button = PushButton(
            text="Back to automatic",
            visible=False,
            tooltip="Forget the model you picked: choose it from the data again.",
        )
        self.choice_info = _wrapped(Label(value=""))
        self.model_info = _wrapped(Label(value=""))
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
        self.export_format = ComboBox(
            label="Export",
            choices=list(EXPORT_FORMATS),
            value="bioimageio",
            tooltip="Format to export the selected weights to (needs the 'export' extra).",
        )
        self.export_button = PushButton(text="Export…", tooltip="Export the selected weights: asks where to save.")
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
        weights_row = Container(
            widgets=[self.weights_file, self.copy_weights, self.rescan], layout="horizontal", labels=False
        )
        export_row = Container(widgets=[self.export_format, self.export_button], layout="horizontal", labels=False)
        super().__init__(
            widgets=[
                self.model,
                self.auto_button,
                self.choice_info,
                self.model_info,
                weights_row,
                export_row,
                self.alpha,
            ],
            labels=True,
        )


class OptionsPanel(Container):
    """What the run adds: slices, bicubic, what is shown, the self-check."""

    def __init__(self):
        self.current_slice = CheckBox(
            text="Current slice only",
            value=True,
            visible=False,
            tooltip="For stacks: upscale only the displayed slice (unticked: the whole stack).",
        )
        self.add_bicubic = CheckBox(
            text="Add bicubic comparison",
            value=True,
            tooltip="Also add a bicubic upscale at the model's factor, for comparison "
            "(not for results written to an OME-Zarr store: it would not fit in memory either).",
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
            tooltip="Show device, backend, precision, tiling, normalisation and self-ensemble.",
        )
        super().__init__(
            widgets=[self.current_slice, self.add_bicubic, self.one_set, self.compute_metrics, self.advanced],
            labels=False,
        )


class AdvancedPanel(Container):
    """Device, backend, precision, tiling, normalisation, self-ensemble (the widget shows them
    with *Advanced settings*)."""

    def __init__(self):
        self.device = ComboBox(
            label="Device",
            choices=device_choices(),
            value="auto",
            tooltip="Where the model runs; auto: the fastest available accelerator.",
        )
        self.backend = ComboBox(
            label="Backend",
            choices=list(BACKENDS),
            value="auto",
            tooltip="Inference engine: auto picks the fastest one installed for the device; "
            "openvino (Intel/AMD CPUs) needs the 'openvino' extra; torch always works.",
        )
        self.precision = ComboBox(
            label="Precision",
            choices=PRECISIONS,
            value="auto",
            tooltip="auto: fp32 for data with more than 8 significant bits (16-bit, float), "
            "else bf16 where the hardware runs it natively.",
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
            choices=list(NORMALIZATION_CHOICES),
            value="auto",
            tooltip="auto: the data's own min..max over the whole stack (8-bit: 0..255), or what "
            "a fine-tuned model's metadata asks; percentiles: robust to hot pixels.",
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
        super().__init__(
            widgets=[
                self.device,
                self.backend,
                self.precision,
                self.tile,
                self.normalization,
                self.p_low,
                self.p_high,
                self.self_ensemble,
            ],
            labels=True,
        )


class RunPanel(Container):
    """Where the result goes, Run/Cancel, progress and the status line."""

    def __init__(self):
        self.output_info = _wrapped(Label(value="", visible=False))
        self.run_button = PushButton(text="Run", tooltip="Upscale now (in the background).")
        self.cancel_button = PushButton(
            text="Cancel",
            enabled=False,
            tooltip="Stop after the tile (or chunk) in progress; nothing is added "
            "(a store keeps its finished chunks, to resume).",
        )
        self.progress_bar = ProgressBar(
            value=0, min=0, max=100, visible=False, label="Progress", tooltip="Progress of the run."
        )
        self.status = _wrapped(Label(value=""))
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        super().__init__(widgets=[self.output_info, buttons, self.progress_bar, self.status], labels=False)


#: every control of the view, by the name the widget (and its tests) use
CONTROL_NAMES = (
    "source",
    "batch",
    "channels",
    "fourth_band",
    "band_info",
    "model",
    "auto_button",
    "choice_info",
    "model_info",
    "weights_file",
    "copy_weights",
    "rescan",
    "export_format",
    "export_button",
    "alpha",
    "current_slice",
    "add_bicubic",
    "one_set",
    "compute_metrics",
    "advanced",
    "device",
    "backend",
    "precision",
    "tile",
    "normalization",
    "p_low",
    "p_high",
    "self_ensemble",
    "output_info",
    "run_button",
    "cancel_button",
    "progress_bar",
    "status",
)


class UpscaleView:
    """The panels of the Upscale widget, in order; every control reachable by name."""

    def __init__(self, *, source_choices: Callable, weights_choices: Callable):
        self.source_panel = SourcePanel(source_choices)
        self.model_panel = ModelPanel(weights_choices)
        self.options_panel = OptionsPanel()
        self.advanced_panel = AdvancedPanel()
        self.run_panel = RunPanel()
        self.panels = [self.source_panel, self.model_panel, self.options_panel, self.advanced_panel, self.run_panel]
        for name in CONTROL_NAMES:
            for panel in self.panels:
                if hasattr(panel, name):
                    setattr(self, name, getattr(panel, name))
                    break
