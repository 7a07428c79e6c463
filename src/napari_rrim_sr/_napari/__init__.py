"""napari integration: widgets, the Layers ▸ Transform menu command, reader, writer, samples.

Everything here may import Qt and napari; the logic it wires lives in the Qt-free
:mod:`napari_rrim_sr.io.geometry` and :mod:`napari_rrim_sr.io.bundle`.
"""

PLUGIN_NAME = "napari-rrim-sr"
UPSCALE_WIDGET_NAME = "Upscale (RRIM x4)"
METRICS_WIDGET_NAME = "Super-resolution metrics"

# File ▸ Save Layers preselects our TIFF writer (geometry + provenance), not napari's plain one
from napari_rrim_sr._napari.writer import install_writer_preference  # noqa: E402

install_writer_preference()
