"""Tile geometry, feathered blending weights and reflect-padded tile reads (pure numpy).

Scheme (one axis; the 2-D grid is the product of two 1-D grids):

* The image of length ``L`` is virtually extended by ``margin`` pixels of reflection on both
  sides (coordinates ``-margin .. L + margin``), so tiles at the border see mirrored context
  instead of the network's zero padding. An untiled run is one tile over the same extended
  range, which is why tiled and untiled runs agree at the image borders too.
* Tiles of length ``tile`` are spread evenly over the extended range with at least
  ``overlap`` pixels shared between neighbours.
* In each overlap the two tiles are cross-faded (``linear`` or ``cosine`` ramp) after a dead
  zone of ``overlap // 4`` pixels at each tile's inner edge, where the network output is the
  least reliable (it saw zero padding there). Weights are normalised per axis so that they sum
  to exactly 1 everywhere, which lets the engine accumulate blended rows in a small band
  buffer instead of a full-size float image plus weight map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from napari_rrim_sr.errors import InputError

BLENDS = ("cosine", "linear")


@dataclass(frozen=True)
class Tile:
    """One tile: its input window ``[y0, y1) x [x0, x1)`` in unpadded image coordinates
    (may extend beyond the image: read it with :func:`read_window`) and its grid position."""

    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int


def _check_int(name: str, v, minimum: int) -> int:
    if isinstance(v, bool) or int(v) != v or v < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def axis_starts(length: int, tile: int, overlap: int, margin: int) -> list[int]:
    """Starts of the tiles along one axis, in unpadded coordinates (the first is ``-margin``).

    ``tile >= length + 2*margin`` gives one tile. Otherwise the fewest tiles with at least
    ``overlap`` shared pixels, spaced evenly (so no overlap is much larger than the others).
    """
    length = _check_int("length", length, 1)
    tile = _check_int("tile", tile, 1)
    overlap = _check_int("overlap", overlap, 0)
    margin = _check_int("margin", margin, 0)
    ext = length + 2 * margin
    if tile >= ext:
        return [-margin]
    if overlap >= tile:
        raise InputError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    n = math.ceil((ext - overlap) / (tile - overlap))
    n = max(n, 2)
    stride = (ext - tile) / (n - 1)
    return [-margin + int(round(k * stride)) for k in range(n)]


def _ramp(n: int, kind: str) -> np.ndarray:
    """Rising weights for ``n`` samples strictly between 0 and 1 (sample centres)."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    if kind == "linear":
        return t
    if kind == "cosine":
        return 0.5 - 0.5 * np.cos(np.pi * t)
    raise InputError(f"blend must be one of {BLENDS}, got {kind!r}")


@lru_cache(maxsize=64)
def axis_weights(starts: tuple[int, ...], tile: int, scale: int, blend: str) -> tuple[np.ndarray, ...]:
    """Per-tile 1-D weights at output resolution (length ``tile * scale`` each), summing to 1.

    In the overlap ``[s_k, e_{k-1})`` of tiles ``k-1`` and ``k``: tile ``k`` has weight 0 for the
    first ``overlap // 4`` input pixels, then ramps up to 1 over the middle of the overlap, and
    tile ``k-1`` gets the complement. Normalising by the sum also covers rare triple overlaps.
    """
    if blend not in BLENDS:
        raise InputError(f"blend must be one of {BLENDS}, got {blend!r}")
    n = len(starts)
    lo = starts[0] * scale
    hi = (starts[-1] + tile) * scale
    ws = []
    for k, s in enumerate(starts):
        w = np.ones(tile * scale, dtype=np.float64)
        if k > 0:  # rise against the previous tile
            ov = (starts[k - 1] + tile - s) * scale
            dead = (ov // scale // 4) * scale
            ramp_len = max(ov - 2 * dead, 1)
            w[:dead] = 0.0
            w[dead : dead + ramp_len] = _ramp(ramp_len, blend)
        if k < n - 1:  # fall against the next tile
            ov = (s + tile - starts[k + 1]) * scale
            dead = (ov // scale // 4) * scale
            ramp_len = max(ov - 2 * dead, 1)
            fall = np.ones(tile * scale)
            fall[tile * scale - dead :] = 0.0
            fall[tile * scale - dead - ramp_len : tile * scale - dead] = 1.0 - _ramp(ramp_len, blend)
            w = w * fall
        ws.append(w)
    total = np.zeros(hi - lo, dtype=np.float64)
    for s, w in zip(starts, ws):
        total[s * scale - lo : s * scale - lo + tile * scale] += w
    if (total <= 0).any():
        raise InputError("tile overlap too small for blending; increase overlap")
    out = []
    for s, w in zip(starts, ws):
        norm = (w / total[s * scale - lo : s * scale - lo + tile * scale]).astype(np.float32)
        norm.setflags(write=False)
        out.append(norm)
    return tuple(out)


@dataclass(frozen=True)
class TileGrid:
    """All tiles of one image plane, with their normalised blending weights."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int
    margin: int
    scale: int
    blend: str
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @classmethod
    def make(
        cls,
        height: int,
        width: int,
        tile: int | None,
        overlap: int,
        margin: int,
        scale: int,
        blend: str = "cosine",
        multiple: int = 1,
    ) -> "TileGrid":
        """``tile`` None or 0: a single tile over the extended image. Tile sizes are rounded up
        to ``multiple`` (the model's size constraint) and never exceed the extended image by
        more than that rounding."""
        if blend not in BLENDS:
            raise InputError(f"blend must be one of {BLENDS}, got {blend!r}")
        multiple = _check_int("size multiple", multiple, 1)
        ext_h, ext_w = height + 2 * margin, width + 2 * margin

        def size(ext: int) -> int:
            if not tile or tile >= ext:
                return -(-ext // multiple) * multiple
            # the fewest tiles of at most `tile` pixels, then shrink them to just cover the
            # image: full-size tiles spread evenly would overlap far more than `overlap`
            # (e.g. 3 tiles of 256 for 528 px), wasting up to 2x the compute.
            n = max(2, math.ceil((ext - overlap) / (int(tile) - overlap)))
            t = math.ceil((ext + (n - 1) * overlap) / n)
            return min(-(-t // multiple) * multiple, -(-int(tile) // multiple) * multiple)

        th, tw = size(ext_h), size(ext_w)
        if tile and overlap * 2 > min(int(tile), 1 << 30):
            raise InputError(f"overlap ({overlap}) must be at most half the tile ({tile})")
        ys = tuple(axis_starts(height, th, overlap, margin)) if th < ext_h else (-margin,)
        xs = tuple(axis_starts(width, tw, overlap, margin)) if tw < ext_w else (-margin,)
        return cls(height, width, th, tw, overlap, margin, scale, blend, ys, xs)

    @property
    def n_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    def __iter__(self):
        for r, y in enumerate(self.ys):
            for c, x in enumerate(self.xs):
                yield Tile(r, c, y, y + self.tile_h, x, x + self.tile_w)

    def row_weights(self) -> tuple[np.ndarray, ...]:
        return axis_weights(self.ys, self.tile_h, self.scale, self.blend)

    def col_weights(self) -> tuple[np.ndarray, ...]:
        return axis_weights(self.xs, self.tile_w, self.scale, self.blend)


def reflect_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Indices ``start..stop-1`` folded into ``0..length-1`` by mirror reflection (edge not
    repeated, numpy's ``'reflect'``), for any distance outside the image."""
    idx = np.arange(start, stop)
    if length == 1:
        return np.zeros_like(idx)
    period = 2 * (length - 1)
    idx = np.mod(idx, period)
    return np.where(idx < length, idx, period - idx)


def read_window(plane: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """``plane[..., y0:y1, x0:x1]`` with reflection outside the image; a copy of the window only
    (never of the plane), so memory stays proportional to the tile."""
    h, w = plane.shape[-2:]
    if 0 <= y0 and y1 <= h and 0 <= x0 and x1 <= w:
        return np.array(plane[..., y0:y1, x0:x1])
    ry = reflect_indices(y0, y1, h)
    rx = reflect_indices(x0, x1, w)
    # read the bounding box of the needed rows/cols first (cheap for memmaps and dask planes)
    ylo, yhi, xlo, xhi = int(ry.min()), int(ry.max()) + 1, int(rx.min()), int(rx.max()) + 1
    box = np.asarray(plane[..., ylo:yhi, xlo:xhi])
    return box[..., (ry - ylo)[:, None], (rx - xlo)[None, :]]
