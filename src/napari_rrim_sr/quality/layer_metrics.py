"""Metrics of layers: stacks scored plane by plane, the data range a layer implies, the table
the metrics widget shows and error maps (Qt-free; the widgets, the job's self-check and
bundles use them).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from napari_rrim_sr.errors import InputError


def metrics_data_range(dtype, reference=None) -> float:
    """The data range for PSNR/SSIM of a layer: the dtype's range for 8-bit data (the SR
    convention) and when the reference uses at least a quarter of it (full-range 16-bit), else
    the reference's max - min (8- or 12-bit values in uint16, float data), so the numbers are not
    inflated by an unused range."""
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


def compare_arrays(sr, hr, *, rgb: bool, data_range: float, y_channel: bool = False, border: int = 0) -> dict:
    """:func:`metrics.compare` over every plane of a stack (mean over planes)."""
    from napari_rrim_sr.quality.metrics import compare

    sr = np.asarray(sr)
    hr = np.asarray(hr)
    if sr.shape != hr.shape:
        raise InputError(
            f"the layers differ in shape: {sr.shape} vs {hr.shape}; pick a reference "
            "of the same shape (for example the source of a self-check)"
        )
    rows = []
    convention = ""
    for idx in iter_planes(sr.shape, rgb):
        res = compare(
            sr[idx],
            hr[idx],
            data_range=data_range,
            y_channel=y_channel,
            border=border,
            channel_axis=-1 if (rgb or sr[idx].ndim == 3) else None,
        )
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
    return {
        "index": [METRIC_LABELS[k] for k in keys],
        "columns": headers,
        "data": data,
        "convention": str(result.get("convention", "")),
    }


def error_map(sr, hr, *, rgb: bool) -> np.ndarray:
    """``|SR - HR|`` as float32 (mean over the colour axis for RGB)."""
    sr = np.asarray(sr, dtype=np.float32)
    hr = np.asarray(hr, dtype=np.float32)
    if sr.shape != hr.shape:
        raise InputError(f"cannot subtract layers of shapes {sr.shape} and {hr.shape}")
    err = np.abs(sr - hr)
    return err.mean(axis=-1) if rgb else err


DATA_RANGE_CHOICES = (("auto", "auto"), ("dtype range", "dtype"), ("reference min-max", "reference"))


def data_range_choice(choice: str, dtype, reference) -> float:
    """The data range of a user's choice: ``"dtype"`` (the dtype's range), ``"reference"``
    (its max - min) or ``"auto"`` (:func:`metrics_data_range`)."""
    if choice == "dtype":
        from napari_rrim_sr.quality.metrics import data_range_for

        return data_range_for(dtype)
    if choice == "reference":
        r = np.asarray(reference, dtype=np.float64)
        return float(r.max() - r.min()) or 1.0
    if choice == "auto":
        return metrics_data_range(dtype, reference)
    raise ValueError(f"unknown data range {choice!r}")


def compare_layers(
    sr, ref, bic=None, *, rgb: bool, y_channel: bool, border: int, range_choice: str = "auto", error_maps: bool = False
) -> tuple[dict, dict]:
    """An SR result (and optionally its bicubic sibling) scored against a reference of the same
    shape: ``({"model", ["bicubic",] "convention"}, {"model", ["bicubic"]: |SR - HR|})``."""
    sr, ref = np.asarray(sr), np.asarray(ref)
    bic = None if bic is None else np.asarray(bic)
    dr = data_range_choice(range_choice, ref.dtype, ref)
    res = {"model": compare_arrays(sr, ref, rgb=rgb, data_range=dr, y_channel=y_channel, border=border)}
    if bic is not None:
        res["bicubic"] = compare_arrays(bic, ref, rgb=rgb, data_range=dr, y_channel=y_channel, border=border)
    res["convention"] = res["model"].pop("convention")
    if "bicubic" in res:
        res["bicubic"].pop("convention", None)
    maps = {}
    if error_maps:
        maps["model"] = error_map(sr, ref, rgb=rgb)
        if bic is not None:
            maps["bicubic"] = error_map(bic, ref, rgb=rgb)
    return res, maps


def check_comparable(sr, ref, bic=None) -> None:
    """Refuse layers that cannot be scored against each other (none picked, the same layer,
    multiscale, shapes that differ), with a plain message naming them."""
    if sr is None or ref is None:
        raise InputError("Pick an SR layer and a reference layer of the same shape.")
    if sr is ref:
        raise InputError("The SR layer and the reference are the same layer.")
    for lay in (sr, ref, bic):
        if lay is not None and getattr(lay, "multiscale", False):
            raise InputError(f"'{lay.name}' is multiscale; metrics need plain layers")
    if tuple(sr.data.shape) != tuple(ref.data.shape):
        raise InputError(
            f"'{sr.name}' {tuple(sr.data.shape)} and '{ref.name}' {tuple(ref.data.shape)} "
            "differ in shape; the reference must have the SR layer's shape (use "
            "'Self-check' to score a model on a source layer)"
        )
    if bic is not None and tuple(bic.data.shape) != tuple(ref.data.shape):
        raise InputError(f"'{bic.name}' does not have the reference's shape")
