"""Every result checked against its input, and the model's response to a black input.

Why: a wrong normalisation or precision used to return images half as bright as their input
with exit code 0 (issue 23). The check undoes the upscale the way the models' LR was made
(MATLAB-style bicubic x1/scale, antialiased) and compares with the input: the mean shift as a
fraction of the input's mean and of its range, and the PSNR. It costs one bicubic downscale of
the checked planes (at most :data:`MAX_PLANES` planes, each cropped to :data:`MAX_SIDE` input
pixels), which is small next to the model: measured in docs/models.md.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = [
    "MEAN_OF_MEAN",
    "MEAN_OF_RANGE",
    "check_result",
    "check_warnings",
    "model_zero_offset",
]

MEAN_OF_MEAN = 0.05  #: a mean shift above this fraction of the input's mean is a warning
MEAN_OF_RANGE = 0.02  #: ... or above this fraction of the input's range
MAX_PLANES = 4  #: planes of a stack that are checked (evenly spaced)
MAX_SIDE = 1024  #: larger planes are checked on a centre crop (input pixels)


def _plane_indices(shape: Sequence[int], spatial: tuple[int, int], colour: int | None) -> list[tuple]:
    other = [a for a in range(len(shape)) if a not in spatial and a != colour]
    n = int(np.prod([shape[a] for a in other])) if other else 1
    picks = sorted({int(round(k)) for k in np.linspace(0, n - 1, min(n, MAX_PLANES))})
    out = []
    for flat in picks:
        multi = np.unravel_index(flat, [shape[a] for a in other]) if other else ()
        idx: list[Any] = [slice(None)] * len(shape)
        for a, i in zip(other, multi):
            idx[a] = int(i)
        out.append(idx)
    return out


def _crop(idx: list, shape, spatial, scale: int) -> tuple[list, list]:
    """Input and output indices of a centre crop of at most MAX_SIDE input pixels per side."""
    i_in, i_out = list(idx), list(idx)
    for a in spatial:
        n = int(shape[a])
        c = min(n, MAX_SIDE)
        lo = (n - c) // 2
        i_in[a] = slice(lo, lo + c)
        i_out[a] = slice(lo * scale, (lo + c) * scale)
    return i_in, i_out


def _yx_last(plane: np.ndarray, spatial_in_plane: tuple[int, int]) -> np.ndarray:
    """(..., Y, X): imresize works on the last two axes."""
    rest = [a for a in range(plane.ndim) if a not in spatial_in_plane]
    return np.transpose(plane, rest + list(spatial_in_plane))


def check_result(
    source,
    result,
    *,
    scale: int,
    spatial_axes: tuple[int, int],
    rgb: bool = False,
) -> dict:
    """Compare ``result`` (``scale`` x larger on ``spatial_axes``) with ``source``.

    Returns ``{"mean_in", "mean_out", "mean_shift", "shift_of_mean", "shift_of_range", "range",
    "psnr", "planes", "crop", "seconds"}``: ``mean_out`` and ``psnr`` are of the result
    downscaled by MATLAB bicubic x1/scale (the models' LR convention), so a faithful result
    gives a mean shift near 0 and a high PSNR. Reads only the checked planes of lazy arrays.
    """
    import time

    from napari_rrim_sr.engine.bicubic import imresize

    t0 = time.perf_counter()
    shape = tuple(int(n) for n in source.shape)
    sp = tuple(int(a) % len(shape) for a in spatial_axes)
    colour = len(shape) - 1 if rgb else None
    sum_in = sum_out = sq = 0.0
    n = 0
    lo, hi = math.inf, -math.inf
    planes = _plane_indices(shape, sp, colour)
    for idx in planes:
        i_in, i_out = _crop(idx, shape, sp, scale)
        a = np.asarray(source[tuple(i_in)], dtype=np.float64)
        b = np.asarray(result[tuple(i_out)], dtype=np.float64)
        if rgb and a.shape[-1] == 4:
            a, b = a[..., :3], b[..., :3]  # alpha is interpolated, not modelled
        kept = [ax for ax in range(len(shape)) if not isinstance(i_in[ax], int)]
        sp_plane = (kept.index(sp[0]), kept.index(sp[1]))
        a = _yx_last(a, sp_plane)
        down = imresize(_yx_last(b, sp_plane), 1.0 / scale, antialias=True)
        if down.shape != a.shape:  # cannot happen for exact x scale results; be safe
            h, w = min(down.shape[-2], a.shape[-2]), min(down.shape[-1], a.shape[-1])
            a, down = a[..., :h, :w], down[..., :h, :w]
        fin = np.isfinite(a) & np.isfinite(down)
        a, down = a[fin], down[fin]
        sum_in += float(a.sum())
        sum_out += float(down.sum())
        sq += float(((down - a) ** 2).sum())
        n += a.size
        if a.size:
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    n = max(n, 1)
    mean_in, mean_out = sum_in / n, sum_out / n
    rng = hi - lo if hi > lo else _dtype_span(source.dtype)
    mse = sq / n
    shift = mean_out - mean_in
    return {
        "method": f"result downscaled by MATLAB bicubic x1/{scale} vs the input",
        "mean_in": round(mean_in, 6),
        "mean_out": round(mean_out, 6),
        "mean_shift": round(shift, 6),
        "shift_of_mean": round(shift / abs(mean_in), 6) if abs(mean_in) > 1e-12 else None,
        "shift_of_range": round(shift / rng, 6),
        "range": float(rng),
        "psnr": round(10 * math.log10(rng**2 / mse), 3) if mse > 0 else float("inf"),
        "planes": len(planes),
        "crop": MAX_SIDE,
        "seconds": round(time.perf_counter() - t0, 4),
    }


def _dtype_span(dtype) -> float:
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return float(info.max) - float(info.min)
    return 1.0


def check_warnings(check: dict, *, likely_cause: str) -> list[str]:
    """The visible warnings of a check: a mean shift beyond ~5 % of the input's mean or ~2 % of
    its range, naming ``likely_cause``."""
    som, sor = check.get("shift_of_mean"), check.get("shift_of_range") or 0.0
    if (som is not None and abs(som) > MEAN_OF_MEAN) or abs(sor) > MEAN_OF_RANGE:
        pct = f"{100 * som:+.1f} % of the input's mean, " if som is not None else ""
        return [
            f"the result's mean intensity moved from {check['mean_in']:.4g} to {check['mean_out']:.4g} "
            f"({pct}{100 * sor:+.1f} % of its range; PSNR {check['psnr']:.1f} dB against the input): "
            f"likely cause: {likely_cause}"
        ]
    return []


_ZERO_CACHE: dict = {}


def model_zero_offset(model, *, channels: int, device: str = "auto", precision: str = "auto") -> float:
    """The model's largest output (0..1 units) for an all-zero input: what "black" becomes.

    Measured once per model, device and precision on an 8x8 zero tile (cached)."""
    key = (model.sha256 or id(model.module), channels, str(device), str(precision))
    if key not in _ZERO_CACHE:
        from napari_rrim_sr.engine.api import Upscaler

        up = Upscaler(model, device=device, precision=precision, channels=channels)
        try:
            z = np.zeros((8, 8, 3) if channels == 3 else (8, 8), np.float32)
            y = up.upscale(z, rgb=channels == 3, tile=0, normalization=(0.0, 1.0))
        finally:
            up.close()
        _ZERO_CACHE[key] = float(np.max(np.abs(y)))
    return _ZERO_CACHE[key]
