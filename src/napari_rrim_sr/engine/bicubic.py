"""MATLAB-compatible bicubic ``imresize`` for numpy arrays and torch tensors.

Why our own: the super-resolution evaluation convention (see docs: LR = MATLAB bicubic x1/4
with antialiasing) is defined by MATLAB's ``imresize``, and PIL / scikit-image / torch's
``interpolate`` all differ from it (kernel, boundary, antialiasing), which shifts published
PSNR numbers by tenths of a dB. This module re-implements MATLAB's algorithm:

* Keys' cubic kernel with ``a = -0.5``;
* output size ``ceil(in * scale)`` and the kernel sampled at ``u = x/scale + (1 - 1/scale)/2``
  (pixel-centre alignment, 1-based ``x``) with the *given* scale, as MATLAB does;
* for ``scale < 1`` with antialiasing, the kernel is stretched by ``1/scale``;
* weights normalised to sum 1 per output sample;
* out-of-range taps mirrored (MATLAB's ``aux = [1:n, n:-1:1]`` index folding, i.e.
  half-sample symmetric padding).

Both axes are resized independently (the operator is separable and linear); the per-axis
weights depend only on ``(in_size, out_size, scale, antialias)`` and are cached.

Layout: arrays are ``(..., H, W)``; leading axes are batched. Where a channel axis sits
elsewhere (``(H, W, 3)`` photos), :func:`bicubic_downscale` / :func:`bicubic_upscale` take
``channel_axis``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from napari_rrim_sr.engine.layout import check_image, plan_planes, prepare_out, resolve_layout
from napari_rrim_sr.engine.normalize import check_finite, to_dtype
from napari_rrim_sr.engine.progress import Progress, drain
from napari_rrim_sr.errors import InputError, positive_number

__all__ = [
    "cubic",
    "imresize",
    "imresize_torch",
    "bicubic_downscale",
    "bicubic_upscale",
    "to_uint8",
    "mod_crop",
]

#: Above this many entries (out_size * in_size) per axis the torch path gathers taps
#: instead of multiplying by a dense matrix (dense is fastest for training patches, but
#: a 2000 -> 8000 px upscale would need a 16M-entry matrix and O(n^2) work).
_DENSE_LIMIT = 1 << 22


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2 = ax * ax
    ax3 = ax2 * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * (
        (ax > 1) & (ax <= 2)
    )


def _output_size(in_size: int, scale: float) -> int:
    # MATLAB: ceil(scale .* input_size), floating-point quirks included.
    return int(math.ceil(in_size * scale))


@lru_cache(maxsize=128)
def _contributions(in_size: int, out_size: int, scale: float, antialias: bool):
    """Per output sample: input indices (0-based, mirrored) and normalised weights.

    Returns ``(idx, w)`` of shape ``(out_size, P)``; read-only arrays (cached).
    """
    kernel_width = 4.0
    stretch = scale < 1 and antialias
    if stretch:
        kernel_width = kernel_width / scale
    x = np.arange(1, out_size + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    p = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(p, dtype=np.float64)[None, :]  # 1-based
    dist = u[:, None] - idx
    w = scale * cubic(dist * scale) if stretch else cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    # MATLAB's index folding: aux = [1:n, n:-1:1]; idx = aux(mod(idx-1, 2n) + 1)
    i0 = np.mod(idx.astype(np.int64) - 1, 2 * in_size)
    i0 = np.where(i0 < in_size, i0, 2 * in_size - 1 - i0)
    idx_out = np.ascontiguousarray(i0)
    w = np.ascontiguousarray(w)
    idx_out.setflags(write=False)
    w.setflags(write=False)
    return idx_out, w


@lru_cache(maxsize=64)
def _dense_matrix(in_size: int, out_size: int, scale: float, antialias: bool) -> np.ndarray:
    """The per-axis operator as a dense (out_size, in_size) float64 matrix."""
    idx, w = _contributions(in_size, out_size, scale, antialias)
    m = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.repeat(np.arange(out_size), idx.shape[1])
    np.add.at(m, (rows, idx.ravel()), w.ravel())  # mirrored taps may repeat: accumulate
    m.setflags(write=False)
    return m


def _check_shape(shape) -> tuple[int, int]:
    if len(shape) < 2:
        raise InputError(f"imresize needs an array of shape (..., H, W); got shape {tuple(shape)}")
    h, w = int(shape[-2]), int(shape[-1])
    if h < 1 or w < 1:
        raise InputError(f"cannot resize an empty image of shape {tuple(shape)}")
    return h, w


def _resize_axis_np(x: np.ndarray, axis: int, out_size: int, scale: float, antialias: bool):
    idx, w = _contributions(x.shape[axis], out_size, scale, antialias)
    shape = [1] * x.ndim
    shape[axis] = out_size
    out = None
    for j in range(idx.shape[1]):  # P <= ceil(4/scale) + 2 taps: memory stays O(output)
        term = np.take(x, idx[:, j], axis=axis) * w[:, j].reshape(shape)
        out = term if out is None else out + term
    return out


def imresize(x, scale: float, *, antialias: bool = True) -> np.ndarray:
    """Resize the last two axes of ``x`` by ``scale`` exactly like MATLAB's ``imresize(x, scale)``.

    Bicubic, antialiased when shrinking (``antialias=False`` gives plain cubic
    interpolation). Float32/float64 arrays keep their dtype (computed in float64);
    integer/bool arrays are returned as float64 *without* rounding, so evaluation code can
    decide how to quantise (see :func:`to_uint8`). Values may overshoot the input range
    (cubic ringing), as in MATLAB before its final uint8 cast.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"imresize needs a real-valued array, got dtype {arr.dtype}")
    s = positive_number(scale, "scale")
    h, w = _check_shape(arr.shape)
    out_dtype = arr.dtype if arr.dtype.kind == "f" else np.dtype(np.float64)
    a = arr.astype(np.float64, copy=False)
    oh, ow = _output_size(h, s), _output_size(w, s)
    # MATLAB resizes the dimension with the smaller scale first; with equal scales that
    # is rows first. The operator is linear, so the order only matters at rounding level.
    a = _resize_axis_np(a, a.ndim - 2, oh, s, antialias)
    a = _resize_axis_np(a, a.ndim - 1, ow, s, antialias)
    return a.astype(out_dtype, copy=False)


@lru_cache(maxsize=64)
def _torch_operator(in_size, out_size, scale, antialias, dtype, device):
    import torch

    return torch.from_numpy(_dense_matrix(in_size, out_size, scale, antialias).copy()).to(device=device, dtype=dtype)


@lru_cache(maxsize=64)
def _torch_taps(in_size, out_size, scale, antialias, dtype, device):
    import torch

    idx, w = _contributions(in_size, out_size, scale, antialias)
    return (
        torch.from_numpy(idx.T.copy()).to(device=device),
        torch.from_numpy(w.T.copy()).to(device=device, dtype=dtype),
    )


def _resize_axis_torch(t, dim: int, out_size: int, scale: float, antialias: bool):
    in_size = t.shape[dim]
    if in_size * out_size <= _DENSE_LIMIT:
        m = _torch_operator(in_size, out_size, scale, antialias, t.dtype, t.device)
        return m @ t if dim == t.ndim - 2 else t @ m.T
    idx, w = _torch_taps(in_size, out_size, scale, antialias, t.dtype, t.device)
    shape = [1] * t.ndim
    shape[dim] = out_size
    out = None
    for j in range(idx.shape[0]):
        term = t.index_select(dim, idx[j]) * w[j].reshape(shape)
        out = term if out is None else out + term
    return out


def imresize_torch(t, scale: float, antialias: bool = True):
    """Torch version of :func:`imresize` for tensors ``(..., H, W)`` (differentiable).

    Used to make LR patches on the fly during training, so it is two matrix products with
    per-axis operators cached per ``(size, scale, dtype, device)``. Floating tensors keep
    their dtype (float32 stays float32: agreement with the float64 numpy path is then
    ~1e-6 relative); integer tensors are computed and returned as float32.
    """
    import torch

    if not isinstance(t, torch.Tensor):
        raise InputError(f"imresize_torch needs a torch.Tensor, got {type(t).__name__}")
    if t.is_complex():
        raise InputError(f"imresize_torch needs a real tensor, got dtype {t.dtype}")
    s = positive_number(scale, "scale")
    h, w = _check_shape(tuple(t.shape))
    if not t.is_floating_point():
        t = t.to(torch.float32)
    oh, ow = _output_size(h, s), _output_size(w, s)
    t = _resize_axis_torch(t, t.ndim - 2, oh, s, antialias)
    t = _resize_axis_torch(t, t.ndim - 1, ow, s, antialias)
    return t


def _spatial_last(arr: np.ndarray, channel_axis: int | None) -> tuple[np.ndarray, int | None]:
    """Move ``channel_axis`` to the front so the spatial axes are the last two."""
    if channel_axis is None:
        return arr, None
    if arr.ndim < 3:
        raise InputError(f"channel_axis={channel_axis} given for an array of shape {arr.shape} (needs >= 3 axes)")
    ax = channel_axis % arr.ndim if -arr.ndim <= channel_axis < arr.ndim else None
    if ax is None:
        raise InputError(f"channel_axis={channel_axis} out of range for shape {arr.shape}")
    return np.moveaxis(arr, ax, 0), ax


def mod_crop(img, factor: int, *, channel_axis: int | None = None) -> np.ndarray:
    """Crop the spatial axes to a multiple of ``factor`` (bottom/right, as MATLAB's modcrop)."""
    arr = np.asarray(img)
    a, ax = _spatial_last(arr, channel_axis)
    h, w = _check_shape(a.shape)
    hh, ww = h - h % factor, w - w % factor
    if hh == 0 or ww == 0:
        raise InputError(f"image {h}x{w} is smaller than the factor {factor}")
    a = a[..., :hh, :ww]
    return np.moveaxis(a, 0, ax) if ax is not None else a


def _check_factor(factor) -> int:
    if isinstance(factor, bool) or int(factor) != factor or factor < 1:
        raise InputError(f"factor must be a positive integer, got {factor!r}")
    return int(factor)


def bicubic_downscale(img, factor: int = 4, *, channel_axis: int | None = None) -> np.ndarray:
    """Make the LR image of the evaluation convention: mod-crop, then MATLAB bicubic x1/factor.

    Returns float64 in the input's value range, unrounded (ringing may leave it slightly);
    use :func:`to_uint8` to quantise like MATLAB when the LR must be saved as 8-bit.
    ``channel_axis`` names a non-spatial axis (e.g. ``-1`` for ``(H, W, 3)``); by default the
    last two axes are spatial.
    """
    f = _check_factor(factor)
    arr = np.asarray(img)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"bicubic_downscale needs a real-valued image, got dtype {arr.dtype}")
    a, ax = _spatial_last(arr, channel_axis)
    a = mod_crop(a, f)
    out = imresize(a.astype(np.float64, copy=False), 1.0 / f, antialias=True)
    return np.moveaxis(out, 0, ax) if ax is not None else out


def bicubic_upscale(x, factor: int = 4, *, channel_axis: int | None = None) -> np.ndarray:
    """The bicubic reference upscaler (MATLAB ``imresize(x, factor)``) for comparison layers.

    Float dtypes are kept, integer inputs give float64 (unrounded; see :func:`to_uint8`).
    """
    f = _check_factor(factor)
    arr = np.asarray(x)
    a, ax = _spatial_last(arr, channel_axis)
    out = imresize(a, float(f), antialias=True)  # antialias is a no-op when enlarging
    return np.moveaxis(out, 0, ax) if ax is not None else out


def to_uint8(x, data_range: float = 255.0) -> np.ndarray:
    """Quantise to uint8 like MATLAB: scale by ``255/data_range``, round half away from zero, clip.

    ``data_range=255`` (default) is MATLAB's ``uint8(x)`` for 0..255 doubles;
    ``data_range=1`` is ``im2uint8(x)`` for 0..1 doubles. NaN raises (MATLAB would map it to
    0 silently, which hides bugs in an LR pipeline).
    """
    a = np.asarray(x, dtype=np.float64)
    if a.size and np.isnan(a).any():
        raise InputError("to_uint8: the image contains NaN values")
    if not (data_range > 0):
        raise InputError(f"to_uint8: data_range must be positive, got {data_range!r}")
    a = np.clip(a * (255.0 / data_range), 0.0, 255.0)
    return np.floor(a + 0.5).astype(np.uint8)  # values are >= 0: floor(x+.5) == MATLAB round


# ---------------------------------------------------------------------------------------
# the engine's bicubic path (same axes, dtypes, outputs and progress as the ML engine)

#: input rows per band in the bicubic paths (keeps float64 temporaries small)
BICUBIC_BAND = 64


def bicubic_rows(plane: np.ndarray, scale: int, a: int, b: int) -> np.ndarray:
    """Output rows ``a:b`` of MATLAB-bicubic ``plane`` (H, W) x ``scale``, as float64.

    Computed from the input rows they depend on plus 4 rows of context (the cubic kernel
    reaches 2 input pixels; band edges inside the image then do not matter), so a full-size
    float64 upscale never exists. Exactly equal to slicing the full ``imresize`` output.
    """
    h = plane.shape[-2]
    i0 = max(0, a // scale - 4)
    i1 = min(h, -(-b // scale) + 4)
    band = np.asarray(plane[..., i0:i1, :], dtype=np.float64)
    up = imresize(band, float(scale))
    return up[..., a - i0 * scale : b - i0 * scale, :]


def upscale_bicubic(
    image, scale: int = 4, *, spatial_axes=None, rgb=None, out=None, slices=None, progress=None, cancel=None
) -> np.ndarray:
    """MATLAB-convention bicubic (``imresize(x, scale)``) with the engine's axis/dtype handling.

    Same dtype out (integers rounded and clipped to the dtype's range; floats clipped only to their
    finite range), same
    ``spatial_axes``/``rgb``/``out``/``slices`` rules as :func:`upscale`. Computed in bands of
    rows, so memory stays near input + output.
    """
    image = check_image(image)
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale!r}")
    s = int(scale)
    layout = resolve_layout(image.shape, spatial_axes, rgb)
    planes, result_shape = plan_planes(layout, slices, s)
    writer = prepare_out(out, image, layout, s, result_shape, slices)
    if isinstance(image, np.ndarray):
        check_finite(image)
    h_out = layout.height * s
    step = BICUBIC_BAND * s
    total = len(planes) * -(-h_out // step)
    gen = _bicubic_iter(image, layout, planes, writer, s, h_out, step, total)
    return drain(gen, progress, cancel)


def _bicubic_iter(image, layout, planes, writer, s, h_out, step, total):
    done = 0
    yield Progress(0, total, 0, len(planes), "starting")
    for k, pl in enumerate(planes):
        raw = np.asarray(image[layout.index(pl.index)])
        if not isinstance(image, np.ndarray):
            check_finite(raw, "the image plane")
        chw = np.transpose(raw, layout.to_chw_perm()) if raw.ndim == 3 else raw[None]
        for a in range(0, h_out, step):
            b = min(h_out, a + step)
            rows = to_dtype(bicubic_rows(chw, s, a, b), image.dtype)
            writer.write(pl, a, b, rows)
            done += 1
            yield Progress(done, total, k, len(planes), f"plane {k + 1}/{len(planes)}")
    return writer.arr
