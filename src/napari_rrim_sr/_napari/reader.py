"""npe2 reader: napari-rrim-sr layer TIFFs, comparison bundle folders, 16-bit RGB(A) PNGs, and
every other TIFF/PNG, opened plainly.

Why foreign files too: napari offers a reader by filename pattern alone (``*.tif``), before any
``get_reader`` is called, so with this plugin installed every ``.tif`` has two compatible readers
and napari asks which one to use; declining in ``get_reader`` does not avoid that dialog. If the
user ticks "remember" for our reader, napari then hands us *every* ``.tif``, and a reader that
declined foreign files made each of them fail ("... was selected to open ... but refused the
file"). So ``get_reader`` accepts any TIFF/PNG it can decode: ours open with their provenance
and layer settings, others as napari's builtin reader would, but through tifffile with their
metadata (channel axis as separate layers with the file's LUT colours and contrast, pixel size
as scale, name from the file). Files our decoder cannot read go to napari's builtin reader, so a
remembered choice never breaks opening a file. Missing, empty and corrupt files are declined.
``get_reader`` answers quickly and never raises.
"""

from __future__ import annotations

import logging
from pathlib import Path

from napari_rrim_sr.io.bundle import owned_reader_target, read_bundle, read_layer_tiff, read_png

log = logging.getLogger(__name__)


def get_reader(path):
    """Return a reader function for ``path`` (str or list of str) if napari-rrim-sr owns it."""
    try:
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        if not paths:
            return None
        kinds = [owned_reader_target(p) or _foreign_target(p) for p in paths]
        if any(k is None for k in kinds):
            return None
    except Exception:  # noqa: BLE001 - never raise on a path we were only asked about
        log.debug("get_reader(%r) failed", path, exc_info=True)
        return None
    return lambda _path=None: read_paths(paths, kinds)


def read_paths(paths, kinds=None) -> list:
    """Layer data tuples for our TIFFs, bundles and PNGs."""
    kinds = kinds or [owned_reader_target(p) for p in paths]
    out = []
    for p, kind in zip(paths, kinds):
        if kind == "bundle":
            out.extend(read_bundle(p))
        elif kind == "tiff":
            out.append(read_layer_tiff(p))
        elif kind == "png":
            out.append(read_png(p))
        elif kind == "foreign":
            out.extend(read_foreign(p))
    for ld in out:
        if len(ld) > 1 and isinstance(ld[1], dict):
            _check_colormap(ld[1])
    return out


def _check_colormap(kwargs: dict) -> None:
    """A colormap saved by name that this napari does not know (a custom one) is dropped, so
    the file still opens (in gray)."""
    name = kwargs.get("colormap")
    if name is None or not isinstance(name, str):  # per-channel lists and LUT arrays: napari's to judge
        return
    try:
        from napari.utils.colormaps import ensure_colormap

        ensure_colormap(name)
    except Exception:  # noqa: BLE001
        log.info("colormap %r is not available; using the default", name)
        kwargs.pop("colormap", None)


_SUFFIXES = (".tif", ".tiff", ".png")


def _foreign_target(path) -> str | None:
    """ "foreign" for a TIFF/PNG whose header decodes (cheap: no pixels read), else None."""
    try:
        p = Path(str(path))
        if p.suffix.lower() not in _SUFFIXES or not p.is_file() or p.stat().st_size == 0:
            return None
        if p.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(p) as im:
                im.verify()
            return "foreign"
        import tifffile

        with tifffile.TiffFile(p) as tf:
            return "foreign" if tf.series and tf.series[0].shape else None
    except Exception:  # noqa: BLE001 - a file we cannot decode is declined, never an error
        return None


def read_foreign(path) -> list:
    """A TIFF/PNG not written by napari-rrim-sr, as plain image layer(s) with the file's own metadata."""
    from napari_rrim_sr.io.bands import classify_fourth_band
    from napari_rrim_sr.io.channels import channel_axis_from_axes, read_channel_displays
    from napari_rrim_sr.io.images import read_image

    p = Path(str(path))
    try:
        data, info = read_image(p)
    except Exception as exc:  # noqa: BLE001 - our decoder failed: napari's own reader may not
        log.info("%s: %s; opening with napari's builtin reader", p, exc)
        from napari_builtins.io import napari_get_reader

        return list(napari_get_reader(str(p))(str(p)) or [])
    axes = str(info.get("axes") or "")
    rgb = bool(info.get("rgb"))
    if rgb and data.shape[-1] == 4 and classify_fourth_band(data)[0] == "band":
        rgb, axes = False, axes[:-1] + "C"
    kwargs: dict = {"rgb": rgb, "name": p.stem, "metadata": {"napari_rrim_sr_axes": axes}}
    c_ax = None if rgb else channel_axis_from_axes(axes)
    nd = data.ndim - (1 if rgb or c_ax is not None else 0)
    ps = info.get("pixel_size")
    if ps and nd >= 2:
        kwargs["scale"] = (1.0,) * (nd - 2) + (float(ps[0]), float(ps[1]))
        if info.get("unit"):
            kwargs["units"] = ("pixel",) * (nd - 2) + (str(info["unit"]),) * 2
    if c_ax is not None and data.shape[c_ax] > 1:
        shown = read_channel_displays(p, data.shape[c_ax])
        kwargs["channel_axis"] = c_ax
        if info.get("photometric") == "rgb" and data.shape[c_ax] == 4:  # RGB + a band (NIR): true colour
            from napari_rrim_sr.io.channels import ChannelDisplay

            shown = [ChannelDisplay(n, c) for n, c in (("R", "red"), ("G", "green"), ("B", "blue"), ("band 4", "gray"))]
            kwargs["visible"] = [True, True, True, False]
        kwargs["name"] = [d.name if d.name.startswith(p.stem) else f"{p.stem} [{d.name}]" for d in shown]
        kwargs["colormap"] = [d.colormap for d in shown]
        kwargs["blending"] = [d.blending for d in shown]
        if all(d.contrast_limits for d in shown):
            kwargs["contrast_limits"] = [list(d.contrast_limits) for d in shown]
        kwargs.pop("rgb")
    from napari_rrim_sr.io.bundle import _check_units

    _check_units(kwargs)
    return [(data, kwargs, "image")]
