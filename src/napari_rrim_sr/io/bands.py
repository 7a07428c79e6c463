"""Is a fourth sample transparency or a band? RGBA masks versus RGB + NIR.

napari (and pillow, and TIFF's ``extrasamples``) take a 4th sample as alpha. Remote-sensing
products (NAIP, Landsat composites) store near-infrared there; treated as alpha, NIR turns into
opacity (water goes translucent) and gets bicubic instead of the model. A real alpha channel is
a mask: constant (fully opaque), binary (a cut-out), or nearly all of its pixels at 0 or the
maximum with a thin antialiased edge. Anything else is image content and is upscaled as a band.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

__all__ = ["ALPHA_EDGE_MAX", "classify_fourth_band", "fourth_band_plane"]

#: an alpha mask may have at most this fraction of pixels strictly between 0 and its maximum
ALPHA_EDGE_MAX = 0.02
_MAX_SAMPLES = 1 << 20  #: pixels looked at (a regular subsample of larger planes)


def fourth_band_plane(data: Any) -> np.ndarray:
    """The 4th sample of (..., Y, X, 4) data, on the middle index of the leading axes (lazy arrays stay lazy)."""
    shape = np.shape(data)
    if len(shape) < 3 or shape[-1] != 4:
        raise ValueError(f"expected (..., Y, X, 4) data, got shape {shape}")
    idx = tuple(n // 2 for n in shape[:-3]) + (slice(None), slice(None), 3)
    return np.asarray(data[idx])


def classify_fourth_band(data_yxc: Any) -> tuple[Literal["alpha", "band"], str]:
    """``("alpha" | "band", reason)`` for the 4th sample of (..., Y, X, 4) data.

    Alpha only when the 4th sample is constant or binary-like (at most 2 distinct values, or at
    most :data:`ALPHA_EDGE_MAX` of the pixels strictly between 0 and the maximum); otherwise it is
    a band. The reason is one line for the user (CLI, widget).
    """
    a = fourth_band_plane(data_yxc)
    step = max(1, int(np.ceil(np.sqrt(a.size / _MAX_SAMPLES))))
    v = a[::step, ::step].ravel()
    v = v[np.isfinite(v)] if v.dtype.kind == "f" else v
    if v.size == 0:
        return "alpha", "4th sample has no finite values: taken as alpha"
    vals = np.unique(v)
    if vals.size == 1:
        return "alpha", f"4th sample is constant ({vals[0]:g}): alpha (opaque)"
    if vals.size == 2:
        return "alpha", f"4th sample has 2 values ({vals[0]:g}, {vals[1]:g}): an alpha mask"
    top = float(vals[-1])
    between = float(np.mean((v > 0) & (v < top)))
    if vals[0] >= 0 and between <= ALPHA_EDGE_MAX:
        return "alpha", (
            f"4th sample is {100 * (1 - between):.1f} % at 0 or its maximum ({top:g}): an alpha mask with soft edges"
        )
    return "band", (
        f"4th sample varies ({vals.size} distinct values, {100 * between:.0f} % between 0 and "
        f"{top:g}): a band (e.g. near-infrared), not alpha"
    )
