"""The upscaling engine: any dtype, channel layout and stack, tiled, on CPU or GPU, numpy or dask.

This Qt-free module is what the napari widget, the CLI, evaluation and training validation
call. Conventions (all documented because results depend on them):

**Axes.** Spatial axes default to the last two, or the two before a trailing RGB(A) axis.
``rgb=None`` detects RGB(A): the array has >= 3 dims and its last axis has size 3 or 4 (and is
not named spatial). Every other axis (Z, T, C, ...) is processed plane by plane.

**Channels.** A 3-channel model runs on RGB; a 1-channel model runs on each colour channel
(batched); a 3-channel model on a gray plane gets the plane replicated to RGB and its output
averaged back. Alpha is upscaled with bicubic interpolation (an SR model would invent texture
in a mask). N-band data that is not RGB (4-band RGB+NIR, multichannel fluorescence) is
processed *per channel*: pass ``rgb=False`` and keep the band axis non-spatial (e.g.
``spatial_axes=(0, 1)`` for ``(Y, X, 4)``). Why per channel and not per RGB triple: the
RGB model learned correlations between red, green and blue; grouping NIR with two visible
bands (or three fluorescence stains) feeds it colours it has never seen, and the result would
depend on the band order. A 4-band image whose fourth band is NIR must therefore not be
passed as RGBA.

**Intensities.** See :mod:`.normalize`: explicit ``normalization`` ("dtype", "range",
"percentile", or (lo, hi)); statistics are global over the image (``per_slice=True`` for
per-plane statistics). "dtype" of a wide integer type (int32, int64, uint32, uint64) means the
data's actual range. The output has the input's dtype, clipped to its range (floats: to their
finite range, so finite input never gives Inf). Float inputs with NaN/Inf are refused with an
error naming them.

**Tiling.** See :mod:`.tiling`: tiles overlap and are cross-faded, the image border is
reflect-padded, blended rows are accumulated in a band buffer and written straight into the
(preallocated or caller-provided) output, so peak memory is input + output + one band + the
model's activations for one tile. ``tile=0`` runs the whole plane at once.

**Precision.** bf16 autocast (with channels_last) where the CPU/GPU runs it natively, fp16 on
GPU on request; a tile whose reduced-precision output contains NaN/Inf is recomputed in fp32.
A CUDA/MPS out-of-memory error halves the tile and retries the plane.

**Self-ensemble.** ``self_ensemble=True`` runs each tile through the model in its 8
rotations/flips, maps the outputs back and averages them (geometric self-ensemble, Timofte et
al. 2016; the "+" models of EDSR/RCAN): 8x the compute, a little more fidelity, identical
tiling and memory (one extra output accumulator per tile).

**Options.** Every entry point takes one :class:`~.options.UpscaleOptions` (``options=``) or
the same settings as keywords (built into the object in one place). Module map (imports go
down only): ``engine`` (this front) -> ``dask_path`` -> ``upscaler`` -> ``bicubic`` ->
``layout``, ``options``, ``progress``, ``tiling``, ``normalize``, ``devices``.
"""

from __future__ import annotations

from typing import Any, Callable, Generator

import numpy as np

from napari_rrim_sr.engine.bicubic import BICUBIC_BAND, bicubic_rows, upscale_bicubic
from napari_rrim_sr.engine.dask_path import _WORKER_UPSCALERS, ModelRef, upscale_block, upscale_dask, worker_upscaler
from napari_rrim_sr.engine.layout import Layout, check_image, is_dask, resolve_layout
from napari_rrim_sr.engine.normalize import DEFAULT_PERCENTILES, Normalization
from napari_rrim_sr.engine.options import (
    BORDER_MARGIN,
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    MIN_TILE,
    UpscaleOptions,
    default_overlap,
    options_from,
    resolve_tile,
)
from napari_rrim_sr.engine.progress import Progress, drain
from napari_rrim_sr.engine.tiling import TileGrid
from napari_rrim_sr.engine.upscaler import (
    NO_WEIGHTS_MESSAGE,
    Upscaler,
    cached_upscalers,
    clear_cache,
    get_upscaler,
    resolve_model,
    validate_options,
)

#: the earlier private names, kept for callers (commands/bench.py)
_resolve_tile = resolve_tile
_check_image = check_image
_is_dask = is_dask
_drain = drain

__all__ = [
    "BICUBIC_BAND",
    "BORDER_MARGIN",
    "DEFAULT_OVERLAP",
    "DEFAULT_PERCENTILES",
    "DEFAULT_TILE",
    "MIN_TILE",
    "NO_WEIGHTS_MESSAGE",
    "Layout",
    "ModelRef",
    "Normalization",
    "Progress",
    "TileGrid",
    "UpscaleOptions",
    "Upscaler",
    "bicubic_rows",
    "cached_upscalers",
    "clear_cache",
    "default_overlap",
    "get_upscaler",
    "options_from",
    "resolve_layout",
    "resolve_model",
    "upscale",
    "upscale_bicubic",
    "upscale_block",
    "upscale_dask",
    "upscale_iter",
    "validate_options",
    "worker_upscaler",
    "_WORKER_UPSCALERS",
]


def _channels_for(image, spatial_axes, rgb) -> int:
    return 3 if resolve_layout(image.shape, spatial_axes, rgb).rgb else 1


def upscale_iter(
    image, model=None, *, options: UpscaleOptions | None = None, out=None, slices=None, **kw: Any
) -> Generator[Progress, None, np.ndarray]:
    """Upscale ``image`` by the model's scale, yielding :class:`Progress` after every tile.

    The result (same dtype, spatial axes exactly ``scale`` x larger) is the generator's return
    value (``StopIteration.value``); use :func:`upscale` for a plain call.

    Args:
        image: numpy, dask, zarr or memmap array; see the module docstring for axes/channels.
        model: a LoadedModel, a weights id, a weights file path, or None for ``options.model``
            (None there too: the default weights for the image's channel count).
        options: an :class:`UpscaleOptions`; keywords (its field names) override its values.
        out: a preallocated array (np.memmap, zarr) of the result's shape and dtype.
        slices: numpy index over the non-spatial axes (e.g. ``(z,)``) to process only those
            planes. The result then holds only them, unless ``out`` has the full shape, in which
            case they are written in place.

    The settings (fields of :class:`UpscaleOptions`, accepted as keywords):
        spatial_axes: ``(y_axis, x_axis)``; default last two (before a trailing RGB(A) axis).
        rgb: True/False, or None to detect a trailing axis of size 3 or 4.
        normalization: "dtype", "range", "percentile", ``(lo, hi)`` or a Normalization
            ("dtype" of int32/int64/uint32/uint64 uses the data's range, see :mod:`.normalize`).
        percentiles: (lo, hi) percentiles for "percentile".
        bit_depth: for unsigned data stored in a wider type (12 for 12-bit in uint16).
        tile: tile edge in input pixels; None = the device default; 0 = no tiling.
        overlap: overlap between tiles in input pixels (default 24, at most half a small tile). The image border gets
            ``min(4, overlap // 2)`` pixels of reflect padding (also when untiled).
        blend: "cosine" or "linear" cross-fade in the overlaps.
        device, precision, threads: see :mod:`.devices`.
        self_ensemble: average the model over the 8 rotations/flips of each tile (x8 time;
            +0.04 dB Y-PSNR for the shipped RGB model on Kodak24, docs/models.md).
        per_slice: compute "range"/"percentile" statistics per plane instead of globally.
    """
    opts = options_from(options, **kw)
    if model is not None:
        opts = opts.replace(model=model)
    image = check_image(image)
    up = get_upscaler(options=opts, channels=_channels_for(image, opts.spatial_axes, opts.rgb))
    return (yield from up.upscale_iter(image, opts, out=out, slices=slices))


def upscale(
    image,
    model=None,
    *,
    options: UpscaleOptions | None = None,
    progress: Callable[[Progress], Any] | None = None,
    cancel=None,
    **kw: Any,
) -> np.ndarray:
    """Upscale ``image`` (see :func:`upscale_iter` for the arguments).

    ``progress(Progress)`` is called after every tile; ``cancel`` (a ``threading.Event`` or a
    callable returning True to stop) is checked between tiles, and a cancelled run raises
    :class:`~.errors.Cancelled`: it never returns a partial result. (A caller-provided ``out``
    then holds partial data and must be discarded.)
    """
    return drain(upscale_iter(image, model, options=options, **kw), progress, cancel)
