"""One options object for every upscaling entry point (``Upscaler``, ``upscale``, ``upscale_dask``).

Why an object: the same dozen settings (model, device, precision, tiling, normalisation, axes)
used to be repeated as keyword parameters in three signatures, each with its own checks. Now
they are one frozen, picklable :class:`UpscaleOptions`: built and syntax-checked once (so the
CLI, a job pipeline or a dask client can refuse bad values before any work), shipped unchanged
to threads and dask workers, and turned into keyword form in exactly one place
(:func:`options_from`). Checks that need torch or files (is CUDA there, does the weights file
load, does the model run this precision) are :func:`~.upscaler.validate_options`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_rrim_sr.engine.devices import BACKENDS, PRECISIONS
from napari_rrim_sr.engine.devices import DEVICES as DEVICE_KINDS
from napari_rrim_sr.engine.normalize import DEFAULT_PERCENTILES, MODES, Normalization, parse_percentiles
from napari_rrim_sr.errors import InputError

#: default tile edge (input pixels) per device type. CPU: chosen by measurement (bench --sweep,
#: docs/benchmarks.md): 128..512 px tiles all beat an untiled run on a 768-px image (whose
#: full-size activations overflow the caches), 192 was the fastest and needs ~190 MiB of
#: bf16 activations per tile, half of what 256 needs. GPU values are untested defaults.
DEFAULT_TILE = {"cpu": 192, "cuda": 512, "mps": 256}
#: default overlap between tiles (input pixels). 16 gave a 1.3e-3 seam with the trained RRIM, 24
#: gives 1.2e-4 (docs/benchmarks.md, "Seam error")
DEFAULT_OVERLAP = 24
#: reflect-padded context at the image border (input pixels, at most overlap // 2): replaces
#: the network's zero padding there. Small because untiled runs pay for it too: 4 px cost 3%
#: on a 256-px image, 8 px would cost 13%.
BORDER_MARGIN = 4
#: smallest tile the out-of-memory fallback will try
MIN_TILE = 32
BLENDS = ("cosine", "linear")


def default_overlap(tile_px: int | None) -> int:
    """The default overlap, capped at half of a small tile (an explicit overlap is never changed)."""
    if tile_px:
        return min(DEFAULT_OVERLAP, (int(tile_px) // 2) // 4 * 4)
    return DEFAULT_OVERLAP


def _is_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def check_tile(tile) -> int | None:
    """None (device default), 0 (no tiling) or an edge of at least 8 px; anything else is refused."""
    if tile is None:
        return None
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer, float)) or int(tile) != tile or tile < 0:
        raise InputError(f"tile must be a non-negative integer (0 = no tiling), got {tile!r}")
    tile = int(tile)
    if 0 < tile < 8:
        raise InputError(f"tile must be 0 (no tiling) or at least 8 pixels, got {tile}")
    return tile


def resolve_tile(tile, device) -> int:
    """The tile edge for ``device`` (a ``torch.device``): the explicit value or the device default."""
    tile = check_tile(tile)
    if tile is None:
        return DEFAULT_TILE.get(device.type, 256)
    return tile


def check_overlap(overlap, name: str = "overlap") -> int | None:
    if overlap is None:
        return None
    if not _is_int(overlap) and not (isinstance(overlap, float) and overlap == int(overlap)):
        raise InputError(f"{name} must be a non-negative integer number of pixels, got {overlap!r}")
    if int(overlap) < 0:
        raise InputError(f"{name} must be >= 0, got {overlap}")
    return int(overlap)


def check_tile_overlap(tile_px: int, overlap) -> int:
    """The overlap for a resolved tile (default or explicit), at most half the tile."""
    ov = default_overlap(tile_px) if overlap is None else int(overlap)
    if tile_px and ov * 2 > tile_px:
        raise InputError(f"overlap ({ov}) must be at most half the tile ({tile_px})")
    return ov


@dataclass(frozen=True)
class UpscaleOptions:
    """Everything an upscaling run needs besides the image, the output array and the planes.

    Building one checks every value that does not depend on the input, so a bad tile, overlap,
    thread count, device name, precision, blend or normalisation fails once, up front. Frozen
    and picklable (as long as ``model`` is: a weights id, a path, None or a
    :class:`~.dask_path.ModelRef`), so dask workers and job queues can carry it.

    Fields are those of :func:`~.engine.upscale_iter`: ``model`` (LoadedModel, weights id, path or
    None for the registry default), ``device``/``precision``/``threads`` (:mod:`.devices`),
    ``self_ensemble``, ``tile``/``overlap``/``blend`` (:mod:`.tiling`),
    ``normalization``/``percentiles``/``bit_depth``/``per_slice`` (:mod:`.normalize`) and
    ``spatial_axes``/``rgb`` (:mod:`.layout`) and ``backend`` ("auto", "torch" or "openvino";
    :mod:`.backends`: auto = OpenVINO on the CPU when installed, the model converts and the
    run repays the compile, else torch).
    """

    model: Any = None
    device: Any = "auto"
    precision: str = "auto"
    threads: int | None = None
    self_ensemble: bool = False
    tile: int | None = None
    overlap: int | None = None
    blend: str = "cosine"
    normalization: Any = "dtype"
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    bit_depth: int | None = None
    per_slice: bool = False
    spatial_axes: tuple[int, int] | None = None
    rgb: bool | None = None
    backend: str = "auto"

    def __post_init__(self):
        set_ = object.__setattr__
        dev = self.device
        name = str(dev if dev is not None else "auto").lower()
        if name.split(":")[0] not in DEVICE_KINDS:
            raise InputError(f"device must be one of {DEVICE_KINDS} (or 'cuda:N'), got {dev!r}")
        set_(self, "device", name)  # a torch.device becomes its (picklable, hashable) name
        prec = str(self.precision if self.precision is not None else "auto").lower()
        if prec not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        set_(self, "precision", prec)
        backend = str(self.backend if self.backend is not None else "auto").lower()
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        set_(self, "backend", backend)
        if self.threads is not None:
            t = self.threads
            if not (_is_int(t) or (isinstance(t, float) and t == int(t))) or int(t) < 1:
                raise InputError(f"threads must be >= 1, got {t}")
            set_(self, "threads", int(t))
        set_(self, "self_ensemble", bool(self.self_ensemble))
        set_(self, "per_slice", bool(self.per_slice))
        set_(self, "tile", check_tile(self.tile))
        set_(self, "overlap", check_overlap(self.overlap))
        if self.tile and self.overlap is not None and self.overlap * 2 > self.tile:
            raise InputError(f"overlap ({self.overlap}) must be at most half the tile ({self.tile})")
        if self.blend not in BLENDS:
            raise InputError(f"blend must be one of {BLENDS}, got {self.blend!r}")
        norm = self.normalization
        if isinstance(norm, str):
            if norm not in MODES:
                raise InputError(f"normalization must be one of {MODES} or (lo, hi), got {norm!r}")
        elif not isinstance(norm, Normalization):
            try:
                lo, hi = (float(v) for v in norm)
            except (TypeError, ValueError):
                raise InputError(f"normalization must be one of {MODES} or a (lo, hi) pair, got {norm!r}") from None
            if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
                raise InputError(f"explicit normalization needs finite lo < hi, got ({lo}, {hi})")
            set_(self, "normalization", (lo, hi))
        set_(self, "percentiles", parse_percentiles(self.percentiles))
        if self.bit_depth is not None:
            b = self.bit_depth
            if not (_is_int(b) or (isinstance(b, float) and b == int(b))) or not 1 <= int(b) <= 64:
                raise InputError(f"bit_depth must be an integer number of bits (1..64), got {b!r}")
            set_(self, "bit_depth", int(b))
        if self.spatial_axes is not None:
            try:
                sp = tuple(self.spatial_axes)
            except TypeError:
                raise InputError(f"spatial_axes must be two axis numbers, got {self.spatial_axes!r}") from None
            set_(self, "spatial_axes", sp)
        if self.rgb is not None:
            set_(self, "rgb", bool(self.rgb))

    def replace(self, **changes) -> "UpscaleOptions":
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """The fields by name, ``model`` included as given (for provenance, pass it through jsonable)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


FIELDS = frozenset(f.name for f in dataclasses.fields(UpscaleOptions))


def options_from(options: UpscaleOptions | None = None, **kw) -> UpscaleOptions:
    """The one place the keyword form becomes an :class:`UpscaleOptions`.

    ``options`` (or the defaults) with the keyword values that are not None-by-default applied;
    an unknown keyword is a TypeError, as for a normal function call.
    """
    unknown = set(kw) - FIELDS
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    if options is None:
        return UpscaleOptions(**kw)
    if not isinstance(options, UpscaleOptions):
        raise InputError(f"options must be an UpscaleOptions, got {type(options).__name__}")
    return options.replace(**kw) if kw else options
