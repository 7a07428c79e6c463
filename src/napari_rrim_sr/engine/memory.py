"""Memory arithmetic for planning a run: how big a result is, how much memory is free, and the
one plain error when it does not fit (the job pipeline and the chunked/OME-Zarr path use it)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from napari_rrim_sr.errors import InputError

__all__ = ["available_memory", "check_fits_in_memory", "format_bytes", "output_nbytes"]


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


def check_fits_in_memory(
    needed: int, what: str, *, suggestion: str, available: int | None = None, fraction: float = 0.7
) -> None:
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
