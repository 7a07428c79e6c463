"""Array layout and slice planning: which axes are spatial, colour and planes; what to write where.

Why a module: the ML engine, the bicubic path and the dask path must agree on the same axis
conventions (see :mod:`.engine`) and write results the same way (full shape or only the
selected planes, into numpy, np.memmap or zarr outputs).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_rrim_sr.engine.normalize import check_dtype
from napari_rrim_sr.errors import InputError


@dataclass(frozen=True)
class Layout:
    """How an array's axes are used: spatial (y, x), optional trailing RGB(A) axis, planes."""

    shape: tuple[int, ...]
    y_axis: int
    x_axis: int
    channel_axis: int | None
    plane_axes: tuple[int, ...]

    @property
    def height(self) -> int:
        return self.shape[self.y_axis]

    @property
    def width(self) -> int:
        return self.shape[self.x_axis]

    @property
    def n_channels(self) -> int:
        return 1 if self.channel_axis is None else self.shape[self.channel_axis]

    @property
    def rgb(self) -> bool:
        return self.channel_axis is not None

    @property
    def plane_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.plane_axes)

    @property
    def inner_axes(self) -> tuple[int, ...]:
        """The non-plane axes in their original order."""
        return tuple(sorted(a for a in (self.y_axis, self.x_axis, self.channel_axis) if a is not None))

    def out_shape(self, scale: int) -> tuple[int, ...]:
        s = list(self.shape)
        s[self.y_axis] *= scale
        s[self.x_axis] *= scale
        return tuple(s)

    def index(self, plane: tuple[int, ...], inner: dict[int, Any] | None = None) -> tuple:
        """An index into the full array: ``plane`` ints on the plane axes, ``inner`` (axis ->
        slice) or ``slice(None)`` on the others."""
        idx: list[Any] = [slice(None)] * len(self.shape)
        for a, i in zip(self.plane_axes, plane):
            idx[a] = int(i)
        for a, s in (inner or {}).items():
            idx[a] = s
        return tuple(idx)

    def to_chw_perm(self) -> tuple[int, ...]:
        """Permutation taking a plane (inner axes in original order) to (C?, Y, X)."""
        order = self.inner_axes
        want = ([self.channel_axis] if self.channel_axis is not None else []) + [self.y_axis, self.x_axis]
        return tuple(order.index(a) for a in want)

    def from_chw_perm(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.argsort(self.to_chw_perm()))


def _norm_axis(a, ndim: int, what: str) -> int:
    if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
        raise InputError(f"{what} must be integers, got {a!r}")
    if not -ndim <= int(a) < ndim:
        raise InputError(f"{what} {a} is out of range for an array with {ndim} dimensions")
    return int(a) % ndim


def resolve_layout(shape, spatial_axes=None, rgb=None) -> Layout:
    """Decide which axes are spatial, RGB(A) and planes; raise InputError on impossible choices."""
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim < 2:
        raise InputError(f"an image needs at least 2 dimensions (Y, X); got shape {shape}")
    sp = None
    if spatial_axes is not None:
        try:
            sp = tuple(spatial_axes)
        except TypeError:
            raise InputError(f"spatial_axes must be two axis numbers, got {spatial_axes!r}") from None
        if len(sp) != 2:
            raise InputError(f"spatial_axes must name exactly two axes (Y, X), got {spatial_axes!r}")
        sp = tuple(_norm_axis(a, ndim, "spatial_axes") for a in sp)
        if sp[0] == sp[1]:
            raise InputError(f"spatial_axes must be two different axes, got {spatial_axes!r}")
    last = ndim - 1
    if rgb is None:
        rgb = ndim >= 3 and shape[-1] in (3, 4) and (sp is None or last not in sp)
    elif rgb:
        if ndim < 3 or shape[-1] not in (3, 4):
            raise InputError(f"rgb=True needs a trailing axis of size 3 or 4; got shape {shape}")
        if sp is not None and last in sp:
            raise InputError("rgb=True: the last (colour) axis cannot also be a spatial axis")
    rgb = bool(rgb)
    if sp is None:
        sp = (ndim - 3, ndim - 2) if rgb else (ndim - 2, ndim - 1)
        if rgb and ndim < 3:
            raise InputError(f"an RGB image needs shape (..., Y, X, 3|4); got {shape}")
    channel = last if rgb else None
    planes = tuple(a for a in range(ndim) if a not in sp and a != channel)
    lay = Layout(shape, sp[0], sp[1], channel, planes)
    h, w = lay.height, lay.width
    if h == 0 or w == 0 or any(shape[a] == 0 for a in planes):
        raise InputError(f"the image is empty (shape {shape})")
    if h < 2 or w < 2:
        raise InputError(
            f"the image is {h}x{w} pixels (spatial axes {sp} of shape {shape}); super-resolution "
            "needs at least 2x2 pixels. Check spatial_axes."
        )
    return lay


def is_dask(a) -> bool:
    return type(a).__module__.split(".")[0] == "dask"


def check_image(image):
    """Accept numpy-like or dask arrays; refuse lists of planes, labels-like dtypes etc."""
    if is_dask(image) or isinstance(image, np.ndarray):
        arr = image
    elif hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__"):
        arr = image  # zarr / h5py / memmap-like: read plane by plane
    else:
        try:
            arr = np.asarray(image)
        except Exception as exc:  # ragged lists etc.
            raise InputError(f"cannot interpret the input as an array: {exc}") from None
    if np.dtype(arr.dtype).kind == "O":
        raise InputError("object arrays are not images; pass a numeric array")
    check_dtype(arr.dtype)
    return arr


class Plane:
    """One plane to process: its index over the plane axes and its position in a compact result."""

    __slots__ = ("index", "pos")

    def __init__(self, index: tuple[int, ...], pos: tuple[int, ...]):
        self.index = index
        self.pos = pos


def plan_planes(layout: Layout, slices, s: int) -> tuple[list[Plane], tuple[int, ...]]:
    """The planes to process, each with its read index and its write index in the result.

    Without ``slices`` the result has the full upscaled shape. With ``slices`` (numpy indexing
    over the plane axes only, e.g. ``(z,)`` or ``(slice(0, 5), 2)``) the result holds only the
    selected planes: the shape the index selects, followed by the non-plane axes in order.
    """
    pshape = layout.plane_shape
    full = layout.out_shape(s)
    if slices is None:
        planes = [Plane(tuple(p), tuple(p)) for p in itertools.product(*map(range, pshape))]
        return planes, full
    sel = slices if isinstance(slices, tuple) else (slices,)
    if len(sel) > len(pshape):
        raise InputError(
            f"slices {slices!r} index {len(sel)} axes but the image has {len(pshape)} non-spatial "
            f"axes (shape {layout.shape}, plane axes {layout.plane_axes})"
        )
    grid = np.arange(int(np.prod(pshape)), dtype=np.int64).reshape(pshape) if pshape else np.array(0)
    try:
        chosen = grid[sel]
    except (IndexError, TypeError) as exc:
        raise InputError(f"slices {slices!r} does not select planes of shape {pshape}: {exc}") from None
    inner_shape = tuple(full[a] for a in layout.inner_axes)
    result_shape = tuple(np.shape(chosen)) + inner_shape
    planes = []
    for k, flat in enumerate(np.ravel(chosen)):
        p = np.unravel_index(int(flat), pshape) if pshape else ()
        pos = np.unravel_index(k, np.shape(chosen)) if np.ndim(chosen) else ()
        planes.append(Plane(tuple(int(i) for i in p), tuple(int(i) for i in pos)))
    if not planes:
        raise InputError(f"slices {slices!r} selects no planes")
    return planes, result_shape


def prepare_out(out, image, layout: Layout, s: int, result_shape, slices) -> "OutWriter":
    """Allocate the result or check the caller's array; wrap it in an :class:`OutWriter`."""
    full = layout.out_shape(s)
    dtype = np.dtype(image.dtype)
    if out is None:
        return OutWriter(np.empty(result_shape, dtype=dtype), layout, slices is not None)
    oshape = tuple(out.shape)
    if np.dtype(out.dtype) != dtype:
        raise InputError(f"out has dtype {out.dtype}; the result has the input's dtype {dtype}")
    if oshape == full:
        compact = False
    elif slices is not None and oshape == tuple(result_shape):
        compact = True
    else:
        allowed = f"{full}" + (f" or {tuple(result_shape)}" if slices is not None else "")
        raise InputError(f"out has shape {oshape}; expected {allowed}")
    if isinstance(out, np.ndarray):
        if not out.flags.writeable:
            raise InputError("out is read-only")
        if isinstance(image, np.ndarray) and np.shares_memory(out, image):
            raise InputError("out must not share memory with the input image")
    return OutWriter(out, layout, compact)


class OutWriter:
    """Writes finished output rows of a plane into the result array.

    ``compact``: the result holds only the selected planes (leading axes), followed by the
    inner (spatial, colour) axes in their original order; otherwise it has the full shape.
    Only basic indexing is used, so np.memmap and zarr arrays work as ``out``.
    """

    def __init__(self, arr, layout: Layout, compact: bool):
        self.arr = arr
        self.layout = layout
        self.compact = compact
        self._perm = layout.from_chw_perm()

    def write(self, plane: Plane, a: int, b: int, rows: np.ndarray) -> None:
        lay = self.layout
        block = rows if lay.channel_axis is not None else rows[0]
        if block.ndim == 3:
            block = np.transpose(block, self._perm)
        if self.compact:
            inner = [slice(None)] * len(lay.inner_axes)
            inner[lay.inner_axes.index(lay.y_axis)] = slice(a, b)
            idx = tuple(plane.pos) + tuple(inner)
        else:
            idx = lay.index(plane.index, {lay.y_axis: slice(a, b)})
        self.arr[idx] = block
