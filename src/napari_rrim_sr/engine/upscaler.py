"""The upscaler: a model on its device, run tile by tile over the planes of an image; and its cache.

Why a module: everything that touches the network lives here (model resolution, device and
precision, the tiled forward pass with its fp32 redo and out-of-memory fallback, the 8-fold
self-ensemble, the per-process cache of ready Upscalers). Layout, tiling, normalisation and
bicubic are plain numpy helpers it calls; :mod:`.engine` is the public front.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Generator

import numpy as np

from napari_rrim_sr.engine import backends, devices
from napari_rrim_sr.engine.bicubic import bicubic_rows
from napari_rrim_sr.engine.layout import (
    Layout,
    OutWriter,
    Plane,
    check_image,
    is_dask,
    plan_planes,
    prepare_out,
    resolve_layout,
)
from napari_rrim_sr.engine.normalize import Normalization, check_finite, compute_normalization, to_dtype
from napari_rrim_sr.engine.options import (
    BORDER_MARGIN,
    MIN_TILE,
    UpscaleOptions,
    check_tile_overlap,
    options_from,
    resolve_tile,
)
from napari_rrim_sr.engine.progress import Progress, drain
from napari_rrim_sr.engine.tiling import TileGrid, read_window
from napari_rrim_sr.errors import InputError, RRIMError

log = logging.getLogger(__name__)

#: the settings fixed when an Upscaler is built (the rest of UpscaleOptions may change per call)
MODEL_FIELDS = ("model", "device", "precision", "threads", "self_ensemble", "backend")

NO_WEIGHTS_MESSAGE = (
    "no trained weights installed (looked in the shipped weights folder, the user weights "
    "folder {user} and plugins); pass a weights file or train one: "
    "python -m napari_rrim_sr.training"
)


def _registry():
    from napari_rrim_sr.registry.core import get_registry

    return get_registry()


def resolve_model(model=None, channels: int = 3, scale: int = 4):
    """A :class:`~.weights_io.LoadedModel` from a LoadedModel, a registry weights id, a file path,
    a bare ``torch.nn.Module`` generator, or None (the registry's default for ``channels``)."""
    from napari_rrim_sr.registry.loading import LoadedModel, load_model

    if isinstance(model, LoadedModel):
        return model
    if model is None:
        reg = _registry()
        entry = reg.default_weights(channels, scale)
        if entry is None:
            from napari_rrim_sr.registry.core import user_weights_dir

            raise RRIMError(NO_WEIGHTS_MESSAGE.format(user=user_weights_dir()))
        return load_model(entry, registry=reg)
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    try:
        import torch

        if isinstance(model, torch.nn.Module):
            return LoadedModel.from_module(model, type(model).__name__.lower())
    except ImportError:  # pragma: no cover
        pass
    raise InputError(
        f"model must be a LoadedModel, a weights id, a weights file path or None; got {type(model).__name__}"
    )


def _half_precisions(loaded) -> frozenset[str] | None:
    try:
        return _registry().backbone(loaded.backbone).half_precisions
    except Exception:
        return None  # an unregistered (in-memory) architecture: assume it runs in both


class Upscaler:
    """A model moved to its device once, reused for many images (the widget and CLI keep one).

    The caller's ``LoadedModel`` is never modified: when the engine needs a different device or
    memory layout it works on a copy. ``close()`` drops the module and releases GPU memory.
    """

    def __init__(self, model=None, *, options: UpscaleOptions | None = None, channels: int = 3, **kw: Any):
        """``model`` (or ``options.model``) on ``options.device`` at ``options.precision``; the
        keyword form (``device=``, ``precision=``, ``threads=``, ``self_ensemble=``, any other
        :class:`UpscaleOptions` field as a per-call default) still works."""
        import torch

        from napari_rrim_sr.registry.loading import LoadedModel

        opts = options_from(options, **kw)
        if model is None:
            model = opts.model
        self.options = opts.replace(model=None)  # per-call defaults; the model is self.model
        self._given = model if isinstance(model, LoadedModel) else None
        self.model = resolve_model(model, channels)
        self.device = devices.resolve_device(opts.device)
        self.precision = devices.resolve_precision(opts.precision, self.device, _half_precisions(self.model))
        self.threads = opts.threads
        self.self_ensemble = opts.self_ensemble
        self.backend_request = opts.backend
        backends.check_backend(self.backend_request, self.device.type)
        m = self.model
        for key, val in (("in_channels", m.in_channels), ("out_channels", m.out_channels)):
            if val not in (1, 3):
                raise InputError(f"the engine runs 1- or 3-channel models; this model has {key}={val}")
        if m.in_channels != m.out_channels:
            raise InputError(f"model maps {m.in_channels} to {m.out_channels} channels; the engine needs equal counts")
        self.channels_last = devices.use_channels_last(self.device, self.precision)
        module = m.module
        params = list(module.parameters())
        cur = params[0].device if params else torch.device("cpu")
        needs_change = cur != self.device or self.channels_last
        if needs_change and self._given is not None:
            module = copy.deepcopy(module)  # never move or re-layout the caller's module
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.scale = int(m.scale)
        self.size_multiple = int(getattr(m.module, "size_multiple", m.size_multiple) or 1)
        self.fp32_redos = 0
        self.last_run: dict = {}
        self._lock = threading.Lock()
        self._ov = None  # backends.Runner while a run uses OpenVINO
        #: the backend the last run used ("torch" or "openvino") and one line saying why; before
        #: any run, what a small run would use (an explicit "openvino" converts here, so a model
        #: that does not convert says so before any work)
        self.backend, self.backend_reason = backends.choose_backend(
            self.backend_request, self.model, self.device.type, self.precision, work_pixels=0
        )
        if self.backend_request == "openvino" and self.backend != "openvino":
            log.warning("OpenVINO backend not used: %s; running on torch", self.backend_reason)

    def _ov_threads(self) -> int:
        if self.threads:
            return int(self.threads)
        import torch

        return int(torch.get_num_threads())

    def _choose_backend(self, grid: TileGrid, n_planes: int, mode: str, colour_channels: int) -> None:
        """Pick the backend for a run over ``grid`` (sets backend, backend_reason and the runner)."""
        if mode == "per_channel":  # each image channel through a 1-channel model, as a batch
            shape = (colour_channels, 1, grid.tile_h, grid.tile_w)
        else:
            shape = (1, self.model.in_channels, grid.tile_h, grid.tile_w)
        work = grid.n_tiles * n_planes * shape[0] * grid.tile_h * grid.tile_w * (8 if self.self_ensemble else 1)
        threads = self._ov_threads()
        self.backend, self.backend_reason = backends.choose_backend(
            self.backend_request,
            self.model,
            self.device.type,
            self.precision,
            work_pixels=work,
            shape=shape,
            threads=threads,
        )
        if self.backend == "openvino":
            if self._ov is None or self._ov.threads != threads:
                self._ov = backends.Runner(self.model, threads)
        else:
            self._ov = None
            if self.backend_request == "openvino":
                log.warning("OpenVINO backend not used: %s; running on torch", self.backend_reason)

    # -- basic forward ------------------------------------------------------------------
    def _forward(self, t: np.ndarray, mode: str) -> np.ndarray:
        """(C, h, w) float32 0..1 -> (C, h*s, w*s) float32, per the channel ``mode``."""
        if self._ov is not None:
            return self._forward_ov(t, mode)
        import torch

        x = torch.from_numpy(np.ascontiguousarray(t))
        if mode == "rgb":
            x = x[None]
        elif mode == "per_channel":
            x = x[:, None]
        else:  # "replicate": gray plane through a 3-channel model
            x = x[None].expand(1, 3, *x.shape[-2:])
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self._run(x, self.precision)
        if not _all_finite(y):
            if self.precision != "fp32":
                self.fp32_redos += 1
                log.info("non-finite %s output in a tile: recomputing it in fp32", self.precision)
                y = self._run(x, "fp32")
            if not _all_finite(y):
                raise RRIMError(_non_finite_message(t, self.precision))
        h, w = t.shape[-2:]
        if tuple(y.shape[-2:]) != (h * self.scale, w * self.scale):
            raise RRIMError(f"model output {tuple(y.shape[-2:])} is not {self.scale}x its input {(h, w)}")
        if mode == "rgb":
            y = y[0]
        elif mode == "per_channel":
            y = y[:, 0]
        else:
            y = y[0].mean(0, keepdim=True)
        return y.cpu().numpy()

    def _forward_ov(self, t: np.ndarray, mode: str) -> np.ndarray:
        """:meth:`_forward` on OpenVINO: numpy all the way (no torch tensors, no layout copies)."""
        if mode == "rgb":
            x = t[None]
        elif mode == "per_channel":
            x = t[:, None]
        else:
            x = np.broadcast_to(t[None], (1, 3, *t.shape[-2:]))
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = self._run_ov(x, self.precision)
        if not np.isfinite(y.sum(dtype=np.float32)):
            if self.precision != "fp32":
                self.fp32_redos += 1
                log.info("non-finite %s output in a tile: recomputing it in fp32", self.precision)
                y = self._run_ov(x, "fp32")
            if not np.isfinite(y.sum(dtype=np.float32)):
                raise RRIMError(_non_finite_message(t, self.precision))
        h, w = t.shape[-2:]
        if tuple(y.shape[-2:]) != (h * self.scale, w * self.scale):
            raise RRIMError(f"model output {tuple(y.shape[-2:])} is not {self.scale}x its input {(h, w)}")
        if mode == "rgb":
            return y[0]
        if mode == "per_channel":
            return y[:, 0]
        return y[0].mean(0, keepdims=True)

    def _run_ov(self, x: np.ndarray, precision: str) -> np.ndarray:
        if not self.self_ensemble:
            return self._ov(x, precision)
        acc = None
        for k in range(4):
            for flip in (False, True):
                v = np.rot90(x, k, (2, 3))
                if flip:
                    v = v[..., ::-1]
                y = self._ov(np.ascontiguousarray(v), precision)
                if flip:
                    y = y[..., ::-1]
                y = np.rot90(y, -k, (2, 3))
                acc = y.copy() if acc is None else acc + y
        return acc / np.float32(8.0)

    def _run(self, x, precision: str):
        import torch

        with torch.inference_mode(), devices.autocast(self.device, precision):
            if not self.self_ensemble:
                return self.module(x).float()
            # geometric self-ensemble (Timofte et al. 2016; EDSR+): the mean of the model over the
            # 8 rotations/flips of the input, each mapped back; 8x the compute, fp32 accumulator
            acc = None
            for k in range(4):
                for flip in (False, True):
                    t = torch.rot90(x, k, (2, 3))
                    if flip:
                        t = t.flip(3)
                    if self.channels_last:
                        t = t.contiguous(memory_format=torch.channels_last)
                    y = self.module(t).float()
                    if flip:
                        y = y.flip(3)
                    y = torch.rot90(y, -k, (2, 3))
                    acc = y if acc is None else acc + y
            return acc / 8.0

    def _mode(self, layout: Layout) -> str:
        if layout.rgb:
            return "rgb" if self.model.in_channels == 3 else "per_channel"
        return "replicate" if self.model.in_channels == 3 else "per_channel"

    # -- public API ----------------------------------------------------------------------
    def upscale_iter(
        self,
        image,
        options: UpscaleOptions | None = None,
        *,
        out=None,
        slices=None,
        **kw: Any,
    ) -> Generator[Progress, None, np.ndarray]:
        """Upscale ``image``, yielding :class:`Progress` after every tile; returns the result.

        ``options`` (default: the ones this Upscaler was built with) and/or keywords give the
        per-call settings (tile, overlap, blend, normalization, percentiles, bit_depth,
        per_slice, spatial_axes, rgb; see :func:`.engine.upscale_iter`). The model, device,
        precision, threads and self-ensemble are this Upscaler's. The source is never modified.
        """
        if self.module is None:
            raise RRIMError("this Upscaler was closed")
        fixed = sorted(set(kw) & set(MODEL_FIELDS))
        if fixed:
            raise TypeError(f"{', '.join(fixed)} are fixed when an Upscaler is built, not per call")
        opts = options_from(options if options is not None else self.options, **kw)
        image = check_image(image)
        layout = resolve_layout(image.shape, opts.spatial_axes, opts.rgb)
        s = self.scale
        tile_px = resolve_tile(opts.tile, self.device)
        ov = check_tile_overlap(tile_px, opts.overlap)
        normalization, percentiles, bit_depth = opts.normalization, opts.percentiles, opts.bit_depth
        blend, per_slice = opts.blend, opts.per_slice
        margin = min(BORDER_MARGIN, ov // 2)
        planes, result_shape = plan_planes(layout, slices, s)
        out = prepare_out(out, image, layout, s, result_shape, slices)
        dask_in = is_dask(image)
        if not dask_in and isinstance(image, np.ndarray):
            if slices is None:
                check_finite(image)
            else:
                for pl in planes:
                    check_finite(image[layout.index(pl.index)], "the selected plane")
        norm = None
        if not per_slice:
            colour = image[..., :3] if layout.n_channels == 4 else image  # alpha is not intensity
            norm = compute_normalization(
                colour, normalization, percentiles=percentiles, bit_depth=bit_depth, dtype=image.dtype
            )
        mode = self._mode(layout)
        n_planes = len(planes)
        grid = TileGrid.make(layout.height, layout.width, tile_px, ov, margin, s, blend, self.size_multiple)
        tiles_total = grid.n_tiles * n_planes
        done = 0
        self.fp32_redos = 0
        self._choose_backend(grid, n_planes, mode, min(layout.n_channels, 3))
        info = {
            "model": self.model.provenance(),
            "device": str(self.device),
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "precision": self.precision,
            "self_ensemble": self.self_ensemble,
            "tile": tile_px,
            "overlap": ov,
            "blend": blend,
            "normalization": None,
            "channel_mode": mode,
        }
        self.last_run = info
        was_training = bool(getattr(self.module, "training", False))
        self.module.eval()  # a caller's module may be in train mode (training validation)
        with devices.num_threads(self.threads):
            try:
                yield Progress(0, tiles_total, 0, n_planes, "starting")
                for k, pl in enumerate(planes):
                    raw = image[layout.index(pl.index)]
                    raw = np.asarray(raw) if dask_in or not isinstance(raw, np.ndarray) else raw
                    if dask_in or not isinstance(image, np.ndarray):
                        check_finite(raw, "the image plane")
                    chw = np.transpose(raw, layout.to_chw_perm()) if raw.ndim == 3 else raw[None]
                    pnorm = norm or compute_normalization(
                        chw[:3] if layout.n_channels == 4 else chw,
                        normalization,
                        percentiles=percentiles,
                        bit_depth=bit_depth,
                        dtype=image.dtype,
                    )
                    info["normalization"] = pnorm.as_dict()
                    cur_tile = tile_px
                    while True:
                        g = (
                            grid
                            if cur_tile == tile_px
                            else TileGrid.make(
                                layout.height,
                                layout.width,
                                cur_tile,
                                min(ov, cur_tile // 2),
                                margin,
                                s,
                                blend,
                                self.size_multiple,
                            )
                        )
                        try:
                            base = done
                            for i in self._plane(chw, pnorm, g, mode, layout, out, pl):
                                done = base + i
                                yield Progress(
                                    done, tiles_total, k, n_planes, f"plane {k + 1}/{n_planes}, tile {i}/{g.n_tiles}"
                                )
                            break
                        except Exception as exc:
                            if not devices.is_oom(exc):
                                raise
                            devices.release_memory(self.device)
                            h_ext = layout.height + 2 * margin
                            w_ext = layout.width + 2 * margin
                            new = (cur_tile or max(h_ext, w_ext)) // 2
                            if new < MIN_TILE:
                                raise RRIMError(
                                    f"out of memory on {self.device} even with {cur_tile or 'no'} px tiles"
                                ) from exc
                            log.warning(
                                "out of memory on %s with tile %s: retrying with %d",
                                self.device,
                                cur_tile or "none",
                                new,
                            )
                            cur_tile = new
                            done = base
                            g2 = TileGrid.make(
                                layout.height,
                                layout.width,
                                cur_tile,
                                min(ov, cur_tile // 2),
                                margin,
                                s,
                                blend,
                                self.size_multiple,
                            )
                            tiles_total = done + g2.n_tiles * (n_planes - k)
                            info["tile"] = cur_tile
                    yield Progress(done, tiles_total, k + 1, n_planes, f"plane {k + 1}/{n_planes} done")
            finally:
                info["fp32_redos"] = self.fp32_redos
                if was_training and self.module is not None:
                    self.module.train(True)
                if self.device.type != "cpu":
                    devices.release_memory(self.device)
        return out.arr

    def upscale(
        self,
        image,
        options: UpscaleOptions | None = None,
        *,
        progress: Callable[[Progress], Any] | None = None,
        cancel=None,
        **kw: Any,
    ) -> np.ndarray:
        """Run :meth:`upscale_iter` to completion; ``cancel`` (``threading.Event`` or callable
        returning bool) is checked between tiles and raises :class:`~.errors.Cancelled`."""
        return drain(self.upscale_iter(image, options, **kw), progress, cancel)

    def close(self) -> None:
        """Drop the module and give cached GPU memory back."""
        dev = self.device
        self.module = None
        devices.release_memory(dev)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one plane ----------------------------------------------------------------------------
    def _plane(
        self,
        chw: np.ndarray,
        norm: Normalization,
        grid: TileGrid,
        mode: str,
        layout: Layout,
        out: "OutWriter",
        plane: Plane,
    ) -> Generator[int, None, None]:
        """Process one (C, H, W) plane tile by tile, writing finished rows into ``out``.

        Blended rows are accumulated in a band of ``tile_h * s`` output rows by the full
        (extended) width; once no later tile row can touch them, rows are converted to the
        output dtype and written. Weights sum to 1 (see :mod:`.tiling`), so no weight map.
        """
        s = self.scale
        color = chw[:3] if layout.n_channels == 4 else chw
        alpha = chw[3] if layout.n_channels == 4 else None
        c_out = color.shape[0]
        h_out, w_out = layout.height * s, layout.width * s
        x_lo = grid.xs[0] * s
        band_w = (grid.xs[-1] + grid.tile_w) * s - x_lo
        band_h = grid.tile_h * s
        row_w, col_w = grid.row_weights(), grid.col_weights()
        ramps_r, ramps_c = [_ones_span(w) for w in row_w], [_ones_span(w) for w in col_w]
        band = np.zeros((c_out, band_h, band_w), dtype=np.float32)
        col0 = -x_lo  # band column of output column 0
        n = 0
        for r, y in enumerate(grid.ys):
            top = y * s
            for c, x in enumerate(grid.xs):
                win = read_window(color, y, y + grid.tile_h, x, x + grid.tile_w)
                sr = self._forward(norm.forward(win), mode)
                # weights are 1 between the ramps: multiply only the ramps (a pass saved)
                (r0, r1), (c0, c1) = ramps_r[r], ramps_c[c]
                if r0:
                    sr[:, :r0] *= row_w[r][:r0, None]
                if r1 < sr.shape[1]:
                    sr[:, r1:] *= row_w[r][r1:, None]
                if c0:
                    sr[:, :, :c0] *= col_w[c][:c0]
                if c1 < sr.shape[2]:
                    sr[:, :, c1:] *= col_w[c][c1:]
                bx = x * s - x_lo
                band[:, :, bx : bx + grid.tile_w * s] += sr
                n += 1
                yield n
            final = grid.ys[r + 1] * s if r + 1 < len(grid.ys) else top + band_h
            a, b = max(top, 0), min(final, h_out)
            if b > a:
                rows = band[:, a - top : b - top, col0 : col0 + w_out]
                self._write(out, plane, a, b, norm.inverse(rows), alpha, s)
            if r + 1 < len(grid.ys):
                # carry the partial sums of the overlap rows to the top of the band (numpy
                # copies overlapping ranges safely), clear the rest for the next tile row
                keep = top + band_h - final
                if keep > 0:
                    band[:, :keep] = band[:, final - top :]
                band[:, max(keep, 0) :] = 0.0

    def _write(self, out: "OutWriter", plane: Plane, a: int, b: int, rows: np.ndarray, alpha, s: int) -> None:
        if alpha is not None:
            al = bicubic_rows(alpha, s, a, b)
            rows = np.concatenate([rows, to_dtype(al, rows.dtype)[None]], axis=0)
        out.write(plane, a, b, rows)


def _ones_span(w: np.ndarray) -> tuple[int, int]:
    """``(a, b)``: ``w[a:b]`` is all ones (the tile's interior), outside it the blending ramps."""
    ones = np.flatnonzero(w == 1.0)
    if ones.size == 0:
        return 0, 0
    a, b = int(ones[0]), int(ones[-1]) + 1
    if not (w[a:b] == 1.0).all():
        return 0, 0  # not one interior run: weight everything (cannot happen with the current ramps)
    return a, b


#: normalised inputs beyond this magnitude are far outside the 0..1 the models were trained on
FAR_OUTSIDE = 1e3


def _non_finite_message(t: np.ndarray, precision: str) -> str:
    """Name the real cause of a NaN/Inf output: wildly out-of-range input, or broken weights."""
    peak = float(np.abs(t).max()) if t.size else 0.0
    if peak > FAR_OUTSIDE:
        return (
            f"the model overflowed (NaN/Inf output) because the normalised input reaches {peak:.3g}, "
            "far outside the 0..1 it was trained on: the image has values far beyond its "
            "normalisation range; use normalization='range' or a wider explicit (lo, hi)"
        )
    where = "in fp32" if precision == "fp32" else "even in fp32"
    return f"the model produced NaN/Inf values {where} on finite input; the weights are broken"


def _all_finite(y) -> bool:
    """NaN/Inf anywhere in ``y``: one reduction (NaN and Inf propagate through a sum) instead of
    a full-size boolean tensor; a finite sum can only overflow for values near 1e30, where
    a (harmless) fp32 redo is the right reaction anyway."""
    import torch

    return bool(torch.isfinite(y.sum(dtype=torch.float32)))


_CACHE: "OrderedDict[tuple, Upscaler]" = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 2  # e.g. the gray and the RGB default models of a mixed batch


def _model_key(model) -> tuple | None:
    """A cache key for models the engine loads itself (ids and paths); None for objects."""
    if model is None:
        return ("default",)
    if isinstance(model, (str, os.PathLike)):
        p = Path(str(model)).expanduser()
        if p.exists():
            st = p.stat()
            return ("path", str(p.resolve()), st.st_size, st.st_mtime_ns)
        return ("id", str(model))
    return None


def get_upscaler(model=None, *, options: UpscaleOptions | None = None, channels: int = 3, **kw: Any) -> Upscaler:
    """An :class:`Upscaler`, cached for ids/paths (the two most recent: a GPU holds few models).

    ``model`` defaults to ``options.model``; ``options``/keywords as for :class:`Upscaler`.
    In-memory ``LoadedModel`` objects are not cached: their weights may change between calls
    (training validation), and building an Upscaler for them is cheap.
    """
    opts = options_from(options, **kw)
    if model is None:
        model = opts.model
    key = _model_key(model)
    if key is None:
        return Upscaler(model, options=opts, channels=channels)
    full = key + (
        channels if key == ("default",) else None,
        opts.device,
        opts.precision,
        opts.threads,
        opts.self_ensemble,
        opts.backend,
    )
    with _CACHE_LOCK:
        up = _CACHE.get(full)
        if up is not None and up.module is not None:
            _CACHE.move_to_end(full)
            return up
        while len(_CACHE) >= _CACHE_SIZE:
            _, old = _CACHE.popitem(last=False)
            old.close()
        up = Upscaler(model, options=opts, channels=channels)
        _CACHE[full] = up
        return up


def validate_options(options: UpscaleOptions, *, channels: int | None = None) -> Upscaler | None:
    """Every check that does not need the image, once, before any work (the CLI calls this).

    Building ``options`` already checked the values; this also checks that the device exists,
    that the precision runs there, and that the device's default tile leaves room for the
    overlap. With a ``model`` (or ``channels``, to resolve the registry's default for that
    channel count) it loads the weights and checks them against the precision, returning the
    (cached) :class:`Upscaler` that the run will reuse; otherwise it returns None.
    """
    if not isinstance(options, UpscaleOptions):
        raise InputError(f"options must be an UpscaleOptions, got {type(options).__name__}")
    device = devices.resolve_device(options.device)
    check_tile_overlap(resolve_tile(options.tile, device), options.overlap)
    if options.model is None and channels is None:
        devices.resolve_precision(options.precision, device, None)
        return None
    return get_upscaler(options=options, channels=3 if channels is None else int(channels))


def cached_upscalers() -> list[Upscaler]:
    """The upscalers this process holds (one per model/options: a worker loads weights once)."""
    with _CACHE_LOCK:
        return list(_CACHE.values())


def clear_cache() -> None:
    """Drop cached Upscalers (and their GPU memory)."""
    with _CACHE_LOCK:
        while _CACHE:
            _, up = _CACHE.popitem()
            up.close()
