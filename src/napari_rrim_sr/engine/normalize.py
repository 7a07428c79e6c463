"""Explicit intensity normalisation between an image's dtype and the model's 0..1 domain.

The generators are trained on float 0..1 images. Real data come as uint8, uint16 (often
holding 10/12/14-bit values), signed ints or floats in arbitrary units, so the mapping must be
chosen, never guessed (guessing "12-bit" from ``max > 256`` silently changes contrast and the
written values). Modes:

* ``"dtype"``: the dtype's full range (uint8 0..255, uint16 0..65535, int16 -32768..32767);
  ``bit_depth`` narrows it for unsigned data stored in a wider type (12-bit in uint16:
  0..4095). Float data are taken as 0..1 and must lie in it (otherwise use another mode).
  **Wide integers** (int32, int64, uint32, uint64) without ``bit_depth`` use the data's actual
  min..max instead (recorded as mode ``"range"``): their nominal range (4e9 or 1.8e19 wide)
  would squeeze any real image into one float32 value and write a constant.
* ``"range"``: the data's actual min..max.
* ``"percentile"``: the ``(lo, hi)`` percentiles (default 0.1 / 99.9) of the data; values
  beyond them map outside 0..1 and are passed through unclipped (like CSBDeep), so highlights
  are not flattened; the output is still clipped to the dtype's range.
* ``(lo, hi)``: explicit values (e.g. the same window for every image of a series).

:meth:`Normalization.forward` gives float32; :meth:`Normalization.inverse` maps back to the
source dtype, clipped to the dtype's range (or to ``0..2**bit_depth-1``) and rounded for ints;
float outputs are clipped to the dtype's finite range (float16 never overflows to Inf). Both
are computed in float64 where float32 could lose the data's values or overflow (wide integers,
float64 data, huge ranges), so finite input always gives finite output. A range whose width
overflows float64 itself is refused with an error that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from napari_rrim_sr.errors import InputError

MODES = ("dtype", "range", "percentile")
DEFAULT_PERCENTILES = (0.1, 99.9)
#: above this many values, percentiles of non-8/16-bit data come from a strided subsample
PERCENTILE_SAMPLE = 1 << 22


def check_dtype(dtype) -> np.dtype:
    """Refuse dtypes that are not intensities (bool masks, complex, objects, strings)."""
    dt = np.dtype(dtype)
    if dt.kind == "b":
        raise InputError(
            "boolean images (masks) cannot be super-resolved; convert to uint8 (0/255) first if this is really an image"
        )
    if dt.kind == "c":
        raise InputError(f"complex images ({dt}) are not supported; pass the magnitude or a real part")
    if dt.kind not in "iuf":
        raise InputError(f"unsupported image dtype {dt}; expected an integer or float dtype")
    if dt.kind == "f" and dt.itemsize < 4:
        return dt  # float16 is accepted; computed in float32
    return dt


def check_finite(arr, what: str = "image") -> None:
    """Raise InputError naming NaN / Inf in a float array (intensities must be finite)."""
    a = np.asarray(arr)
    if a.dtype.kind != "f" or a.size == 0:
        return
    # chunked so a large stack does not need a full-size boolean temporary
    flat = a.reshape(-1) if a.flags.c_contiguous else None
    if flat is None:
        planes = a.reshape((-1,) + a.shape[-2:]) if a.ndim >= 2 else a.reshape(1, -1)
        chunks = (planes[i] for i in range(planes.shape[0]))
    else:
        step = 1 << 22
        chunks = (flat[i : i + step] for i in range(0, flat.size, step))
    n_nan = n_inf = 0
    for c in chunks:
        if not np.isfinite(c).all():
            n_nan += int(np.isnan(c).sum())
            n_inf += int(np.isinf(c).sum())
    if n_nan or n_inf:
        parts = []
        if n_nan:
            parts.append(f"{n_nan} NaN")
        if n_inf:
            parts.append(f"{n_inf} Inf")
        raise InputError(
            f"{what} contains {' and '.join(parts)} value(s); replace them (e.g. np.nan_to_num "
            "or a fill value) before upscaling"
        )


def dtype_limits(dtype, bit_depth: int | None = None) -> tuple[float, float]:
    """The nominal range of ``dtype`` (floats: 0..1), narrowed by ``bit_depth`` for unsigned ints."""
    dt = check_dtype(dtype)
    if bit_depth is not None:
        bits = int(bit_depth)
        if dt.kind != "u":
            raise InputError(f"bit_depth applies to unsigned integer data, not {dt}")
        if not 1 <= bits <= dt.itemsize * 8:
            raise InputError(f"bit_depth={bit_depth} is impossible for {dt} (1..{dt.itemsize * 8})")
        return 0.0, float(2**bits - 1)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return float(info.min), float(info.max)
    return 0.0, 1.0


#: integer dtypes whose nominal range is too wide for a useful "dtype" normalisation
WIDE_INTS = frozenset(np.dtype(t) for t in (np.int32, np.int64, np.uint32, np.uint64))
_F32_MAX = float(np.finfo(np.float32).max)


def is_wide_int(dtype) -> bool:
    """int32/int64/uint32/uint64: "dtype" normalisation means the data's range for these."""
    return np.dtype(dtype) in WIDE_INTS


def clip_limits(dtype, bit_depth: int | None = None) -> tuple[float, float]:
    """Where outputs are clipped: the integer range (or bit depth); floats: the finite range."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        info = np.finfo(dt)
        return float(info.min), float(info.max)
    lo, hi = dtype_limits(dt, bit_depth)
    # int64/uint64 extremes are not floats: clip to the nearest float inside the range so the
    # cast back cannot overflow
    if int(hi) > np.iinfo(dt).max:
        hi = float(np.nextafter(hi, -np.inf))
    if int(lo) < np.iinfo(dt).min:
        lo = float(np.nextafter(lo, np.inf))
    return lo, hi


def to_dtype(x: np.ndarray, dtype) -> np.ndarray:
    """``x`` cast to ``dtype``: integers rounded and clipped to their range, floats clipped to
    their finite range (bicubic overshoot near float16's maximum must not become Inf)."""
    dt = np.dtype(dtype)
    lo, hi = clip_limits(dt)
    if dt.kind in "iu":
        x = np.rint(x)
        x = np.clip(x, lo, hi)
    elif np.dtype(x.dtype).kind == "f" and np.finfo(x.dtype).max > hi:
        x = np.clip(x, lo, hi)
    return x.astype(dt, copy=False)


@dataclass(frozen=True)
class Normalization:
    """A fixed affine map ``x -> (x - lo) / (hi - lo)`` and its clipped inverse.

    Frozen and tiny, so it can be computed once for a whole stack (or a dask array) and shipped
    to workers: every tile and chunk is then normalised identically.
    """

    lo: float
    hi: float
    dtype: np.dtype
    mode: str = "explicit"
    bit_depth: int | None = None
    #: clip the inverse to [out_lo, out_hi] (integer range; floats: 0..1 in "dtype" mode)
    out_lo: float = -np.inf
    out_hi: float = np.inf

    def __post_init__(self):
        if not (np.isfinite(self.lo) and np.isfinite(self.hi)):
            raise InputError(f"normalization limits must be finite, got ({self.lo}, {self.hi})")
        if not np.isfinite(self.hi - self.lo):
            raise InputError(
                f"the intensity range {self.lo:g}..{self.hi:g} is wider than float64 can represent "
                "(its width overflows); rescale the data (e.g. divide by 1e10) or pass an explicit "
                "(lo, hi) normalization"
            )

    @property
    def span(self) -> float:
        d = self.hi - self.lo
        return d if d > 0 else 1.0  # constant image: any span maps it to 0

    @property
    def _wide(self) -> bool:
        """float32 arithmetic could lose the data's values (wide ints, float64) or overflow."""
        if self.dtype.kind in "iu":
            return self.dtype.itemsize > 2
        return self.dtype.itemsize > 4 or max(abs(self.lo), abs(self.hi), self.span) >= 1e30

    def forward(self, x, out: np.ndarray | None = None) -> np.ndarray:
        """float32 ``(x - lo) / span``; ``out`` may be a preallocated float32 buffer.

        Computed in float32 where that is exact enough (8/16-bit ints, float16/32 of moderate
        range; bit-identical to earlier releases), else in float64 and clipped to float32's
        finite range, so a finite input never becomes Inf on its way to the model.
        """
        a = np.asarray(x)
        if out is None:
            out = np.empty(a.shape, dtype=np.float32)
        if not self._wide:
            np.subtract(a, self.lo, out=out, dtype=np.float32, casting="unsafe")
            out *= np.float32(1.0 / self.span)
            if np.isfinite(out.sum(dtype=np.float64)):
                return out
        t = np.subtract(a, self.lo, dtype=np.float64)
        t /= self.span
        np.clip(t, -_F32_MAX, _F32_MAX, out=t)
        out[...] = t
        return out

    def inverse(self, y, out: np.ndarray | None = None) -> np.ndarray:
        """Back to ``dtype``: ``y * span + lo``, clipped to the dtype's range (floats: its finite
        range), rounded for ints."""
        # float64 where float32 cannot hold the dtype's integers (int32/64), float64 data or a
        # span/offset whose products could overflow float32
        ft = np.float64 if self._wide else np.float32
        t = np.asarray(y, dtype=ft) * ft(self.span)
        t += ft(self.lo)
        if self.dtype.kind in "iu":
            np.rint(t, out=t)
        if np.isfinite(self.out_lo) or np.isfinite(self.out_hi):
            np.clip(t, self.out_lo, self.out_hi, out=t)
        if out is None:
            return t.astype(self.dtype, copy=False)
        out[...] = t
        return out

    def as_dict(self) -> dict:
        return {"mode": self.mode, "lo": self.lo, "hi": self.hi, "dtype": str(self.dtype), "bit_depth": self.bit_depth}


def _percentiles_of(a: np.ndarray, p: Sequence[float]) -> tuple[float, float]:
    if a.dtype.kind in "iu" and a.dtype.itemsize <= 2:
        # exact and cheap: a histogram of at most 65536 bins instead of sorting a copy
        offset = int(np.iinfo(a.dtype).min)
        counts = np.zeros(1 << (8 * a.dtype.itemsize), dtype=np.int64)
        planes = a.reshape((-1,) + a.shape[-2:]) if a.ndim >= 2 else a.reshape(1, -1)
        for plane in planes:
            v = plane.ravel()
            if offset:
                v = v.astype(np.int32) - offset
            counts += np.bincount(v, minlength=counts.size)
        cdf = np.cumsum(counts)
        n = int(cdf[-1])
        vals = []
        for q in p:
            # numpy's default "linear" method on the sorted values
            pos = (n - 1) * float(q) / 100.0
            i0, frac = int(np.floor(pos)), pos - np.floor(pos)
            v0 = int(np.searchsorted(cdf, i0 + 1))
            v1 = int(np.searchsorted(cdf, min(i0 + 2, n)))
            vals.append(offset + v0 + frac * (v1 - v0))
        return float(vals[0]), float(vals[1])
    flat = a.reshape(-1)
    if flat.size > PERCENTILE_SAMPLE:
        flat = flat[:: int(np.ceil(flat.size / PERCENTILE_SAMPLE))]
    lo, hi = np.percentile(flat.astype(np.float64), list(p))
    return float(lo), float(hi)


def parse_percentiles(percentiles) -> tuple[float, float]:
    """``(lo, hi)`` percentiles as floats with 0 <= lo < hi <= 100, or an InputError."""
    try:
        lo, hi = (float(v) for v in percentiles)
    except (TypeError, ValueError):
        raise InputError(f"percentiles must be two numbers (lo, hi), got {percentiles!r}") from None
    if not (0.0 <= lo < hi <= 100.0):
        raise InputError(f"percentiles must satisfy 0 <= lo < hi <= 100, got ({lo}, {hi})")
    return lo, hi


def compute_normalization(
    data,
    mode: Any = "dtype",
    *,
    percentiles=DEFAULT_PERCENTILES,
    bit_depth: int | None = None,
    dtype=None,
) -> Normalization:
    """The :class:`Normalization` for ``data`` (numpy or dask) under ``mode``.

    ``mode`` is ``"dtype"``, ``"range"``, ``"percentile"``, a ``(lo, hi)`` pair or a ready
    :class:`Normalization` (returned as is). Statistics are computed over all of ``data``
    (pass one plane for per-slice normalisation). For dask arrays this computes min/max or
    a histogram eagerly (one pass).
    """
    if isinstance(mode, Normalization):
        return mode
    dt = check_dtype(dtype if dtype is not None else data.dtype)
    out_lo, out_hi = clip_limits(dt, bit_depth)
    is_dask = type(data).__module__.startswith("dask")
    if isinstance(mode, str):
        if mode not in MODES:
            raise InputError(f"normalization must be one of {MODES} or (lo, hi), got {mode!r}")
        if bit_depth is not None and mode != "dtype":
            dtype_limits(dt, bit_depth)  # validate the value even though only the clip uses it
        if mode == "dtype" and bit_depth is None and is_wide_int(dt):
            # the documented default for wide integers: the data's range (see the module doc)
            if data is None:
                raise InputError(
                    f"normalization='dtype' of {dt} data needs the data (its actual range is used); "
                    "pass normalization='range', 'percentile' or an explicit (lo, hi)"
                )
            lo, hi = _minmax(data, is_dask)
            mode = "range"
        elif mode == "dtype":
            lo, hi = dtype_limits(dt, bit_depth)
            if dt.kind == "f":
                out_lo, out_hi = 0.0, 1.0
            if (bit_depth is not None or dt.kind == "f") and data is not None:
                mn, mx = _minmax(data, is_dask)
                if dt.kind == "f" and (mn < 0.0 or mx > 1.0):
                    raise InputError(
                        f"float image values span {mn:g}..{mx:g}, outside 0..1, so "
                        "normalization='dtype' does not apply; use 'range', 'percentile' or an "
                        "explicit (lo, hi)"
                    )
                if bit_depth is not None and mx > hi:
                    raise InputError(
                        f"bit_depth={bit_depth} allows values up to {hi:g}, but the image "
                        f"contains {mx:g}; pass the right bit depth or leave bit_depth unset"
                    )
        elif mode == "range":
            lo, hi = _minmax(data, is_dask)
        else:
            p = parse_percentiles(percentiles)
            if is_dask:
                lo, hi = _dask_percentiles(data, p)
            else:
                lo, hi = _percentiles_of(np.asarray(data), p)
        return Normalization(float(lo), float(hi), dt, mode, bit_depth, out_lo, out_hi)
    try:
        lo, hi = (float(v) for v in mode)
    except (TypeError, ValueError):
        raise InputError(f"normalization must be one of {MODES} or a (lo, hi) pair, got {mode!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise InputError(f"explicit normalization needs finite lo < hi, got ({lo}, {hi})")
    return Normalization(lo, hi, dt, "explicit", bit_depth, out_lo, out_hi)


def _minmax(data, is_dask: bool) -> tuple[float, float]:
    if is_dask:
        import dask
        import dask.array as da

        mn, mx = dask.compute(da.min(data), da.max(data))
    else:
        a = np.asarray(data)
        if a.size == 0:
            raise InputError("cannot normalise an empty image")
        mn, mx = a.min(), a.max()
    mn, mx = float(mn), float(mx)
    if not (np.isfinite(mn) and np.isfinite(mx)):
        raise InputError(
            f"image contains NaN or Inf values (its range is {mn}..{mx}); replace them (e.g. "
            "np.nan_to_num or a fill value) before upscaling"
        )
    return mn, mx


def _dask_percentiles(data, p: tuple[float, float]) -> tuple[float, float]:
    import dask.array as da

    if data.dtype.kind in "iu" and data.dtype.itemsize <= 2:
        offset = int(np.iinfo(data.dtype).min)
        nbins = 1 << (8 * data.dtype.itemsize)
        flat = data.ravel()
        if offset:
            flat = flat.astype(np.int32) - offset
        counts = np.asarray(da.bincount(flat, minlength=nbins).compute())
        cdf = np.cumsum(counts)
        n = int(cdf[-1])
        vals = []
        for q in p:
            pos = (n - 1) * q / 100.0
            i0, frac = int(np.floor(pos)), pos - np.floor(pos)
            v0 = int(np.searchsorted(cdf, i0 + 1))
            v1 = int(np.searchsorted(cdf, min(i0 + 2, n)))
            vals.append(offset + v0 + frac * (v1 - v0))
        return float(vals[0]), float(vals[1])
    flat = data.ravel()
    step = max(1, int(np.ceil(flat.size / PERCENTILE_SAMPLE)))
    sample = np.asarray(flat[::step].compute(), dtype=np.float64)
    lo, hi = np.percentile(sample, list(p))
    return float(lo), float(hi)
