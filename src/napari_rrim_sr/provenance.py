"""Provenance: the JSON-able record of what produced a result layer or file.

One function, so the widget, the headless demo and the CLI describe a result the same way:
model id, weights sha256, device, precision, tile, normalisation, elapsed time, slices, and
(for the PSNR <-> GAN slider) the interpolation. It is stored under
``metadata["napari_rrim_sr"]`` of a layer and in the TIFFs written from it.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from .jsonable import jsonable

__all__ = ["provenance"]


def provenance(
    *,
    kind: str,
    source_name: str,
    source_shape: Sequence[int],
    source_dtype,
    factor: int = 4,
    model: Mapping[str, Any] | None = None,
    device: str | None = None,
    precision: str | None = None,
    tile: int | None = None,
    normalization: Mapping[str, Any] | None = None,
    elapsed_s: float | None = None,
    slice_index: Mapping[int, int] | None = None,
    alpha: float | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """The JSON-able record stored in ``metadata["napari_rrim_sr"]`` of a result layer."""
    from . import __version__

    model = dict(model or {})
    rec = {
        "kind": kind,
        "method": "RRIM super-resolution" if kind == "rrim" else "bicubic (MATLAB imresize)",
        "scale_factor": int(factor),
        "source_layer": source_name,
        "source_shape": [int(s) for s in source_shape],
        "source_dtype": str(np.dtype(source_dtype)),
        "model_id": model.get("model_id") if kind == "rrim" else None,
        "backbone": model.get("backbone") if kind == "rrim" else None,
        "weights_sha256": model.get("weights_sha256") if kind == "rrim" else None,
        "weights_path": model.get("weights_path") if kind == "rrim" else None,
        "device": device,
        "precision": precision,
        "tile": tile,
        "normalization": dict(normalization or {}),
        "elapsed_s": None if elapsed_s is None else round(float(elapsed_s), 4),
        "slices": "current" if slice_index else "all",
        "slice_index": {str(k): int(v) for k, v in (slice_index or {}).items()},
        "software": f"napari-rrim-sr {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if alpha is not None:
        rec["interpolation_alpha"] = float(alpha)
        rec["interpolated_from"] = model.get("interpolated_from")
    if metrics:
        rec["metrics"] = jsonable(metrics)
    if extra:
        rec.update(jsonable(dict(extra)))
    return rec
