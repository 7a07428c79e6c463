"""The planner: every ``auto`` of an :class:`~.request.UpscaleRequest` resolved once, with reasons.

Why one planner: the CLI (in-memory and OME-Zarr), the widgets, the demo and scripts used to
resolve the model, the normalisation and the output kind each in their own way, and the
defaults differed. :func:`plan` is the one place; :meth:`Plan.explain` says what will run and
why (shown by the CLI and widget, kept in provenance). Everything that needs no model run is
checked here, before anything is created on disk.

Defaults decided here (measured; docs/models.md "Mean intensity"):

* **normalisation ``auto``**: 8-bit integer data: the dtype range (what the models were trained
  on, /255). Wider integers and floats: the data's own min..max over the WHOLE stack or store at
  once (one reduction, lazy for dask/zarr), never per tile or plane; dim 16-bit microscopy
  (0..215 in uint16) scaled by the dtype range reaches the model at ~0.003 and came back at
  half its mean (30.9 -> 15.3 with rrim-x4-gray-real), by its range 30.97. Weights whose own
  metadata asks for percentile normalisation (fine-tuned models) get it, for non-8-bit data.
* **precision ``auto``**: fp32 when the data span more than 256 levels after normalisation
  (integers using more than 8 bits, floats): bf16 keeps ~8 significant bits, so it would add
  error the data do not have (up to 64 grey levels on a uint16 mosaic). Otherwise the
  engine's own ``auto``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_rrim_sr.errors import InputError
from napari_rrim_sr.pipeline.request import Output, Source, UpscaleRequest

__all__ = [
    "Part",
    "Plan",
    "engine_kwargs",
    "load_model_for",
    "no_weights_message",
    "plan",
    "resolve_normalization",
    "weight_ids",
]


def no_weights_message() -> str:
    """The one "no weights" message of every entry point (CLI, widgets, demo)."""
    from napari_rrim_sr.registry.core import user_weights_dir

    return (
        "No trained weights are installed, so there is no model to upscale with. "
        f"Copy a napari-rrim-sr .safetensors file into {user_weights_dir()} "
        "(or run `napari-rrim-sr models` to see what is found), install a package that "
        "contributes weights, or train one: python -m napari_rrim_sr.training"
    )


def weight_ids(registry=None, scale: int = 4) -> list[str]:
    """Ids of the installed weights of ``scale``: :func:`~napari_rrim_sr.registry.choice.installed_weight_ids`
    (the one list), or the same filter over another registry (tests, plugins' own registries)."""
    from napari_rrim_sr.registry.choice import installed_weight_ids
    from napari_rrim_sr.registry.core import get_registry

    if registry is None or registry is get_registry():
        return installed_weight_ids(scale)
    return [e.id for e in registry.weights() if e.scale == scale]


@dataclass
class Part:
    """One independently planned piece of the data: the whole of it, or one channel/band.

    ``index``: numpy index of the piece in the planned data (None: all of it), ``out_index`` the
    same in the result. Each part has its own model choice and normalisation.
    """

    index: tuple | None
    out_index: tuple | None
    spatial_axes: tuple[int, int]
    rgb: bool
    model: Any  # LoadedModel
    choice: dict  # {"weights", "reason", "robust", "condition"}
    normalization: Any  # napari_rrim_sr.engine.normalize.Normalization
    norm_reason: str
    constant: bool = False  # the whole part holds one value: the result is that value
    label: str = ""

    def norm_record(self, percentiles=None) -> dict:
        n = self.normalization
        rec = {"mode": n.mode, "lo": n.lo, "hi": n.hi, "bit_depth": n.bit_depth, "reason": self.norm_reason}
        if n.mode == "percentile" and percentiles is not None:
            rec["percentiles"] = list(percentiles)
        return rec


@dataclass
class Plan:
    """What will run, and why. Built by :func:`plan`; executed by :func:`~.run.run`."""

    request: UpscaleRequest
    data: Any  # the array that is upscaled (the source, or its current slice); only read
    spatial_axes: tuple[int, int]
    rgb: bool
    scale: int
    parts: list[Part]
    slice_index: dict
    output: Output
    output_kind: str  # "memory" | "files" | "store"
    precision: str
    precision_reason: str
    channel_axis: int | None = None
    reasons: list[str] = field(default_factory=list)
    store_job: Any = None  # chunked.ChunkJob for store output
    store_source: Any = None  # ngff.Source for store output
    source_record: dict = field(default_factory=dict)

    @property
    def model(self):
        """The (first) part's model: the model of the run for data without a channel axis."""
        return self.parts[0].model

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(n * self.scale if a in self.spatial_axes else n for a, n in enumerate(self.data.shape))

    def explain(self) -> list[str]:
        """One line per decision, for the CLI, the widget and provenance."""
        return list(self.reasons)

    def normalization_record(self) -> dict:
        recs = [p.norm_record(self.request.percentiles) for p in self.parts]
        if len(recs) == 1:
            return recs[0]
        return {"mode": "per channel", "channels": recs}

    def choice_record(self) -> dict:
        if len(self.parts) == 1:
            return dict(self.parts[0].choice)
        return {"weights": "per channel", "channels": [p.choice for p in self.parts]}


def engine_kwargs(request: UpscaleRequest, precision: str) -> dict:
    """Keyword arguments of the engine's ``Upscaler`` for this request (``backend`` only where
    the engine knows it)."""
    from napari_rrim_sr.engine.options import FIELDS

    kw = {
        "device": request.device,
        "precision": precision,
        "threads": request.threads,
        "self_ensemble": bool(request.self_ensemble),
    }
    if "backend" in FIELDS:
        kw["backend"] = request.backend
    elif request.backend not in (None, "auto", "torch"):
        raise InputError(f"backend {request.backend!r} is not available in this version (only torch)")
    return kw


# -- models --------------------------------------------------------------------------------


def load_model_for(model, *, channels: int, pair=None, alpha=None, registry=None):
    """A ``LoadedModel`` from a LoadedModel, weights id, path, None (the default for
    ``channels``), or the network interpolation of a PSNR/GAN ``pair`` at ``alpha``."""
    from napari_rrim_sr.registry.core import get_registry
    from napari_rrim_sr.registry.interpolation import lerp_state_dicts
    from napari_rrim_sr.registry.loading import LoadedModel, load_model

    registry = registry or get_registry()
    if isinstance(model, LoadedModel):
        return model
    if pair is not None and alpha is not None:
        alpha = float(alpha)
        if alpha <= 0.0:
            return load_model(pair[0], registry=registry)
        if alpha >= 1.0:
            return load_model(pair[1], registry=registry)
        psnr = load_model(pair[0], registry=registry)
        gan = load_model(pair[1], registry=registry)
        if psnr.backbone != gan.backbone or psnr.hparams != gan.hparams:
            raise InputError(f"{pair[0]} and {pair[1]} are different architectures; they cannot be interpolated")
        sd = lerp_state_dicts(psnr.module.state_dict(), gan.module.state_dict(), alpha, names=("PSNR", "GAN"))
        psnr.module.load_state_dict(sd)
        stem = pair[0][: -len("-psnr")] if pair[0].endswith("-psnr") else pair[0]
        psnr.id = f"{stem} (alpha={alpha:.2f})"
        psnr.metadata = dict(
            psnr.metadata,
            interpolated_from=[{"id": pair[0], "sha256": psnr.sha256}, {"id": pair[1], "sha256": gan.sha256}],
        )
        psnr.sha256 = ""  # no single file holds these weights
        psnr.path = None
        return psnr
    if model is None:
        entry = registry.default_weights(channels)
        if entry is None:
            raise InputError(no_weights_message())
        return load_model(entry, registry=registry)
    if isinstance(model, Path):
        return load_model(model)
    return load_model(model, registry=registry)


def _choose(request: UpscaleRequest, data, *, rgb: bool, spatial, ids, registry) -> tuple[Any, dict]:
    from napari_rrim_sr.registry.choice import choose_for_layer

    model = request.model
    channels = 3 if rgb else 1
    if request.pair is not None and request.alpha is not None:
        loaded = load_model_for(None, channels=channels, pair=request.pair, alpha=request.alpha, registry=registry)
        return loaded, {"weights": loaded.id, "reason": "PSNR <-> GAN interpolation chosen by the user"}
    if model not in (None, "auto"):
        loaded = load_model_for(model, channels=channels, registry=registry)
        return loaded, {"weights": loaded.id, "reason": "chosen by the user", "robust": None, "condition": None}
    choice = choose_for_layer(
        data, rgb=rgb, spatial_axes=spatial, available_ids=ids, metadata=request.source.metadata or {}
    )
    rec = choice.as_dict()
    if choice.weights_id is None:  # no clean/robust pair installed: the registry default
        loaded = load_model_for(None, channels=channels, registry=registry)
        rec["weights"] = loaded.id
        rec["reason"] = f"{choice.reason}: the installed default {loaded.id}"
        return loaded, rec
    return load_model_for(choice.weights_id, channels=channels, registry=registry), rec


# -- normalisation ---------------------------------------------------------------------------

_PCT = re.compile(r"(\d+(?:\.\d+)?)\s*[-–]\s*(\d+(?:\.\d+)?)\s*(?:th\s*)?percentile")


def weights_normalization(metadata: dict | None) -> tuple[str, tuple[float, float]] | None:
    """What the weights' own metadata asks for non-8-bit data: ``("percentile", (lo, hi))`` for
    a model trained on percentile-normalised data (fine-tunes say so in ``normalization``), or
    an explicit ``normalization_auto`` {mode, percentiles}; None: nothing asked."""
    meta = dict(metadata or {})
    explicit = meta.get("normalization_auto")
    if isinstance(explicit, dict) and explicit.get("mode") in ("dtype", "range", "percentile"):
        pct = explicit.get("percentiles") or (0.1, 99.9)
        return str(explicit["mode"]), (float(pct[0]), float(pct[1]))
    text = meta.get("normalization")
    if isinstance(text, str) and "percentile" in text.lower():
        m = _PCT.search(text)
        return "percentile", ((float(m.group(1)), float(m.group(2))) if m else (0.1, 99.9))
    return None


def _is_normalization(value) -> bool:
    from napari_rrim_sr.engine.normalize import Normalization

    return isinstance(value, Normalization)


def _lazy(data):
    """numpy stays numpy; dask stays dask; zarr/memmap/other arrays become dask (lazy reductions)."""
    if isinstance(data, np.ndarray) or type(data).__module__.startswith("dask"):
        return data
    import dask.array as da

    chunks = getattr(data, "chunks", None)
    return da.from_array(data, chunks=chunks if isinstance(chunks, tuple) else "auto")


def _minmax(data) -> tuple[float, float]:
    from napari_rrim_sr.engine.normalize import _minmax as nmm

    return nmm(data, type(data).__module__.startswith("dask"))


def _normalization(request: UpscaleRequest, stats_data, model, *, rgb: bool):
    """(Normalization, reason) over ``stats_data`` (the whole stack/store of this part)."""
    from napari_rrim_sr.engine.normalize import (
        Normalization,
        check_dtype,
        clip_limits,
        compute_normalization,
        dtype_limits,
    )

    dt = check_dtype(stats_data.dtype)
    if rgb and stats_data.shape[-1] == 4:
        stats_data = stats_data[..., :3]  # alpha is not intensity
    choice = request.normalization
    if _is_normalization(choice):
        return choice, f"given by the caller ({choice.mode} {choice.lo:g}..{choice.hi:g})"
    pct = tuple(float(p) for p in request.percentiles)
    lazy = _lazy(stats_data)
    if choice not in ("auto", None):
        n = compute_normalization(lazy, choice, percentiles=pct, bit_depth=request.bit_depth)
        return n, f"{choice} chosen by the user ({n.lo:g}..{n.hi:g})"
    if request.bit_depth is not None and dt.kind in "iu":
        n = compute_normalization(lazy, "dtype", bit_depth=request.bit_depth)
        return n, f"dtype range of {request.bit_depth}-bit data (--bit-depth): 0..{n.hi:g}"
    asked = weights_normalization(getattr(model, "metadata", None))
    eight_bit = dt.kind in "iu" and dt.itemsize == 1
    if asked is not None and not eight_bit:
        mode, p = asked
        n = compute_normalization(lazy, mode, percentiles=p)
        return n, (
            f"{mode}{f' {p[0]:g}-{p[1]:g}' if mode == 'percentile' else ''} as the weights' metadata asks "
            f"({n.lo:g}..{n.hi:g}, over the whole data)"
        )
    if eight_bit:
        n = compute_normalization(lazy, "dtype")
        return n, "8-bit data: the dtype range 0..255, as the models were trained"
    lo, hi = _minmax(lazy)
    out_lo, out_hi = clip_limits(dt, None)
    n = Normalization(float(lo), float(hi), dt, "range", None, out_lo, out_hi)
    if dt.kind in "iu":
        d_lo, d_hi = dtype_limits(dt)
        frac = (hi - min(lo, 0.0)) / (d_hi - d_lo) if d_hi > d_lo else 1.0
        why = (
            f"{dt} data using {lo:g}..{hi:g} ({100 * frac:.2g} % of the dtype range): scaled by its own range "
            "over the whole data, so the model sees 0..1 as in training"
        )
    else:
        why = f"{dt} data: scaled by its own range {lo:g}..{hi:g} over the whole data"
    return n, why


def resolve_normalization(
    data, model=None, *, choice: str = "auto", percentiles=(0.1, 99.9), bit_depth=None, rgb: bool = False
):
    """``(Normalization, reason)`` for ``data`` under ``choice``, by the planner's rules (the
    self-check and scripts use it for arrays that are not a request's source)."""
    req = UpscaleRequest(Source(data), normalization=choice, percentiles=tuple(percentiles), bit_depth=bit_depth)
    return _normalization(req, data, model, rgb=rgb)


def _precision(request: UpscaleRequest, parts: list[Part]) -> tuple[str, str]:
    if request.precision not in (None, "auto"):
        return str(request.precision), "chosen by the user"
    deep = []
    for p in parts:
        n = p.normalization
        if n.dtype.kind == "f":
            deep.append(f"{n.dtype} data")
        elif n.hi - n.lo > 256:
            deep.append(f"{n.hi - n.lo + 1:.0f} grey levels ({math.log2(n.hi - n.lo + 1):.1f} bits)")
    if deep:
        return "fp32", (f"fp32: {deep[0]} need more than the ~8 significant bits of bf16 to stay within one grey level")
    return "auto", "the engine's choice (data within 8 bits: reduced precision stays within one grey level)"


# -- the planner ------------------------------------------------------------------------------


def _layout(src: Source, data, request: UpscaleRequest) -> tuple[tuple[int, int], bool, int | None]:
    """(spatial axes, rgb, channel axis) of the data; a 4th band that is not alpha becomes a band."""
    from napari_rrim_sr.io.bands import classify_fourth_band

    shape = tuple(int(n) for n in data.shape)
    nd = len(shape)
    rgb = src.rgb
    if rgb is None:
        rgb = nd >= 3 and shape[-1] in (3, 4) and (src.spatial_axes is None or nd - 1 not in src.spatial_axes)
    rgb = bool(rgb)
    channel_axis = None if request.channel_axis is None else int(request.channel_axis) % nd
    if rgb and shape[-1] == 4 and request.fourth_band != "alpha":
        kind = request.fourth_band
        if kind == "auto":
            kind, _why = classify_fourth_band(data)
        if kind == "band":
            rgb, channel_axis = False, nd - 1
    if src.spatial_axes is not None:
        sp = tuple(int(a) % nd for a in src.spatial_axes)
    else:
        sp = (nd - 3, nd - 2) if (rgb or channel_axis == nd - 1) else (nd - 2, nd - 1)
    if channel_axis is not None:
        channel_axis = int(channel_axis) % nd
        if channel_axis in sp:
            raise InputError(f"the channel axis {channel_axis} cannot also be a spatial axis {sp}")
    if nd < 2 or min(shape[a] for a in sp) < 1:
        raise InputError(f"{src.name}: cannot upscale an array of shape {shape}")
    return sp, rgb, channel_axis


def _source_record(src: Source, shape, dtype) -> dict:
    sha = None
    if src.path is not None and Path(src.path).is_file():
        from napari_rrim_sr.registry.loading import file_sha256

        sha = file_sha256(src.path)
    return {
        "name": src.name,
        "path": str(src.path) if src.path is not None else None,
        "sha256": sha,
        "shape": [int(n) for n in shape],
        "dtype": str(np.dtype(dtype)),
        "axes": src.axes,
    }


def plan(request: UpscaleRequest, registry=None) -> Plan:
    """Resolve ``request`` into a :class:`Plan`: model(s), normalisation, precision, layout,
    output kind; raises :class:`~napari_rrim_sr.errors.InputError` (one line) for anything wrong
    that can be told without running the model. Loads the chosen weights (their metadata
    decides the normalisation). Creates nothing on disk."""
    from napari_rrim_sr.engine.memory import check_fits_in_memory, output_nbytes
    from napari_rrim_sr.engine.normalize import check_dtype
    from napari_rrim_sr.engine.options import UpscaleOptions
    from napari_rrim_sr.io.images import LAZY_HINT
    from napari_rrim_sr.registry.core import get_registry

    registry = registry or get_registry()
    src = request.source
    data = src.data
    if data is None or not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    if np.dtype(data.dtype).kind == "b":
        raise InputError(f"'{src.name}' holds boolean data (a mask); it cannot be upscaled")
    check_dtype(data.dtype)
    if not _is_normalization(request.normalization) and request.normalization not in (
        "auto",
        "dtype",
        "range",
        "percentile",
        None,
    ):
        raise InputError(f"normalization must be auto, dtype, range or percentile, got {request.normalization!r}")
    # syntax of every engine setting, once, before any work (bad tile, precision, percentiles...)
    UpscaleOptions(
        device=request.device,
        precision=request.precision,
        threads=request.threads,
        tile=request.tile,
        overlap=request.overlap,
        percentiles=tuple(request.percentiles),
        bit_depth=request.bit_depth,
    )
    if isinstance(request.normalization, str) and request.normalization == "dtype" and np.dtype(data.dtype).kind == "f":
        raise InputError("float data has no dtype range; choose 'auto', 'range' or 'percentile'")
    full = data
    sp, rgb, channel_axis = _layout(src, full, request)
    nd = len(full.shape)
    slice_index: dict = {}
    if request.slices == "current" and request.slice_index:
        slice_index = {int(a) % nd: int(i) for a, i in request.slice_index.items()}
        for a in slice_index:
            if a in sp or (rgb and a == nd - 1):
                raise InputError(f"axis {a} is spatial (or colour); only stack axes can be sliced")
    reasons: list[str] = []
    ids = weight_ids(registry)
    # parts: channels (each with its own choice and normalisation) or the whole data
    parts: list[Part] = []
    if channel_axis is not None:
        chans = range(int(full.shape[channel_axis]))
    else:
        chans = [None]
    for c in chans:
        index = None
        piece = full
        if c is not None:
            idx: list[Any] = [slice(None)] * nd
            idx[channel_axis] = c
            index = tuple(idx)
            piece = full[index]
        p_sp = tuple(a - (c is not None and a > channel_axis) for a in sp)
        model, choice = _choose(request, piece, rgb=rgb, spatial=p_sp, ids=ids, registry=registry)
        norm, why = _normalization(request, piece, model, rgb=rgb)
        label = f"channel {c}: " if c is not None else ""
        parts.append(Part(index, index, p_sp, rgb, model, choice, norm, why, constant=norm.hi == norm.lo, label=label))
        reasons.append(f"{label}model {model.id}: {choice.get('reason')}")
        reasons.append(f"{label}normalisation {norm.mode}: {why}")
        if norm.hi == norm.lo:
            reasons.append(f"{label}constant input ({norm.lo:g}): the result is that constant (no model)")
    scales = {int(p.model.scale) for p in parts}
    if len(scales) != 1:
        raise InputError(f"the chosen models have different scales {sorted(scales)}")
    scale = scales.pop()
    precision, prec_reason = _precision(request, parts)
    reasons.append(f"precision {precision}: {prec_reason}")
    # the data actually processed: the current slice (kept as a stack of one), or all of it
    if slice_index:
        from napari_rrim_sr.io.geometry import slice_key

        data = full[slice_key(nd, slice_index)]
        reasons.append(f"slices: the current slice {slice_index}")
    # output
    out = request.output
    kind = out.kind
    if kind == "auto":
        from napari_rrim_sr.pipeline.chunked import plan_output

        kind, why = plan_output(data.shape, data.dtype, scale, n_spatial=2)
        if kind == "store" and out.path is None:
            raise InputError(f"'{src.name}': {why}; give an OME-Zarr output path")
        reasons.append(f"output {kind}: {why}")
    if kind not in ("memory", "files", "store"):
        raise InputError(f"output must be memory, files, store or auto, got {kind!r}")
    if kind in ("files", "store") and out.path is None:
        raise InputError(f"{kind} output needs a path")
    if kind != "store":
        n_out = (2 if request.bicubic else 1) * 1.25
        stack = len(data.shape) - 2 - int(rgb) > 0
        check_fits_in_memory(
            int(output_nbytes(data.shape, data.dtype, scale) * n_out),
            f"Upscaling '{src.name}'",
            suggestion=(
                (
                    "tick 'Current slice only' or crop the stack"
                    if src.layer is not None
                    else "upscale one slice, or write an OME-Zarr store (a .zarr input or --scheduler)"
                )
                if stack
                else (LAZY_HINT if src.path is not None else "crop it first, or write an OME-Zarr store")
            ),
        )
    elif request.bicubic:
        raise InputError("the bicubic reference is not available for OME-Zarr (store) output")
    p = Plan(
        request=request,
        data=data,
        spatial_axes=sp,
        rgb=rgb,
        scale=scale,
        parts=parts,
        slice_index=slice_index,
        output=out,
        output_kind=kind,
        precision=precision,
        precision_reason=prec_reason,
        channel_axis=channel_axis,
        reasons=reasons,
        source_record=_source_record(src, full.shape, full.dtype),
    )
    if kind == "store":
        _plan_store(p)
    return p


def _plan_store(p: Plan) -> None:
    """The chunked job of a store output (validated now; the store is created by the run)."""
    from napari_rrim_sr.io.ngff import Source as NgffSource
    from napari_rrim_sr.io.ngff import _parse_axes
    from napari_rrim_sr.pipeline import chunked

    req, out = p.request, p.output
    if len(p.parts) != 1 or p.rgb:
        raise InputError("OME-Zarr (store) output takes gray or per-plane data (no RGB, no channel planning)")
    src = req.source
    z = src.zarr
    data = p.data
    if z is None or p.slice_index:
        shape = tuple(int(n) for n in data.shape)
        axes = src.axes.lower() if src.axes and len(src.axes) == len(shape) else "tczyx"[-len(shape) :]
        if len(shape) > 5:
            raise InputError(f"an array of {len(shape)} dimensions cannot be written as OME-Zarr")
        z = NgffSource(
            Path(out.path).with_name(src.name or "image"),
            "object",
            "",
            shape,
            np.dtype(data.dtype),
            _parse_axes(axes, len(shape)),
            [float(v) for v in (src.scale or [1.0] * len(shape))][-len(shape) :],
            [float(v) for v in (src.translate or [0.0] * len(shape))][-len(shape) :],
            tuple(getattr(data, "chunksize", shape)),
            name=src.name or "image",
        )
    part = p.parts[0]
    ekw = engine_kwargs(req, p.precision)
    job = chunked.plan_job(
        z,
        out.path,
        model=part.model,
        normalization=part.normalization,
        chunk=out.chunk or chunked.DEFAULT_CHUNK,
        halo=chunked.DEFAULT_HALO if out.halo is None else out.halo,
        tile=req.tile,
        overlap=req.overlap,
        device=ekw["device"],
        precision=ekw["precision"],
        threads=ekw["threads"],
        self_ensemble=ekw["self_ensemble"],
        array=data if z.kind == "object" else None,
        **({"backend": ekw["backend"]} if "backend" in ekw else {}),
    )
    if z.kind == "object":
        job.source_kind, job.source_path, job.source_obj = "object", "", data
    p.store_job, p.store_source = job, z
