"""Layer logic of the napari integration, without Qt (and without importing napari).

The widgets in :mod:`napari_rrim_sr._napari` only wire these functions to the GUI, so every
rule about result layers is testable headless:

* naming: ``"<name> RRIM x4"`` and ``"<name> bicubic x4"``;
* geometry: a source pixel ``i`` with scale ``s`` and translate ``t`` covers the world interval
  ``[t + (i - 1/2) s, t + (i + 1/2) s]``; its ``f x f`` sub-pixels must tile exactly that
  interval, so the result has ``scale = s / f`` and ``translate = t - s/2 + s/(2f)`` along each
  spatial axis (``t - s/2 + s/8`` for x4). With a rotation/shear the same offset is applied
  through the layer's linear transform; an extra ``affine`` is copied unchanged. Non-spatial
  axes keep their scale; a single processed slice is placed at its index;
* appearance: contrast limits (when the dtype is unchanged), colormap, blending, gamma,
  opacity, units and axis labels copied;
* provenance: what produced the layer (model id, weights sha256, device, precision, tile,
  normalisation, elapsed time), stored under ``metadata["napari_rrim_sr"]``.

A "source" here is a mapping (see :func:`source_info`) or any object with napari
``Image``-layer attributes.
"""

from __future__ import annotations

import math
import os
import re
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import InputError

#: key of our provenance dict in a layer's ``metadata`` (and in files' metadata)
META_KEY = "napari_rrim_sr"

KIND_LABELS = {"rrim": "RRIM", "bicubic": "bicubic"}
_RESULT_NAME = re.compile(r"^(?P<base>.*) (?P<kind>RRIM|bicubic) x(?P<factor>\d+)$")


# -- names ---------------------------------------------------------------------------------

def result_name(source_name: str, kind: str = "rrim", factor: int = 4) -> str:
    """``"<name> RRIM x4"`` (kind ``"rrim"``) or ``"<name> bicubic x4"`` (kind ``"bicubic"``)."""
    try:
        label = KIND_LABELS[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {sorted(KIND_LABELS)}, not {kind!r}") from None
    return f"{source_name} {label} x{int(factor)}"


def parse_result_name(name: str) -> tuple[str, str, int] | None:
    """Inverse of :func:`result_name`: ``(base, kind, factor)`` or None for other names."""
    m = _RESULT_NAME.match(name)
    if not m:
        return None
    kind = "rrim" if m["kind"] == "RRIM" else "bicubic"
    return m["base"], kind, int(m["factor"])


def sibling_name(name: str, kind: str) -> str | None:
    """The name of the other result of the same run (RRIM <-> bicubic), or None."""
    parsed = parse_result_name(name)
    if parsed is None:
        return None
    base, _, factor = parsed
    return result_name(base, kind, factor)


# -- source description --------------------------------------------------------------------

def _colormap_of(layer) -> Any:
    cmap = getattr(layer, "colormap", None)
    return cmap


def source_info(layer) -> dict:
    """The attributes of a napari image layer (or a mapping with the same keys) that the result
    layers need. Works on ``napari.layers.Image`` without importing napari."""
    if isinstance(layer, Mapping):
        info = dict(layer)
        info.setdefault("ndim", len(info.get("scale", ())) or None)
        return info
    data = layer.data
    multiscale = bool(getattr(layer, "multiscale", False))
    base = data[0] if multiscale else data
    ndim = int(layer.ndim)
    info = {
        "name": str(layer.name),
        "ndim": ndim,
        "rgb": bool(getattr(layer, "rgb", False)),
        "multiscale": multiscale,
        "shape": tuple(int(n) for n in base.shape),
        "dtype": np.dtype(base.dtype),
        "scale": tuple(float(v) for v in layer.scale),
        "translate": tuple(float(v) for v in layer.translate),
        "rotate": np.asarray(getattr(layer, "rotate", np.eye(ndim)), dtype=float),
        "shear": np.asarray(getattr(layer, "shear", np.zeros(ndim * (ndim - 1) // 2)), dtype=float),
        "affine": getattr(getattr(layer, "affine", None), "affine_matrix", None),
        "contrast_limits": tuple(float(v) for v in getattr(layer, "contrast_limits", ()) or ()) or None,
        "colormap": _colormap_of(layer),
        "blending": str(getattr(layer, "blending", "translucent")),
        "gamma": float(getattr(layer, "gamma", 1.0)),
        "opacity": float(getattr(layer, "opacity", 1.0)),
        "metadata": dict(getattr(layer, "metadata", {}) or {}),
    }
    units = getattr(layer, "units", None)
    if units is not None:
        info["units"] = tuple(str(u) for u in units)
    labels = getattr(layer, "axis_labels", None)
    if labels is not None:
        info["axis_labels"] = tuple(str(a) for a in labels)
    return info


def spatial_axes_for(ndim: int) -> tuple[int, int]:
    """Layer axes (not counting an RGB channel axis) that are upscaled: the last two."""
    if ndim < 2:
        raise InputError(f"an image layer needs at least 2 dimensions, this one has {ndim}")
    return (ndim - 2, ndim - 1)


# -- geometry ------------------------------------------------------------------------------

def linear_matrix(scale: Sequence[float], rotate=None, shear=None) -> np.ndarray:
    """``rotate @ shear @ diag(scale)`` as napari composes them (shear as napari stores it:
    an upper-triangular matrix or its above-diagonal coefficients)."""
    n = len(scale)
    r = np.eye(n) if rotate is None else np.asarray(rotate, dtype=float)
    if r.shape != (n, n):
        r = np.eye(n)
    sh = np.eye(n)
    if shear is not None:
        s = np.asarray(shear, dtype=float)
        if s.shape == (n, n):
            sh = s
        elif s.size == n * (n - 1) // 2:
            sh[np.triu_indices(n, 1)] = s.ravel()
    return r @ sh @ np.diag(np.asarray(scale, dtype=float))


def upscaled_geometry(
    scale: Sequence[float],
    translate: Sequence[float],
    factor: int = 4,
    *,
    spatial_axes: Iterable[int] | None = None,
    slice_index: Mapping[int, int] | None = None,
    rotate=None,
    shear=None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(scale, translate)`` of an ``factor``-times upscaled result so that its pixels tile the
    source pixels in world coordinates.

    ``slice_index`` maps non-spatial axes to the single source index that was processed (the
    result has length 1 there and is placed at that index). Result data coordinate ``y`` sits at
    source data coordinate ``x = offset + y / f`` on spatial axes (``offset = -(f-1)/(2f)``),
    ``x = index + y`` on sliced axes, so ``translate' = translate + L @ offset`` with
    ``L = rotate @ shear @ diag(scale)``.
    """
    scale = np.asarray(scale, dtype=float)
    translate = np.asarray(translate, dtype=float)
    n = scale.size
    if translate.size != n:
        raise ValueError(f"scale has {n} values but translate has {translate.size}")
    f = int(factor)
    if f < 1:
        raise ValueError(f"factor must be >= 1, not {factor}")
    axes = tuple(spatial_axes) if spatial_axes is not None else spatial_axes_for(n)
    axes = tuple(a % n for a in axes)
    offset = np.zeros(n)
    new_scale = scale.copy()
    for a in axes:
        offset[a] = -(f - 1) / (2 * f)
        new_scale[a] = scale[a] / f
    for a, idx in (slice_index or {}).items():
        a %= n
        if a in axes:
            raise ValueError(f"axis {a} is spatial and cannot be sliced")
        offset[a] = float(idx)
    lin = linear_matrix(scale, rotate, shear)
    new_translate = translate + lin @ offset
    return tuple(float(v) for v in new_scale), tuple(float(v) for v in new_translate)


def world_centre(scale, translate, index, rotate=None, shear=None) -> np.ndarray:
    """World coordinates of the centre of data pixel ``index`` (napari convention: pixel
    centres at integer data coordinates)."""
    lin = linear_matrix(scale, rotate, shear)
    return np.asarray(translate, dtype=float) + lin @ np.asarray(index, dtype=float)


# -- slices --------------------------------------------------------------------------------

def current_slice_index(
    shape: Sequence[int], ndim: int, data_point: Sequence[float]
) -> dict[int, int]:
    """Indices along the non-spatial axes for the slice under ``data_point`` (the viewer's
    position in the layer's data coordinates), clamped to the data."""
    out = {}
    spatial = spatial_axes_for(ndim)
    point = list(data_point)[-ndim:] if len(data_point) >= ndim else [0] * ndim
    for axis in range(ndim):
        if axis in spatial:
            continue
        n = int(shape[axis])
        out[axis] = int(min(max(int(round(float(point[axis]))), 0), n - 1))
    return out


def slice_key(ndim: int, slice_index: Mapping[int, int]) -> tuple:
    """A numpy index keeping the sliced axes with length 1 (``i:i+1``)."""
    key = [slice(None)] * ndim
    for axis, idx in slice_index.items():
        key[axis] = slice(int(idx), int(idx) + 1)
    return tuple(key)


def is_stack(ndim: int) -> bool:
    return ndim > 2


# -- normalisation -------------------------------------------------------------------------

NORMALIZATION_CHOICES = (
    ("auto", "auto"),
    ("dtype range", "dtype"),
    ("data range (min-max)", "range"),
    ("percentiles", "percentile"),
)


def auto_normalization(dtype, data_min: float | None = None, data_max: float | None = None) -> dict:
    """Engine keyword arguments for the widget's "auto" normalisation.

    8-bit data, and wider integer data that uses at least a quarter of its dtype's range (a
    16-bit camera image), are scaled by the dtype range: intensities keep their absolute meaning.
    Integer data far below its dtype's maximum (12-bit or 8-bit values stored in uint16, as many
    microscopy files are) and float data are scaled by their actual min..max, so the model sees
    a well-exposed 0..1 image; the inverse mapping restores the original values afterwards.
    The bit depth is never guessed from the maximum.
    """
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if data_max is None or data_min is None or dt.itemsize == 1:
            return {"normalization": "dtype"}
        span = float(info.max) - float(info.min)
        if (float(data_max) - min(float(data_min), 0.0)) >= 0.25 * span:
            return {"normalization": "dtype"}
        return {"normalization": "range"}
    if dt.kind == "b":
        raise InputError("boolean layers (masks) cannot be upscaled; use a labels/interpolation tool")
    if dt.kind == "f":
        return {"normalization": "range"}
    raise InputError(f"cannot upscale {dt} data")


def normalization_kwargs(choice: str, dtype, data_min=None, data_max=None,
                         percentiles: tuple[float, float] = (0.1, 99.9)) -> dict:
    """Engine keyword arguments for a widget choice (``auto``/``dtype``/``range``/``percentile``)."""
    if choice == "auto":
        return auto_normalization(dtype, data_min, data_max)
    if choice == "percentile":
        lo, hi = (float(p) for p in percentiles)
        if not 0 <= lo < hi <= 100:
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {lo}, {hi}")
        return {"normalization": "percentile", "percentiles": (lo, hi)}
    if choice in ("dtype", "range"):
        if choice == "dtype" and np.dtype(dtype).kind == "f":
            raise InputError(
                "float data has no dtype range; choose 'auto', 'data range' or 'percentiles'"
            )
        return {"normalization": choice}
    raise ValueError(f"unknown normalisation {choice!r}")


# -- memory --------------------------------------------------------------------------------

def output_nbytes(shape: Sequence[int], dtype, factor: int = 4, n_spatial: int = 2) -> int:
    """Bytes of an upscaled copy of an array of ``shape`` (spatial axes x factor each)."""
    n = int(np.prod([int(s) for s in shape], dtype=np.int64)) if len(shape) else 1
    return int(n * (int(factor) ** n_spatial) * np.dtype(dtype).itemsize)


def available_memory() -> int | None:
    """Available system memory in bytes (None where it cannot be determined)."""
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except Exception:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(needed: int, what: str, *, suggestion: str, available: int | None = None,
                         fraction: float = 0.7) -> None:
    """Raise an :class:`InputError` with a plain message when ``needed`` bytes would exceed
    ``fraction`` of the available memory."""
    available = available_memory() if available is None else available
    if available is None or needed <= fraction * available:
        return
    raise InputError(
        f"{what} needs about {format_bytes(needed)} but only {format_bytes(available)} of memory "
        f"is available; {suggestion}"
    )


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


# -- result layers -------------------------------------------------------------------------

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
        rec["metrics"] = _jsonable(metrics)
    if extra:
        rec.update(_jsonable(dict(extra)))
    return rec


def result_layer_kwargs(
    source: Mapping[str, Any] | Any,
    data,
    *,
    kind: str,
    factor: int = 4,
    slice_index: Mapping[int, int] | None = None,
    record: Mapping[str, Any] | None = None,
) -> dict:
    """Keyword arguments for ``viewer.add_image(data, **kwargs)`` for a result of ``source``."""
    src = source if isinstance(source, Mapping) else source_info(source)
    ndim = int(src.get("ndim") or len(src["scale"]))
    rgb = bool(src.get("rgb", False))
    data_ndim = np.ndim(data) if not hasattr(data, "ndim") else data.ndim
    if data_ndim != ndim + (1 if rgb else 0):
        raise InputError(
            f"result has {data_ndim} dimensions, expected {ndim + rgb} like the source "
            f"{src.get('name', '')!r}"
        )
    scale, translate = upscaled_geometry(
        src["scale"], src["translate"], factor,
        spatial_axes=spatial_axes_for(ndim), slice_index=slice_index,
        rotate=src.get("rotate"), shear=src.get("shear"),
    )
    kwargs: dict[str, Any] = {
        "name": result_name(src.get("name", "image"), kind, factor),
        "scale": scale,
        "translate": translate,
        "rgb": rgb,
        "blending": src.get("blending", "translucent"),
        "opacity": src.get("opacity", 1.0),
        "gamma": src.get("gamma", 1.0),
    }
    rot = src.get("rotate")
    if rot is not None and not np.allclose(rot, np.eye(ndim)):
        kwargs["rotate"] = np.asarray(rot)
    shear = src.get("shear")
    if shear is not None and np.size(shear) and not _is_identity_shear(shear, ndim):
        kwargs["shear"] = np.asarray(shear)
    aff = src.get("affine")
    if aff is not None and not np.allclose(np.asarray(aff), np.eye(ndim + 1)):
        kwargs["affine"] = np.asarray(aff)
    if not rgb and src.get("colormap") is not None:
        kwargs["colormap"] = src["colormap"]
    cl = src.get("contrast_limits")
    src_dtype = src.get("dtype")
    if cl is not None and src_dtype is not None and np.dtype(src_dtype) == np.dtype(data.dtype):
        kwargs["contrast_limits"] = tuple(float(v) for v in cl)
    for key in ("units", "axis_labels"):
        if src.get(key) is not None:
            kwargs[key] = tuple(src[key])
    kwargs["metadata"] = {META_KEY: dict(record or {})}
    return kwargs


def _is_identity_shear(shear, ndim: int) -> bool:
    s = np.asarray(shear, dtype=float)
    if s.shape == (ndim, ndim):
        return bool(np.allclose(s, np.eye(ndim)))
    return bool(np.allclose(s, 0))


# -- weights a layer asks for ---------------------------------------------------------------

#: layer-metadata key naming the weights id that suits the data better than the channel default
#: (the sample data sets it: the decimated Landsat crop asks for ``rrim-x4-rgb-real``)
SUGGESTED_WEIGHTS_KEY = "napari_rrim_sr_weights"


def suggested_weights(metadata: Mapping[str, Any] | None, available_ids: Iterable[str]) -> str | None:
    """The weights id ``metadata`` suggests, when it is among ``available_ids``; else None."""
    wid = (metadata or {}).get(SUGGESTED_WEIGHTS_KEY)
    return wid if isinstance(wid, str) and wid in set(available_ids) else None


def preselected_weights(metadata: Mapping[str, Any] | None, channels: int, available_ids: Iterable[str],
                        registry) -> str | None:
    """The weights id to preselect for a layer: what its metadata asks for, else the registry's
    default for its channel count; only ids among ``available_ids``, else None."""
    ids = set(available_ids)
    wid = suggested_weights(metadata, ids)
    if wid is None:
        entry = registry.default_weights(channels)
        wid = entry.id if entry is not None and entry.id in ids else None
    return wid


# -- network interpolation -----------------------------------------------------------------

_PAIR_SUFFIX = re.compile(r"^(?P<stem>.+)-(?P<kind>psnr|gan)$")


def interpolation_pair(weights_id: str, available_ids: Iterable[str]) -> tuple[str, str] | None:
    """``(psnr_id, gan_id)`` when ``weights_id`` ends in ``-psnr`` or ``-gan`` and its partner
    (same id but the other suffix) is available; None otherwise."""
    m = _PAIR_SUFFIX.match(weights_id or "")
    if not m:
        return None
    ids = set(available_ids)
    pair = (f"{m['stem']}-psnr", f"{m['stem']}-gan")
    return pair if pair[0] in ids and pair[1] in ids else None


def interpolate_state_dicts(psnr_sd: Mapping[str, Any], gan_sd: Mapping[str, Any], alpha: float) -> dict:
    """Network interpolation (ESRGAN, Wang et al. 2018): ``(1 - alpha) * psnr + alpha * gan``
    for every floating tensor; both state dicts must have the same keys and shapes."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    if set(psnr_sd) != set(gan_sd):
        diff = sorted(set(psnr_sd) ^ set(gan_sd))[:3]
        raise InputError(f"PSNR and GAN weights have different tensors (e.g. {', '.join(diff)})")
    out = {}
    for k, a in psnr_sd.items():
        b = gan_sd[k]
        if tuple(a.shape) != tuple(b.shape):
            raise InputError(f"PSNR and GAN weights differ in the shape of {k}")
        out[k] = (1 - alpha) * a + alpha * b if a.is_floating_point() else a
    return out


def _jsonable(v):
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    return str(v)


def jsonable(v):
    """JSON-safe copy of metadata (numpy scalars/arrays, inf as strings, other objects as str)."""
    return _jsonable(v)


# -- metrics helpers -----------------------------------------------------------------------

def metrics_data_range(dtype, reference=None) -> float:
    """The data range for PSNR/SSIM of a layer: the dtype's range for 8-bit data (the SR
    convention) and when the reference uses at least a quarter of it (full-range 16-bit), else the reference's max - min (8- or
    12-bit values in uint16, float data), so the numbers are not inflated by an unused range."""
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        span = float(info.max) - float(info.min)
        if reference is None or dt.itemsize == 1:
            return span
        ref = np.asarray(reference)
        lo, hi = float(ref.min()), float(ref.max())
        if hi - min(lo, 0.0) >= 0.25 * span or hi <= lo:
            return span
        return hi - lo
    if reference is None:
        raise InputError("float layers need a reference to derive the data range from")
    ref = np.asarray(reference, dtype=np.float64)
    lo, hi = float(np.nanmin(ref)), float(np.nanmax(ref))
    return hi - lo if hi > lo else 1.0


def iter_planes(shape: Sequence[int], rgb: bool):
    """Numpy indices of the 2-D (or 2-D + RGB) planes of an array with that shape."""
    lead = tuple(shape[: len(shape) - (3 if rgb else 2)])
    for idx in np.ndindex(*lead) if lead else [()]:
        yield idx


def compare_arrays(sr, hr, *, rgb: bool, data_range: float, y_channel: bool = False,
                   border: int = 0) -> dict:
    """:func:`metrics.compare` over every plane of a stack (mean over planes)."""
    from .metrics import compare

    sr = np.asarray(sr)
    hr = np.asarray(hr)
    if sr.shape != hr.shape:
        raise InputError(f"the layers differ in shape: {sr.shape} vs {hr.shape}; pick a reference "
                         "of the same shape (for example the source of a self-check)")
    rows = []
    convention = ""
    for idx in iter_planes(sr.shape, rgb):
        res = compare(sr[idx], hr[idx], data_range=data_range, y_channel=y_channel, border=border,
                      channel_axis=-1 if (rgb or sr[idx].ndim == 3) else None)
        convention = res.pop("convention", convention)
        rows.append(res)
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    n = len(rows)
    out["convention"] = convention + (f"; mean over {n} planes" if n > 1 else "")
    return out


METRIC_ORDER = ("rmse", "psnr", "ssim", "fsim", "fsimc")
METRIC_LABELS = {"rmse": "RMSE", "psnr": "PSNR (dB)", "ssim": "SSIM", "fsim": "FSIM", "fsimc": "FSIMc"}


def metrics_table(result: Mapping[str, Any]) -> dict:
    """Rows (metrics) x columns (model, bicubic, model - bicubic) of an :func:`evaluate`-style
    result ``{"model": {...}, "bicubic": {...}, "convention": str}``; either side may be absent."""
    cols = [c for c in ("model", "bicubic") if result.get(c)]
    if not cols:
        raise ValueError("no metrics to tabulate")
    keys = [k for k in METRIC_ORDER if any(k in result[c] for c in cols)]
    has_diff = len(cols) == 2
    data = []
    for k in keys:
        row = [float(result[c][k]) if k in result[c] else float("nan") for c in cols]
        if has_diff:
            row.append(row[0] - row[1])
        data.append(row)
    headers = [{"model": "RRIM", "bicubic": "bicubic"}[c] for c in cols]
    if has_diff:
        headers.append("RRIM - bicubic")
    return {"index": [METRIC_LABELS[k] for k in keys], "columns": headers, "data": data,
            "convention": str(result.get("convention", ""))}


def error_map(sr, hr, *, rgb: bool) -> np.ndarray:
    """``|SR - HR|`` as float32 (mean over the colour axis for RGB)."""
    sr = np.asarray(sr, dtype=np.float32)
    hr = np.asarray(hr, dtype=np.float32)
    if sr.shape != hr.shape:
        raise InputError(f"cannot subtract layers of shapes {sr.shape} and {hr.shape}")
    err = np.abs(sr - hr)
    return err.mean(axis=-1) if rgb else err


# -- the upscale job (run in a worker thread by the widget, inline by the demo) ------------

from dataclasses import dataclass, field  # noqa: E402


@dataclass
class UpscaleJob:
    """Everything a run needs, captured in the GUI thread (no Qt, no napari objects)."""

    source: dict  # source_info() of the layer
    data: Any  # the array to process: the layer data or one slice of it (never written to)
    weights_id: str | None
    slice_index: dict = field(default_factory=dict)
    pair: tuple[str, str] | None = None  # (psnr id, gan id) for network interpolation
    alpha: float | None = None
    device: str = "auto"
    precision: str = "auto"
    tile: int | None = None
    normalization: str = "auto"
    percentiles: tuple[float, float] = (0.1, 99.9)
    self_ensemble: bool = False
    bicubic: bool = True
    metrics: bool = False

    @property
    def rgb(self) -> bool:
        return bool(self.source.get("rgb", False))

    @property
    def ndim(self) -> int:
        return int(self.source["ndim"])


@dataclass
class UpscaleResult:
    job: UpscaleJob
    sr: np.ndarray
    bicubic: np.ndarray | None
    model: dict  # LoadedModel.provenance() (+ interpolation details)
    normalization: dict
    device: str
    precision: str
    elapsed_s: float
    bicubic_elapsed_s: float | None = None
    metrics: dict | None = None
    factor: int = 4
    tile: int | None = None  # the tile the engine used (after its default / OOM fallback)
    overlap: int | None = None

    def layer_kwargs(self, kind: str) -> dict:
        data = self.sr if kind == "rrim" else self.bicubic
        record = provenance(
            kind=kind,
            source_name=self.job.source.get("name", "image"),
            source_shape=self.job.source.get("shape", np.shape(self.job.data)),
            source_dtype=self.job.source.get("dtype", data.dtype),
            factor=self.factor,
            model=self.model,
            device=self.device if kind == "rrim" else "cpu",
            precision=self.precision if kind == "rrim" else None,
            tile=(self.tile if self.tile is not None else self.job.tile) if kind == "rrim" else None,
            normalization=self.normalization if kind == "rrim" else None,
            elapsed_s=self.elapsed_s if kind == "rrim" else self.bicubic_elapsed_s,
            slice_index=self.job.slice_index,
            alpha=self.job.alpha if (kind == "rrim" and self.job.pair) else None,
            metrics=self.metrics,
            extra=({"overlap": self.overlap, "self_ensemble": self.job.self_ensemble}
                   if kind == "rrim" else None),
        )
        return result_layer_kwargs(self.job.source, data, kind=kind, factor=self.factor,
                                   slice_index=self.job.slice_index, record=record)


def load_job_model(weights_id: str | None, *, pair=None, alpha=None, registry=None):
    """The model of a job: a registry weights id, or the network interpolation of a PSNR/GAN
    pair at ``alpha`` (0 = PSNR weights, 1 = GAN weights). Returns a ``LoadedModel``."""
    from .registry import get_registry
    from .weights_io import load_model

    registry = registry or get_registry()
    if pair is None or alpha is None:
        if weights_id is None:
            raise InputError(no_weights_message())
        return load_model(weights_id, registry=registry)
    alpha = float(alpha)
    if alpha <= 0.0:
        return load_model(pair[0], registry=registry)
    if alpha >= 1.0:
        return load_model(pair[1], registry=registry)
    psnr = load_model(pair[0], registry=registry)
    gan = load_model(pair[1], registry=registry)
    if psnr.backbone != gan.backbone or psnr.hparams != gan.hparams:
        raise InputError(
            f"{pair[0]} and {pair[1]} are different architectures; they cannot be interpolated"
        )
    sd = interpolate_state_dicts(psnr.module.state_dict(), gan.module.state_dict(), alpha)
    psnr.module.load_state_dict(sd)
    stem = pair[0][: -len("-psnr")]
    psnr.id = f"{stem} (alpha={alpha:.2f})"
    psnr.metadata = dict(psnr.metadata, interpolated_from=[
        {"id": pair[0], "sha256": psnr.sha256}, {"id": pair[1], "sha256": gan.sha256}])
    psnr.sha256 = ""  # no single file holds these weights
    psnr.path = None
    return psnr


def no_weights_message() -> str:
    from .registry import user_weights_dir

    return (
        "No trained weights are installed, so there is no model to upscale with. "
        f"Copy a napari-rrim-sr .safetensors file into {user_weights_dir()} "
        "(or run `napari-rrim-sr models` to see what is found), or install a package that "
        "contributes weights."
    )


def run_upscale(job: UpscaleJob, *, model=None):
    """Generator: yields engine ``Progress`` events per tile/slice, returns an
    :class:`UpscaleResult`. Closing the generator (the widget's Cancel) stops between tiles and
    releases device memory; the source array is only read."""
    import time as _time

    from . import engine
    from .devices import release_memory

    data = job.data
    if not hasattr(data, "shape"):
        data = np.asarray(data)
    spatial = spatial_axes_for(job.ndim)
    norm_kwargs = _job_normalization(job, data)
    loaded = model if model is not None else load_job_model(job.weights_id, pair=job.pair, alpha=job.alpha)
    up = engine.Upscaler(loaded, device=job.device, precision=job.precision,
                         channels=3 if job.rgb else 1, self_ensemble=job.self_ensemble)
    device = up.device
    factor = int(loaded.scale)
    out_shape = list(data.shape)
    for a in spatial:
        out_shape[a] *= factor
    # preallocated here so the result is a plain array owned by the caller
    sr = np.empty(tuple(out_shape), dtype=data.dtype)
    t0 = _time.perf_counter()
    try:
        yield from up.upscale_iter(
            data, spatial_axes=spatial, rgb=job.rgb, tile=job.tile,
            out=sr, **norm_kwargs,
        )
        run_info = dict(up.last_run)
    finally:
        up.close()  # drops the device copy of the model and releases cached GPU memory
        release_memory(device)
    elapsed = _time.perf_counter() - t0
    bic = None
    bic_elapsed = None
    if job.bicubic:
        yield engine.Progress(0, 0, 0, 0, "bicubic comparison")
        t1 = _time.perf_counter()
        bic = engine.upscale_bicubic(data, factor, spatial_axes=spatial, rgb=job.rgb)
        bic_elapsed = _time.perf_counter() - t1
    metrics = None
    if job.metrics:
        yield engine.Progress(0, 0, 0, 0, "self-check metrics")
        try:
            metrics, _ = self_check_images(
                representative_plane(data, rgb=job.rgb), loaded, rgb=job.rgb,
                device=job.device, precision=job.precision, tile=job.tile,
                normalization=job.normalization, percentiles=job.percentiles,
                self_ensemble=job.self_ensemble,
            )
        finally:
            release_memory(device)
    prov = loaded.provenance()
    if loaded.metadata.get("interpolated_from"):
        prov["interpolated_from"] = loaded.metadata["interpolated_from"]
    norm = dict(_describe_norm(norm_kwargs))
    if run_info.get("normalization"):
        norm["applied"] = _jsonable(run_info["normalization"])
    result = UpscaleResult(
        job=job, sr=sr, bicubic=bic, model=prov, normalization=norm,
        device=str(run_info.get("device", device)), precision=str(run_info.get("precision", "")),
        elapsed_s=elapsed, bicubic_elapsed_s=bic_elapsed, metrics=metrics, factor=factor,
        tile=run_info.get("tile"), overlap=run_info.get("overlap"),
    )
    return result


def _job_normalization(job: UpscaleJob, data) -> dict:
    dtype = np.dtype(data.dtype)
    lo = hi = None
    if job.normalization == "auto" and dtype.kind in "iu":
        lo, hi = _minmax(data)
    return normalization_kwargs(job.normalization, dtype, lo, hi, job.percentiles)


def _minmax(data) -> tuple[float, float]:
    if hasattr(data, "compute") and not isinstance(data, np.ndarray):  # dask
        import dask.array as da

        lo, hi = da.compute(data.min(), data.max())
        return float(lo), float(hi)
    arr = np.asarray(data)
    return float(arr.min()), float(arr.max())


def _describe_norm(kwargs: Mapping[str, Any]) -> dict:
    out = {"mode": kwargs.get("normalization")}
    if "percentiles" in kwargs:
        out["percentiles"] = list(kwargs["percentiles"])
    return out


def representative_plane(data, *, rgb: bool):
    """The 2-D (or 2-D + RGB) plane a self-check scores: the data itself when it is one plane
    (e.g. the processed slice), else the middle plane of the stack."""
    nd = data.ndim - (1 if rgb else 0)
    lead = nd - 2
    if lead <= 0:
        return np.asarray(data)
    idx = tuple(s // 2 for s in data.shape[:lead])
    return np.asarray(data[idx])


def self_check_images(
    plane,
    model,
    *,
    rgb: bool,
    y_channel: bool | None = None,
    border: int | None = None,
    data_range: float | None = None,
    device: str = "auto",
    precision: str = "auto",
    tile: int | None = None,
    normalization: str = "auto",
    percentiles: tuple[float, float] = (0.1, 99.9),
    self_ensemble: bool = False,
) -> tuple[dict, dict]:
    """Self-check of ``model`` on one plane, by the protocol of :func:`evaluate.evaluate`
    (LR = MATLAB bicubic x1/scale of the mod-cropped plane, rounded to its dtype; the model and
    bicubic upscale the LR; both are scored against the plane), also returning the images so
    error maps can be shown.

    Returns ``({"model": {...}, "bicubic": {...}, "convention": str}, {"hr", "lr", "model",
    "bicubic"} arrays)``. ``y_channel`` defaults to True for RGB (ignored for gray);
    ``border`` to the model's scale; ``data_range`` to :func:`metrics_data_range` of the plane.
    """
    from . import engine
    from .devices import release_memory
    from .evaluate import make_lr

    plane = np.asarray(plane)
    expected = 3 if rgb else 2
    if plane.ndim != expected:
        raise InputError(f"a self-check needs one {'RGB ' if rgb else ''}plane, got shape {plane.shape}")
    factor = int(model.scale)
    hr, lr = make_lr(plane, factor)
    y_channel = rgb if y_channel is None else (bool(y_channel) and rgb)
    if min(lr.shape[:2]) < 4:
        raise InputError(f"the plane {plane.shape[:2]} is too small for a x{factor} self-check")
    lo, hi = _minmax(lr) if normalization == "auto" else (None, None)
    norm = normalization_kwargs(normalization, lr.dtype, lo, hi, percentiles)
    up = engine.Upscaler(model, device=device, precision=precision, channels=3 if rgb else 1,
                         self_ensemble=self_ensemble)
    try:
        sr = up.upscale(lr, rgb=rgb, tile=tile, **norm)  # engine default overlap: capped for small tiles
    finally:
        dev = up.device
        up.close()
        release_memory(dev)
    bic = engine.upscale_bicubic(lr, factor, rgb=rgb)
    dr = metrics_data_range(hr.dtype, hr) if data_range is None else float(data_range)
    b = factor if border is None else int(border)
    res = {
        "model": compare_arrays(sr, hr, rgb=rgb, data_range=dr, y_channel=y_channel, border=b),
        "bicubic": compare_arrays(bic, hr, rgb=rgb, data_range=dr, y_channel=y_channel, border=b),
    }
    conv = res["model"].pop("convention")
    res["bicubic"].pop("convention", None)
    res["convention"] = (f"self-check: LR = MATLAB bicubic x1/{factor} of the "
                         f"{'x'.join(str(n) for n in hr.shape[:2])} plane; {conv}")
    return _jsonable(res), {"hr": hr, "lr": lr, "model": sr, "bicubic": bic}
