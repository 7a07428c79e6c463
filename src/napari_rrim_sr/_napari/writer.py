"""npe2 writers: one image layer -> TIFF with provenance; several -> a comparison bundle folder.

Both keep the data's dtype and the layers' geometry (scale, translate), appearance and
``metadata["napari_rrim_sr"]`` provenance (model id, weights sha256, metrics...), which the
reader restores. Expected problems (file exists, multiscale) raise with a plain message,
which napari shows as a notification.

Why :func:`prefer_our_writers`: napari's *File ▸ Save Layers* preselects the first compatible
writer, and npe2 ranks writers of equal specificity by registration order, where napari's
builtin writer (plain pixels: no scale, translate or provenance) always comes first. Once this
plugin is in use (every result layer was made by it), our writers are moved to the front of
that order, so saving with the defaults keeps a result's geometry and provenance.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from napari_rrim_sr.io.bundle import TIFF_SUFFIXES, write_layer_tiff
from napari_rrim_sr.io.bundle import write_bundle as _write_bundle

log = logging.getLogger(__name__)

PLUGIN_NAME = "napari-rrim-sr"


def write_image_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write a single image layer to ``path`` (.tif/.tiff; no suffix: .tif is added).

    Another suffix (typed while our file type was selected in the save dialog) goes to napari's
    builtin image writer, which writes pixels only, as the user asked for that format."""
    p = Path(path)
    if not p.suffix:
        p = p.with_name(p.name + ".tif")
    elif p.suffix.lower() not in TIFF_SUFFIXES:
        from napari_builtins.io import napari_write_image

        out = napari_write_image(str(p), data, meta)
        return [out] if out else []
    # napari's save dialog has already asked about replacing an existing file
    return [str(write_layer_tiff(p, data, meta, overwrite=p.exists()))]


def write_bundle(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """Write several image layers (e.g. source, RRIM and bicubic results) into a folder."""
    return _write_bundle(path, layer_data)


def prefer_our_writers(pm=None) -> bool:
    """Put this plugin's writers first in npe2's writer order (see the module docstring).

    Returns True when they are first. Relies on npe2's writer index (``_contrib._writers``, npe2
    0.7-0.10); if that changes, nothing happens and napari keeps its own order."""
    try:
        if pm is None:
            from npe2 import PluginManager

            pm = PluginManager.instance()
        index = pm._contrib
        writers = list(index._writers)
    except Exception:  # noqa: BLE001 - an npe2 without that index: keep its order
        log.debug("npe2 writer index not found; napari's writer order is kept", exc_info=True)
        return False
    ours = [t for t in writers if getattr(t[3], "plugin_name", None) == PLUGIN_NAME]
    if not ours:
        return False
    if writers[: len(ours)] != ours:
        index._writers = ours + [t for t in writers if t not in ours]
    return True


_HOOKED: set[int] = set()


def install_writer_preference() -> None:
    """Apply :func:`prefer_our_writers` now and whenever npe2 (re)registers plugins."""
    try:
        from npe2 import PluginManager

        pm = PluginManager.instance()
    except Exception:  # noqa: BLE001 - pragma: no cover - npe2 is a dependency
        return
    prefer_our_writers(pm)
    if id(pm) not in _HOOKED:
        _HOOKED.add(id(pm))
        try:
            pm.events.plugins_registered.connect(lambda *_: prefer_our_writers(pm))
        except Exception:  # noqa: BLE001 - pragma: no cover - older npe2 without events
            log.debug("npe2 registration events not available", exc_info=True)
