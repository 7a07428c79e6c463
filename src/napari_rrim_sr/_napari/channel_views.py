"""How the upscale widget sees a layer: as itself, or as channels / bands (no Qt here).

A (C, Y, X) channel stack and a 4-band image whose 4th band is not alpha (NAIP: RGB + NIR) are
upscaled channel by channel with the gray model, as the CLI does
(:mod:`napari_rrim_sr.io.channels`, :func:`napari_rrim_sr.io.bands.classify_fourth_band`); each
:class:`ChannelView` has the attributes the upscale controller reads from a layer, so every
channel becomes one :class:`~napari_rrim_sr.pipeline.UpscaleRequest` through the one pipeline and
one channel layer.
"""

from __future__ import annotations

import logging
from typing import Any

from napari_rrim_sr.io.bands import classify_fourth_band
from napari_rrim_sr.registry.choice import ModelChoice, choose_for_layer

log = logging.getLogger(__name__)

__all__ = [
    "BAND_DISPLAY",
    "ChannelView",
    "auto_choice",
    "channel_mode",
    "channel_views",
    "classify_fourth_band",
    "leading_axis_is_channels",
]

#: the four bands of an RGB + NIR image: names and colormaps of their result layers
BAND_DISPLAY = (("R", "red"), ("G", "green"), ("B", "blue"), ("band 4", "gray"))
#: napari's channel colours, for a channel stack without display metadata
CHANNEL_COLORMAPS = ("magenta", "green", "cyan", "yellow", "red", "blue")


def auto_choice(data, *, rgb: bool, available_ids, metadata=None) -> ModelChoice:
    """The automatic model choice of a layer's data (the CLI's own :func:`choose_for_layer`)."""
    return choose_for_layer(data, rgb=rgb, available_ids=list(available_ids), metadata=metadata)


def is_rgba(layer) -> bool:
    return bool(layer.rgb) and layer.data.shape[-1] == 4


def leading_axis_is_channels(layer) -> bool:
    """Whether a (non-RGB) layer's metadata says its first axis is channels (tifffile/OME axes
    letters, as our reader records them)."""
    if layer.rgb or layer.ndim < 3:
        return False
    meta = layer.metadata or {}
    axes = meta.get("napari_rrim_sr_axes") or meta.get("axes")
    if not isinstance(axes, str) or len(axes) != layer.data.ndim:
        return False
    return axes.upper().startswith("C") and axes.upper().count("C") == 1


def channel_mode(layer, *, fourth_band: str | None = None, channels: bool | None = None) -> str | None:
    """``"samples"`` (4 bands), ``"leading"`` (a channel stack) or None (the layer as napari shows
    it). ``fourth_band``/``channels``: the user's answers; None: what the data/metadata say."""
    if is_rgba(layer):
        kind = fourth_band if fourth_band is not None else classify_fourth_band(layer.data)[0]
        return "samples" if kind == "band" else None
    if layer.rgb or layer.ndim < 3:
        return None
    lead = channels if channels is not None else leading_axis_is_channels(layer)
    return "leading" if lead else None


def _stack_displays(layer, n: int) -> tuple[list[str], list[Any]]:
    base = getattr(layer, "colormap", None)
    base_name = getattr(base, "name", "gray")
    cmaps = [(CHANNEL_COLORMAPS[i % len(CHANNEL_COLORMAPS)] if base_name == "gray" else base) for i in range(n)]
    labels = [f"C{i}" for i in range(n)]
    path = getattr(getattr(layer, "source", None), "path", None)
    if path:  # the file's own channel names and LUTs (ImageJ/OME), as the reader shows them
        try:
            from napari_rrim_sr.io.channels import read_channel_displays

            shown = read_channel_displays(path, n)
            labels = [d.name for d in shown]
            cmaps = [d.colormap for d in shown]
        except Exception:  # displays are a nicety, never an error
            log.debug("no channel displays from %s", path, exc_info=True)
    return labels, cmaps


def channel_views(layer, mode: str | None) -> list:
    """What a run processes for ``layer`` in ``mode``: ``[layer]``, or one :class:`ChannelView`
    per band/channel."""
    if mode == "samples":
        return [
            ChannelView(layer, i, axis="samples", label=lab, colormap=cm) for i, (lab, cm) in enumerate(BAND_DISPLAY)
        ]
    if mode == "leading":
        n = int(layer.data.shape[0])
        labels, cmaps = _stack_displays(layer, n)
        return [ChannelView(layer, i, axis="leading", label=labels[i], colormap=cmaps[i]) for i in range(n)]
    return [layer]


class ChannelView:
    """One channel (or band) of a layer, with the attributes the upscale controller reads from
    a layer: its result becomes one channel layer at the source's place."""

    multiscale = False
    rgb = False

    def __init__(self, layer, index: int, *, axis: str, label: str, colormap: Any):
        self._layer = layer
        self.index = int(index)
        self.axis = axis  # "leading" or "samples"
        if axis == "leading":
            self.data = layer.data[self.index]
            drop = 1
        else:
            self.data = layer.data[..., self.index]
            drop = 0
        self.ndim = int(layer.ndim) - drop
        self.name = f"{layer.name} [{label}]"
        self.scale = tuple(layer.scale)[drop:]
        self.translate = tuple(layer.translate)[drop:]
        self.colormap = colormap
        self.blending = "additive"
        self.gamma = float(getattr(layer, "gamma", 1.0))
        self.opacity = float(getattr(layer, "opacity", 1.0))
        self.contrast_limits = None  # each channel gets its own (napari computes them)
        self.metadata = dict(layer.metadata or {})
        units = getattr(layer, "units", None)
        if units is not None:
            self.units = tuple(units)[drop:]
        labels = getattr(layer, "axis_labels", None)
        if labels is not None:
            self.axis_labels = tuple(labels)[drop:]

    def world_to_data(self, world):
        return tuple(self._layer.world_to_data(world))[len(tuple(self._layer.scale)) - self.ndim :]
