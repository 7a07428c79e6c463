"""The dask path: a lazy array upscaled chunk by chunk, locally or on a ``dask.distributed`` cluster.

Why a module: dask needs picklable pieces (the model as a :class:`ModelRef`, the settings as
an :class:`~.options.UpscaleOptions`) and a per-process model cache, none of which the
in-memory engine needs. :func:`upscale_block` is the per-chunk function: a plain function of
a numpy block and options, reusable by other chunked back ends (OME-Zarr writers, job queues).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from napari_rrim_sr.engine import devices
from napari_rrim_sr.engine.layout import is_dask, resolve_layout
from napari_rrim_sr.engine.normalize import check_dtype, compute_normalization
from napari_rrim_sr.engine.options import DEFAULT_OVERLAP, UpscaleOptions, check_overlap, options_from
from napari_rrim_sr.engine.upscaler import Upscaler, _registry, resolve_model
from napari_rrim_sr.errors import InputError, RRIMError

#: chunks smaller than this along a split spatial axis are merged (tiny chunks cost overhead)
MIN_CHUNK = 8


class ModelRef:
    """A picklable handle on a model for dask workers.

    Models loaded from a file travel as (path, sha256) and are loaded once per worker process;
    in-memory models travel as their state dict (numpy) plus backbone/hparams. Workers cache
    the rebuilt :class:`Upscaler` per process, so a graph of many chunks loads the model once.
    """

    def __init__(self, loaded):
        self.backbone = loaded.backbone
        self.hparams = dict(loaded.hparams)
        self.id = loaded.id
        self.path = str(loaded.path) if loaded.path is not None else None
        self.sha256 = loaded.sha256
        self.token = loaded.sha256 or uuid.uuid4().hex
        self.state = None
        if self.path is None or not self.sha256:
            self.state = {k: v.detach().cpu().numpy() for k, v in loaded.module.state_dict().items()}
        self._local = loaded

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_local"] = None
        return d

    def get(self):
        if self._local is not None:
            return self._local
        from napari_rrim_sr.registry.loading import LoadedModel, load_model

        if self.state is None:
            p = Path(self.path)
            if p.exists():
                loaded = load_model(p)
                if loaded.sha256 == self.sha256:
                    self._local = loaded
                    return loaded
            raise RRIMError(f"weights file {self.path} is not available (or differs) on this dask worker")
        import torch

        module = _registry().build(self.backbone, **self.hparams)
        module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.state.items()})
        self._local = LoadedModel.from_module(module, self.backbone, self.hparams, id=self.id)
        return self._local

    def __repr__(self) -> str:
        return f"ModelRef({self.id!r}, token={self.token[:12]})"


_WORKER_UPSCALERS: "OrderedDict[tuple, Upscaler]" = OrderedDict()
_WORKER_LOCK = threading.Lock()


def worker_upscaler(options: UpscaleOptions) -> Upscaler:
    """The process's :class:`Upscaler` for ``options`` (built once per worker, the two most recent
    kept). ``options.model`` is a :class:`ModelRef`, or an id/path/None (the engine's cache)."""
    ref = options.model
    if not isinstance(ref, ModelRef):
        from napari_rrim_sr.engine.upscaler import get_upscaler

        return get_upscaler(options=options, channels=3 if options.rgb else 1)
    key = (ref.token, options.device, options.precision, options.threads, options.self_ensemble)
    with _WORKER_LOCK:
        up = _WORKER_UPSCALERS.get(key)
        if up is None:
            while len(_WORKER_UPSCALERS) >= 2:
                _WORKER_UPSCALERS.popitem(last=False)[1].close()
            up = Upscaler(ref.get(), options=options.replace(model=None))
            _WORKER_UPSCALERS[key] = up
        return up


def upscale_block(block, options: UpscaleOptions, *, trim: dict[int, tuple[int, int]] | None = None) -> np.ndarray:
    """Upscale one numpy block with ``options`` and drop ``trim[axis] = (before, after)`` input
    pixels of borrowed context from each side of the result (``* scale`` output pixels).

    Pass ``options.normalization`` as a ready :class:`~.normalize.Normalization` computed over the
    whole array, so every block is normalised identically. The model is loaded once per process.
    """
    up = worker_upscaler(options)
    with up._lock:  # one Upscaler per process: serialise threads sharing it
        res = up.upscale(np.asarray(block), options.replace(model=None))
    if not trim:
        return res
    s = up.scale
    idx: list[Any] = [slice(None)] * res.ndim
    for ax, (lo, hi) in trim.items():
        idx[ax] = slice(lo * s, res.shape[ax] - hi * s)
    return res[tuple(idx)]


def _dask_block(block, *, options, depth_px, block_info=None):
    """map_overlap's callback: the borrowed depth exists only towards neighbouring chunks."""
    info = block_info[0] if block_info else None
    trim = {}
    for ax, d in depth_px.items():
        if d and info is not None:
            loc, n = info["chunk-location"][ax], info["num-chunks"][ax]
            trim[ax] = (d if loc > 0 else 0, d if loc < n - 1 else 0)
    return upscale_block(block, options, trim=trim)


def _even_chunks(length: int, size: int) -> tuple[int, ...]:
    n = max(1, length // size)
    base, extra = divmod(length, n)
    return tuple(base + (1 if i < extra else 0) for i in range(n))


def upscale_dask(darr, model=None, *, options: UpscaleOptions | None = None, depth: int | None = None, **kw: Any):
    """A lazy dask array: ``darr`` upscaled chunk by chunk (``map_overlap``, trimmed overlap).

    Each chunk is extended by ``depth`` (default: the tile overlap) real pixels from its
    neighbours, upscaled with the in-memory engine, and the upscaled extension is trimmed, so
    chunk seams behave like tile seams. "range"/"percentile" statistics are computed once,
    eagerly, over the whole array, so every chunk is normalised identically. Works on a
    ``dask.distributed`` cluster: the model travels as a :class:`ModelRef` and is built once
    per worker process. The colour axis is made a single chunk; spatial axes with chunks smaller
    than ``depth`` are re-chunked evenly to at least ``2 * depth``; an axis that is then one chunk
    borrows nothing (so arrays smaller than the overlap work as in memory). ``options`` and the
    keywords are those of :func:`.engine.upscale_iter` (``per_slice`` is not supported: chunks
    would be normalised differently).
    """
    import dask.array as da

    opts = options_from(options, **kw)
    if model is None:
        model = opts.model
    d = check_overlap(depth, "depth")
    if opts.per_slice:
        raise InputError("per_slice normalisation is not supported by upscale_dask; use upscale")
    if not is_dask(darr):
        darr = da.asarray(darr)
    check_dtype(darr.dtype)
    layout = resolve_layout(darr.shape, opts.spatial_axes, opts.rgb)
    loaded = resolve_model(model, 3 if layout.rgb else 1)
    s = int(loaded.scale)
    dev = devices.resolve_device(opts.device)
    if d is None:
        d = DEFAULT_OVERLAP if opts.overlap is None else opts.overlap
    norm = compute_normalization(darr, opts.normalization, percentiles=opts.percentiles, bit_depth=opts.bit_depth)
    chunks = list(darr.chunks)
    want: dict[int, Any] = {}
    if layout.channel_axis is not None and len(chunks[layout.channel_axis]) > 1:
        want[layout.channel_axis] = -1
    for ax in (layout.y_axis, layout.x_axis):
        if len(chunks[ax]) > 1 and min(chunks[ax]) < max(d, MIN_CHUNK):
            # chunks must hold the overlap their neighbours borrow: even chunks of >= 2*depth
            want[ax] = _even_chunks(darr.shape[ax], max(2 * d, MIN_CHUNK, max(chunks[ax])))
    if want:
        darr = darr.rechunk(want)
    spatial = (layout.y_axis, layout.x_axis)
    # an axis held in one chunk borrows nothing (dask refuses a depth larger than the array)
    depth_map = {
        ax: (min(d, min(darr.chunks[ax])) if ax in spatial and len(darr.chunks[ax]) > 1 else 0)
        for ax in range(darr.ndim)
    }
    out_chunks = tuple(tuple(c * s for c in ch) if ax in spatial else ch for ax, ch in enumerate(darr.chunks))
    block_opts = opts.replace(
        model=ModelRef(loaded), device=str(dev), normalization=norm, spatial_axes=spatial, rgb=layout.rgb
    )
    return da.map_overlap(
        _dask_block,
        darr,
        depth=depth_map,
        boundary="none",
        trim=False,
        dtype=darr.dtype,
        chunks=out_chunks,
        meta=np.empty((0,) * darr.ndim, dtype=darr.dtype),
        options=block_opts,
        depth_px={ax: v for ax, v in depth_map.items() if v},
    )
