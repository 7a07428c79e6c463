"""npe2 writers: one image layer -> TIFF with provenance; several -> a comparison bundle folder.

Both keep the data's dtype and the layers' geometry (scale, translate), appearance and
``metadata["napari_rrim_sr"]`` provenance (model id, weights sha256, metrics...), which the
reader restores. Expected problems (file exists, wrong suffix) raise with a plain message,
which napari shows as a notification.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..bundle import write_bundle as _write_bundle
from ..bundle import write_layer_tiff


def write_image_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write a single image layer to ``path`` (.tif/.tiff)."""
    p = Path(path)
    # napari's save dialog has already asked about replacing an existing file
    return [str(write_layer_tiff(p, data, meta, overwrite=p.exists()))]


def write_bundle(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """Write several image layers (e.g. source, RRIM and bicubic results) into a folder."""
    return _write_bundle(path, layer_data)
