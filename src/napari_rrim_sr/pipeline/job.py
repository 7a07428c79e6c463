"""Transitional: only ``_napari`` uses it. The napari widgets' old names, built on :mod:`.pipeline`.

The data path is :mod:`napari_rrim_sr.pipeline` (request -> plan -> run -> result); this module
only keeps the names the widgets import until they are rewired onto the pipeline API
(``UpscaleSettings`` -> :class:`~.pipeline.UpscaleRequest`, ``plan_upscale`` ->
:func:`~.pipeline.plan`, ``run_upscale`` -> :func:`~.pipeline.run_iter`). Do not add to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from napari_rrim_sr.errors import InputError
from napari_rrim_sr.io.geometry import current_slice_index, is_stack, slice_key, source_info
from napari_rrim_sr.pipeline import Output, Source, UpscaleRequest, no_weights_message, plan, run_iter
from napari_rrim_sr.pipeline.selfcheck import self_check_iter

__all__ = [
    "NORMALIZATION_CHOICES",
    "UpscaleJob",
    "UpscaleResult",
    "UpscaleSettings",
    "check_plain_layer",
    "current_plane",
    "interpolation_pair",
    "no_weights_message",
    "plan_upscale",
    "run_upscale",
    "self_check_iter",
]

NORMALIZATION_CHOICES = (
    ("auto", "auto"),
    ("dtype range", "dtype"),
    ("data range (min-max)", "range"),
    ("percentiles", "percentile"),
)

_PAIR_SUFFIX = re.compile(r"^(?P<stem>.+)-(?P<kind>psnr|gan)$")


def interpolation_pair(weights_id: str, available_ids: Iterable[str]) -> tuple[str, str] | None:
    """``(psnr_id, gan_id)`` when ``weights_id`` ends in ``-psnr``/``-gan`` and its partner is available."""
    m = _PAIR_SUFFIX.match(weights_id or "")
    if not m:
        return None
    ids = set(available_ids)
    pair = (f"{m['stem']}-psnr", f"{m['stem']}-gan")
    return pair if pair[0] in ids and pair[1] in ids else None


@dataclass
class UpscaleSettings:
    """What a user chose in the widget (transitional; the pipeline's is UpscaleRequest)."""

    weights_id: str | None
    alpha: float | None = None
    device: str = "auto"
    precision: str = "auto"
    tile: int | None = None
    normalization: str = "auto"
    percentiles: tuple[float, float] = (0.1, 99.9)
    current_slice: bool = True
    self_ensemble: bool = False
    bicubic: bool = True
    metrics: bool = False


def check_plain_layer(layer, what: str = "Upscale (RRIM x4) works on plain image layers") -> None:
    """Refuse a multiscale (pyramid) layer: only its full-resolution level can be processed."""
    if getattr(layer, "multiscale", False):
        raise InputError(
            f"'{layer.name}' is a multiscale (pyramid) layer; open its full-"
            "resolution level as a plain layer or crop it first"
        )


def current_plane(layer, point=None) -> tuple[np.ndarray, dict]:
    """The displayed 2-D (or 2-D + RGB) plane of ``layer`` at the world ``point`` and its slice index."""
    ndim = layer.ndim
    if not is_stack(ndim):
        return np.asarray(layer.data), {}
    world = point if point is not None else [0.0] * ndim
    idx = current_slice_index(layer.data.shape, ndim, layer.world_to_data(world))
    return np.asarray(layer.data[slice_key(ndim, idx)]), idx


@dataclass
class UpscaleJob:
    """A planned widget run (transitional): ``plan`` is the :class:`~.pipeline.Plan`."""

    source: dict
    data: Any
    weights_id: str | None
    slice_index: dict = field(default_factory=dict)
    pair: tuple[str, str] | None = None
    alpha: float | None = None
    device: str = "auto"
    precision: str = "auto"
    tile: int | None = None
    normalization: str = "auto"
    percentiles: tuple[float, float] = (0.1, 99.9)
    self_ensemble: bool = False
    bicubic: bool = True
    metrics: bool = False
    plan: Any = None
    source_data: Any = None  # the whole layer data (lazy layers are planned in the worker)
    registry: Any = None

    @property
    def rgb(self) -> bool:
        return bool(self.source.get("rgb", False))

    @property
    def ndim(self) -> int:
        return int(self.source["ndim"])


@dataclass
class UpscaleResult:
    """The widget's view of a :class:`~.pipeline.Result` (transitional)."""

    job: UpscaleJob
    result: Any  # pipeline.Result

    def __getattr__(self, name):
        return getattr(self.result, name)

    @property
    def sr(self):
        return self.result.data

    @property
    def model(self) -> dict:
        return self.result.provenance.get("model") or {}

    @property
    def normalization(self) -> dict:
        return self.result.provenance.get("normalization") or {}

    @property
    def factor(self) -> int:
        return self.result.scale

    def layer_kwargs(self, kind: str, *, extra: Mapping[str, Any] | None = None) -> dict:
        return self.result.layer_kwargs(kind, extra=extra)


def _request(layer_info: dict, data, job: UpscaleJob) -> UpscaleRequest:
    return UpscaleRequest(
        Source(
            data,
            name=str(layer_info.get("name", "image")),
            rgb=bool(layer_info.get("rgb", False)),
            metadata=dict(layer_info.get("metadata") or {}),
            layer=layer_info,
        ),
        model=job.weights_id,
        pair=job.pair,
        alpha=job.alpha,
        normalization=job.normalization,
        percentiles=tuple(job.percentiles),
        device=job.device,
        precision=job.precision,
        tile=job.tile,
        self_ensemble=job.self_ensemble,
        bicubic=job.bicubic,
        metrics=job.metrics,
        slices="current" if job.slice_index else "all",
        slice_index=dict(job.slice_index),
        output=Output("memory"),
    )


def plan_upscale(layer, settings: UpscaleSettings, *, point=None, registry=None) -> UpscaleJob:
    """Plan a widget run on ``layer`` (a napari Image layer or anything with its attributes)."""
    from napari_rrim_sr.pipeline import weight_ids

    check_plain_layer(layer)
    wid = settings.weights_id
    if not wid:
        raise InputError(no_weights_message())
    info = source_info(layer)
    ndim = layer.ndim
    slice_index: dict = {}
    if is_stack(ndim) and settings.current_slice:
        world = point if point is not None else [0.0] * ndim
        slice_index = current_slice_index(info["shape"], ndim, layer.world_to_data(world))
    if np.dtype(layer.data.dtype).kind not in "iuf":
        raise InputError(f"'{layer.name}' holds {layer.data.dtype} data, which cannot be upscaled")
    pair = interpolation_pair(wid, weight_ids(registry))
    alpha = settings.alpha
    job = UpscaleJob(
        source=info,
        data=layer.data,
        weights_id=wid,
        slice_index=slice_index,
        pair=pair,
        alpha=(float(alpha) if alpha is not None else (0.0 if wid == pair[0] else 1.0)) if pair else None,
        device=str(settings.device),
        precision=str(settings.precision),
        tile=int(settings.tile or 0) or None,
        normalization=str(settings.normalization),
        percentiles=tuple(float(p) for p in settings.percentiles),
        self_ensemble=bool(settings.self_ensemble),
        bicubic=bool(settings.bicubic),
        metrics=bool(settings.metrics),
        source_data=layer.data,
    )
    if isinstance(layer.data, np.ndarray):  # cheap: plan now, so bad settings fail in the GUI thread
        job.plan = plan(_request(info, layer.data, job), registry=registry)
        job.data = job.plan.data
    else:  # lazy data: its whole-stack statistics are computed in the worker (run_upscale)
        from napari_rrim_sr.engine.options import UpscaleOptions

        UpscaleOptions(
            device=job.device, precision=job.precision, tile=job.tile, percentiles=job.percentiles
        )  # syntax, now
        job.data = layer.data[slice_key(ndim, slice_index)] if slice_index else layer.data
        job.registry = registry
    return job


def run_upscale(job: UpscaleJob):
    """Generator: yields ``Progress``, returns an :class:`UpscaleResult` (closing it cancels)."""
    if job.plan is None:
        full = job.source_data if job.source_data is not None else job.data
        job.plan = plan(_request(job.source, full, job), registry=job.registry)
    p = job.plan
    res = yield from run_iter(p)
    return UpscaleResult(job, res)
