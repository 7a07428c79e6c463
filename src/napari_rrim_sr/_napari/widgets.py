"""The two dock widgets, for imports from their former home.

*Upscale (RRIM x4)* is in :mod:`.upscale` (view, controller, panels), *Super-resolution metrics* in
:mod:`.metrics_widget`; what they share in :mod:`._common`.
"""

from __future__ import annotations

from ._common import Failure
from .metrics_widget import MetricsWidget
from .upscale.controller import PRECISIONS
from .upscale.widget import UpscaleWidget

__all__ = ["PRECISIONS", "Failure", "MetricsWidget", "UpscaleWidget"]
