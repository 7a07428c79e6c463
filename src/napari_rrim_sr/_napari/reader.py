"""npe2 reader: napari-rrim-sr layer TIFFs, comparison bundle folders, and PNGs that napari's
builtin reader would truncate (16-bit RGB(A)) or strip of our provenance.

``get_reader`` answers quickly and never raises: for files (or folders) that are not ours it
returns None, so napari moves on to other readers (a foreign TIFF opens with the builtins).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..bundle import owned_reader_target, read_bundle, read_layer_tiff, read_png

log = logging.getLogger(__name__)


def get_reader(path):
    """Return a reader function for ``path`` (str or list of str) if napari-rrim-sr owns it."""
    try:
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        if not paths:
            return None
        kinds = [owned_reader_target(p) for p in paths]
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
    for _, kwargs, _ in out:
        _check_colormap(kwargs)
    return out


def _check_colormap(kwargs: dict) -> None:
    """A colormap saved by name that this napari does not know (a custom one) is dropped, so
    the file still opens (in gray)."""
    name = kwargs.get("colormap")
    if name is None:
        return
    try:
        from napari.utils.colormaps import ensure_colormap

        ensure_colormap(name)
    except Exception:  # noqa: BLE001
        log.info("colormap %r is not available; using the default", name)
        kwargs.pop("colormap", None)
