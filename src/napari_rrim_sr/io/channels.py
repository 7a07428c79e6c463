"""Channel stacks: a leading C axis (fluorescence channels) is upscaled channel by channel.

A (C, Y, X) ImageJ hyperstack or OME-TIFF is several images of the same field, each with its
own stain, noise and display (LUT colour, contrast range, composite blending). Treating C as
a slider and upscaling "the current slice" returns one gray channel and drops the others and
their colours. Here each channel goes through the gray model on its own (with its own
automatic model choice: a dim, noisy channel may need the robust model while a bright one does
not), and the result carries each channel's name, colormap, contrast limits and blending, so
napari shows it as the source's channel layers (``viewer.add_image(..., channel_axis=...)`` or
one layer per channel). The upscale itself is the pipeline's (``UpscaleRequest(channel_axis=...)``,
:mod:`napari_rrim_sr.pipeline`): each channel gets its own model choice and normalisation there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ChannelDisplay",
    "channel_axis_from_axes",
    "read_channel_displays",
]

_PURE = {  # LUT ramps napari knows by name: (r, g, b) end colour
    (1, 0, 0): "red",
    (0, 1, 0): "green",
    (0, 0, 1): "blue",
    (1, 1, 1): "gray",
    (0, 1, 1): "cyan",
    (1, 0, 1): "magenta",
    (1, 1, 0): "yellow",
}
_DEFAULT = ["magenta", "green", "cyan", "yellow", "red", "blue"]


@dataclass(frozen=True)
class ChannelDisplay:
    """How a channel is shown: name, colormap (a napari name or an (N, 3) 0..1 array), contrast, blending."""

    name: str
    colormap: Any = "gray"
    contrast_limits: tuple[float, float] | None = None
    blending: str = "additive"

    def layer_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"name": self.name, "colormap": self.colormap, "blending": self.blending}
        if self.contrast_limits is not None:
            kw["contrast_limits"] = list(self.contrast_limits)
        return kw


def channel_axis_from_axes(axes: str | None) -> int | None:
    """Index of the channel axis ('C') in tifffile/OME/ImageJ axes letters, or None."""
    a = str(axes or "").upper()
    return a.index("C") if a.count("C") == 1 else None


def _lut_colormap(lut: np.ndarray) -> Any:
    lut = np.asarray(lut, dtype=np.float64)
    if lut.ndim != 2 or 3 not in lut.shape:
        return "gray"
    rgb = lut if lut.shape[1] == 3 else lut.T  # ImageJ stores (3, 256)
    top = rgb.max() or 1.0
    rgb = rgb / top
    end = tuple(round(float(v)) for v in rgb[-1])
    ramp = np.linspace(0, 1, len(rgb))[:, None] * np.array(end, dtype=np.float64)
    if end in _PURE and np.allclose(rgb, ramp, atol=0.02):
        return _PURE[end]
    return rgb


def _ome_color(value: Any) -> Any:
    try:
        v = int(value) & 0xFFFFFFFF  # signed RGBA int
    except (TypeError, ValueError):
        return None
    r, g, b = (v >> 24) & 255, (v >> 16) & 255, (v >> 8) & 255
    end = tuple(int(c > 127) for c in (r, g, b))
    if (r, g, b) in (
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
        (255, 255, 255),
        (0, 255, 255),
        (255, 0, 255),
        (255, 255, 0),
    ):
        return _PURE[end]
    return np.linspace(0, 1, 256)[:, None] * (np.array([r, g, b], dtype=np.float64) / 255.0)


def read_channel_displays(path: str | Path, n_channels: int) -> list[ChannelDisplay]:
    """Each channel's display from an ImageJ (LUTs, Ranges, Labels, mode) or OME (Name, Color) TIFF.

    Channels without metadata get napari-like defaults (magenta, green, cyan...; name ``C<i>``).
    Never raises for a readable file: missing or odd metadata just gives the defaults.
    """
    names: list[str | None] = [None] * n_channels
    cmaps: list[Any] = [None] * n_channels
    limits: list[tuple[float, float] | None] = [None] * n_channels
    p = Path(path)
    if p.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(p) as tf:
                ij = tf.imagej_metadata or {}
                ome = tf.ome_metadata if tf.is_ome else None
        except Exception:  # noqa: BLE001 - displays are a nicety, never a failure
            ij, ome = {}, None
        for i, lab in enumerate(list(ij.get("Labels") or [])[:n_channels]):
            names[i] = Path(str(lab)).stem or None
        for i, lut in enumerate(list(ij.get("LUTs") or [])[:n_channels]):
            cmaps[i] = _lut_colormap(lut)
        rng = list(ij.get("Ranges") or [])
        for i in range(min(n_channels, len(rng) // 2)):
            lo, hi = float(rng[2 * i]), float(rng[2 * i + 1])
            limits[i] = (lo, hi) if hi > lo else None
        if ome:
            import re

            for i, m in enumerate(re.finditer(r"<(?:\w+:)?Channel\b([^>]*)>", ome)):
                if i >= n_channels:
                    break
                attrs = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
                names[i] = names[i] or attrs.get("Name") or None
                if "Color" in attrs and cmaps[i] is None:
                    cmaps[i] = _ome_color(attrs["Color"])
    return [
        ChannelDisplay(
            names[i] or f"C{i}",
            cmaps[i] if cmaps[i] is not None else _DEFAULT[i % len(_DEFAULT)] if n_channels > 1 else "gray",
            limits[i],
        )
        for i in range(n_channels)
    ]
