"""The two dock widgets, for imports from their former home.

*Upscale (RRIM x4)* is in :mod:`.upscale` (view, controller, panels), *Super-resolution metrics* in
:mod:`.metrics_widget`; what they share in :mod:`._common`.
"""

from __future__ import annotations

from napari_rrim_sr._napari._common import Failure
from napari_rrim_sr._napari.metrics_widget import MetricsWidget
from napari_rrim_sr._napari.upscale.controller import PRECISIONS
from napari_rrim_sr._napari.upscale.widget import UpscaleWidget

__all__ = ["PRECISIONS", "Failure", "MetricsWidget", "UpscaleWidget"]
