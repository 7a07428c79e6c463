"""The one provenance builder: the JSON-able record of what produced a result.

Every writer stores this same record: the CLI's TIFF/PNG/JPEG metadata, the OME-Zarr
attributes, napari layer metadata (``metadata["napari_rrim_sr"]``, written again by the napari
writer and bundles) and the demo report. Only path-specific fields (a store's chunks,
scheduler, command and resume settings) are added on top, by the caller, through ``extra``.

Keys (all always present; None where they do not apply):

* ``kind`` ("rrim" | "bicubic"), ``method``, ``scale_factor``, ``software``, ``created``, ``versions``;
* the source: ``source`` {name, path, sha256 (files), shape, dtype, axes} and the flat
  ``source_layer``/``source_shape``/``source_dtype``; ``slices`` ("all"/"current"), ``slice_index``;
* the model: ``model`` (:meth:`LoadedModel.provenance`), ``model_id``, ``backbone``,
  ``weights_sha256``, ``weights_path``, ``model_choice`` {weights, reason, robust, condition},
  ``interpolation_alpha``;
* the settings as run: ``normalization`` {mode, lo, hi, percentiles, reason}, ``precision``,
  ``precision_reason``, ``backend``, ``device``, ``tile``, ``overlap``, ``self_ensemble``,
  ``engine`` (the engine's own record of the run), ``elapsed_s``;
* the result-vs-input ``check`` (mean shift, PSNR; :mod:`.check`), ``warnings``,
  ``zero_offset`` (the model's response to a black input), ``metrics`` (self-check, when run),
  ``plan`` (the planner's reasons, one line each).
"""

from __future__ import annotations

import datetime as _dt
import platform
from typing import Any, Mapping

import numpy as np

from napari_rrim_sr.jsonable import jsonable

__all__ = ["KEYS", "build_provenance", "versions"]

KEYS = (
    "kind",
    "method",
    "scale_factor",
    "software",
    "created",
    "versions",
    "source",
    "source_layer",
    "source_shape",
    "source_dtype",
    "slices",
    "slice_index",
    "model",
    "model_id",
    "backbone",
    "weights_sha256",
    "weights_path",
    "model_choice",
    "interpolation_alpha",
    "normalization",
    "precision",
    "precision_reason",
    "backend",
    "device",
    "tile",
    "overlap",
    "self_ensemble",
    "engine",
    "elapsed_s",
    "check",
    "warnings",
    "zero_offset",
    "metrics",
    "plan",
)


def versions() -> dict:
    """Versions that determine a result (this package, numpy, torch when loaded, Python)."""
    import sys

    from napari_rrim_sr import __version__

    out = {"napari_rrim_sr": __version__, "numpy": np.__version__, "python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = torch.__version__
    return out


def build_provenance(
    *,
    kind: str,
    source: Mapping[str, Any],
    scale: int,
    model: Mapping[str, Any] | None = None,
    model_choice: Mapping[str, Any] | None = None,
    normalization: Mapping[str, Any] | None = None,
    precision: str | None = None,
    precision_reason: str | None = None,
    backend: str | None = None,
    device: str | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    self_ensemble: bool = False,
    engine: Mapping[str, Any] | None = None,
    elapsed_s: float | None = None,
    slice_index: Mapping[int, int] | None = None,
    alpha: float | None = None,
    check: Mapping[str, Any] | None = None,
    warnings: list[str] | None = None,
    zero_offset: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    plan: list[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """The record of one result (``kind`` "rrim" or "bicubic"); ``source`` is {name, path,
    sha256, shape, dtype, axes}; ``extra``: path-specific fields added on top."""
    from napari_rrim_sr import __version__

    is_model = kind == "rrim"
    m = dict(model or {}) if is_model else {}
    src = {k: source.get(k) for k in ("name", "path", "sha256", "shape", "dtype", "axes")}
    src["shape"] = [int(s) for s in (src["shape"] or [])]
    src["dtype"] = str(np.dtype(src["dtype"])) if src["dtype"] is not None else None
    src["path"] = str(src["path"]) if src["path"] else None
    rec = {
        "kind": kind,
        "method": "RRIM super-resolution" if is_model else "bicubic (MATLAB imresize)",
        "scale_factor": int(scale),
        "software": f"napari-rrim-sr {__version__}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "source": src,
        "source_layer": src["name"],
        "source_shape": src["shape"],
        "source_dtype": src["dtype"],
        "slices": "current" if slice_index else "all",
        "slice_index": {str(k): int(v) for k, v in (slice_index or {}).items()},
        "model": m or None,
        "model_id": m.get("model_id"),
        "backbone": m.get("backbone"),
        "weights_sha256": m.get("weights_sha256"),
        "weights_path": m.get("weights_path"),
        "model_choice": dict(model_choice) if (is_model and model_choice) else None,
        "interpolation_alpha": float(alpha) if (is_model and alpha is not None) else None,
        "normalization": dict(normalization or {}) if is_model else None,
        "precision": precision if is_model else None,
        "precision_reason": precision_reason if is_model else None,
        "backend": backend if is_model else None,
        "device": device if is_model else "cpu",
        "tile": tile if is_model else None,
        "overlap": overlap if is_model else None,
        "self_ensemble": bool(self_ensemble) if is_model else False,
        "engine": dict(engine) if (is_model and engine) else None,
        "elapsed_s": None if elapsed_s is None else round(float(elapsed_s), 4),
        "check": dict(check) if check else None,
        "warnings": list(warnings or []),
        "zero_offset": dict(zero_offset) if (is_model and zero_offset) else None,
        "metrics": dict(metrics) if metrics else None,
        "plan": list(plan or []),
    }
    if is_model and m.get("interpolated_from"):
        rec["interpolated_from"] = m["interpolated_from"]
    if extra:
        rec.update(dict(extra))
    return jsonable(rec)
