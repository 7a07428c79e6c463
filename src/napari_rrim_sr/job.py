"""The one upscale job pipeline: plan, run, describe the result.

The napari widget (in a worker thread), the headless demo and scripts share it, so none of them
rebuilds provenance or source descriptions of its own:

* **plan** (:func:`plan_upscale`, in the caller's thread): the settings a user chose
  (:class:`UpscaleSettings`) and a source layer become an :class:`UpscaleJob`, after the
  checks that need no model (multiscale, dtype, normalisation choice, memory estimate), with the
  slice to process and the PSNR/GAN pair for the interpolation slider;
* **run** (:func:`run_upscale`, a generator of engine ``Progress`` events): loads the model
  (or interpolates a pair), calls the engine, adds bicubic and a self-check when asked;
* **describe** (:meth:`UpscaleResult.layer_kwargs`): ``viewer.add_image`` keyword arguments of
  each result, with scale/translate and provenance (the same dict the TIFF writer stores).

No Qt and no napari import here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from .errors import InputError
from .interpolation import lerp_state_dicts
from .jsonable import jsonable
from .layer_metrics import compare_arrays, metrics_data_range
from .layers import (
    current_slice_index,
    is_stack,
    representative_plane,
    result_layer_kwargs,
    slice_key,
    source_info,
    spatial_axes_for,
)
from .memory import available_memory, check_fits_in_memory, format_bytes, output_nbytes  # noqa: F401
from .provenance import provenance

# -- normalisation -------------------------------------------------------------------------

NORMALIZATION_CHOICES = (
    ("auto", "auto"),
    ("dtype range", "dtype"),
    ("data range (min-max)", "range"),
    ("percentiles", "percentile"),
)


def auto_normalization(dtype, data_min: float | None = None, data_max: float | None = None) -> dict:
    """Engine keyword arguments for the widget's "auto" normalisation.

    8-bit data, and wider integer data that uses at least a quarter of its dtype's range (a
    16-bit camera image), are scaled by the dtype range: intensities keep their absolute meaning.
    Integer data far below its dtype's maximum (12-bit or 8-bit values stored in uint16, as many
    microscopy files are) and float data are scaled by their actual min..max, so the model sees
    a well-exposed 0..1 image; the inverse mapping restores the original values afterwards.
    The bit depth is never guessed from the maximum.
    """
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if data_max is None or data_min is None or dt.itemsize == 1:
            return {"normalization": "dtype"}
        span = float(info.max) - float(info.min)
        if (float(data_max) - min(float(data_min), 0.0)) >= 0.25 * span:
            return {"normalization": "dtype"}
        return {"normalization": "range"}
    if dt.kind == "b":
        raise InputError("boolean layers (masks) cannot be upscaled; use a labels/interpolation tool")
    if dt.kind == "f":
        return {"normalization": "range"}
    raise InputError(f"cannot upscale {dt} data")


def normalization_kwargs(
    choice: str, dtype, data_min=None, data_max=None, percentiles: tuple[float, float] = (0.1, 99.9)
) -> dict:
    """Engine keyword arguments for a widget choice (``auto``/``dtype``/``range``/``percentile``)."""
    if choice == "auto":
        return auto_normalization(dtype, data_min, data_max)
    if choice == "percentile":
        lo, hi = (float(p) for p in percentiles)
        if not 0 <= lo < hi <= 100:
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {lo}, {hi}")
        return {"normalization": "percentile", "percentiles": (lo, hi)}
    if choice in ("dtype", "range"):
        if choice == "dtype" and np.dtype(dtype).kind == "f":
            raise InputError("float data has no dtype range; choose 'auto', 'data range' or 'percentiles'")
        return {"normalization": choice}
    raise ValueError(f"unknown normalisation {choice!r}")


# -- network interpolation -----------------------------------------------------------------

_PAIR_SUFFIX = re.compile(r"^(?P<stem>.+)-(?P<kind>psnr|gan)$")


def interpolation_pair(weights_id: str, available_ids: Iterable[str]) -> tuple[str, str] | None:
    """``(psnr_id, gan_id)`` when ``weights_id`` ends in ``-psnr`` or ``-gan`` and its partner
    (same id but the other suffix) is available; None otherwise."""
    m = _PAIR_SUFFIX.match(weights_id or "")
    if not m:
        return None
    ids = set(available_ids)
    pair = (f"{m['stem']}-psnr", f"{m['stem']}-gan")
    return pair if pair[0] in ids and pair[1] in ids else None


# -- plan ------------------------------------------------------------------------------------


@dataclass
class UpscaleSettings:
    """What a user chose, in one object (the widget reads its values into it; the demo and
    scripts fill it from their arguments)."""

    weights_id: str | None
    alpha: float | None = None  # PSNR <-> GAN slider; used only when the weights have a pair
    device: str = "auto"
    precision: str = "auto"
    tile: int | None = None  # None (or 0) = the engine's default
    normalization: str = "auto"
    percentiles: tuple[float, float] = (0.1, 99.9)
    current_slice: bool = True  # stacks: only the displayed slice
    self_ensemble: bool = False
    bicubic: bool = True
    metrics: bool = False


def available_weight_ids(registry=None) -> list[str]:
    from .registry import get_registry

    return [e.id for e in (registry or get_registry()).weights()]


def check_plain_layer(layer, what: str = "Upscale (RRIM x4) works on plain image layers") -> None:
    """Refuse a multiscale (pyramid) layer: only its full-resolution level can be processed."""
    if getattr(layer, "multiscale", False):
        raise InputError(
            f"'{layer.name}' is a multiscale (pyramid) layer; open its full-"
            "resolution level as a plain layer or crop it first"
        )


def current_plane(layer, point=None) -> tuple[np.ndarray, dict]:
    """The displayed 2-D (or 2-D + RGB) plane of ``layer`` at the world ``point`` (the viewer's
    ``dims.point``) and its slice index ``{axis: index}`` (``{}`` for a single plane)."""
    ndim = layer.ndim
    if not is_stack(ndim):
        return np.asarray(layer.data), {}
    world = point if point is not None else [0.0] * ndim
    idx = current_slice_index(layer.data.shape, ndim, layer.world_to_data(world))
    return np.asarray(layer.data[slice_key(ndim, idx)]), idx


def plan_upscale(layer, settings: UpscaleSettings, *, point=None, registry=None) -> "UpscaleJob":
    """Check ``settings`` against ``layer`` (a napari Image layer or anything with its
    attributes) and capture what a run needs; raises :class:`InputError` with a plain message.

    ``point`` is the viewer's world position (``viewer.dims.point``): with
    ``settings.current_slice`` a stack is reduced to the slice shown there.
    """
    from .registry import get_registry

    registry = registry or get_registry()
    check_plain_layer(layer)
    wid = settings.weights_id
    if not wid:
        raise InputError(no_weights_message())
    entry = registry.find_weights(wid)
    info = source_info(layer)
    ndim = layer.ndim
    data = layer.data
    slice_index: dict = {}
    stack = is_stack(ndim)
    if stack and settings.current_slice:
        world = point if point is not None else [0.0] * ndim
        slice_index = current_slice_index(info["shape"], ndim, layer.world_to_data(world))
        data = data[slice_key(ndim, slice_index)]
    if np.dtype(data.dtype).kind not in "iuf":
        raise InputError(f"'{layer.name}' holds {data.dtype} data, which cannot be upscaled")
    percentiles = tuple(float(p) for p in settings.percentiles)
    # refuse impossible settings now (percentiles, "dtype" on float data), not in the worker
    normalization_kwargs(str(settings.normalization), data.dtype, None, None, percentiles)
    factor = int(entry.scale)
    n_out = 2 if settings.bicubic else 1
    needed = int(output_nbytes(data.shape, data.dtype, factor) * n_out * 1.25)
    what = (
        f"Upscaling all {int(np.prod(data.shape[: ndim - 2]))} slices of '{layer.name}'"
        if stack and not slice_index
        else f"Upscaling '{layer.name}'"
    )
    check_fits_in_memory(
        needed,
        what,
        suggestion=(
            "tick 'Current slice only' or crop the stack"
            if stack and not slice_index
            else "crop the layer first, or use the command line with a zarr output"
        ),
    )
    pair = interpolation_pair(wid, available_weight_ids(registry))
    alpha = settings.alpha
    return UpscaleJob(
        source=info,
        data=data,
        weights_id=wid,
        slice_index=slice_index,
        pair=pair,
        alpha=(float(alpha) if alpha is not None else (0.0 if wid == pair[0] else 1.0)) if pair else None,
        device=str(settings.device),
        precision=str(settings.precision),
        tile=int(settings.tile or 0) or None,
        normalization=str(settings.normalization),
        percentiles=percentiles,
        self_ensemble=bool(settings.self_ensemble),
        bicubic=bool(settings.bicubic),
        metrics=bool(settings.metrics),
    )


# -- run and describe ----------------------------------------------------------------------

# -- the upscale job (run in a worker thread by the widget, inline by the demo) ------------


@dataclass
class UpscaleJob:
    """Everything a run needs, captured in the GUI thread (no Qt, no napari objects)."""

    source: dict  # source_info() of the layer
    data: Any  # the array to process: the layer data or one slice of it (never written to)
    weights_id: str | None
    slice_index: dict = field(default_factory=dict)
    pair: tuple[str, str] | None = None  # (psnr id, gan id) for network interpolation
    alpha: float | None = None
    device: str = "auto"
    precision: str = "auto"
    tile: int | None = None
    normalization: str = "auto"
    percentiles: tuple[float, float] = (0.1, 99.9)
    self_ensemble: bool = False
    bicubic: bool = True
    metrics: bool = False

    @property
    def rgb(self) -> bool:
        return bool(self.source.get("rgb", False))

    @property
    def ndim(self) -> int:
        return int(self.source["ndim"])


@dataclass
class UpscaleResult:
    job: UpscaleJob
    sr: np.ndarray
    bicubic: np.ndarray | None
    model: dict  # LoadedModel.provenance() (+ interpolation details)
    normalization: dict
    device: str
    precision: str
    elapsed_s: float
    bicubic_elapsed_s: float | None = None
    metrics: dict | None = None
    factor: int = 4
    tile: int | None = None  # the tile the engine used (after its default / OOM fallback)
    overlap: int | None = None

    def layer_kwargs(self, kind: str, *, extra: Mapping[str, Any] | None = None) -> dict:
        """``viewer.add_image`` keyword arguments of the ``"rrim"`` or ``"bicubic"`` result,
        provenance included (``extra``: more fields for the record, e.g. the demo's
        ``untrained``)."""
        more = {"overlap": self.overlap, "self_ensemble": self.job.self_ensemble} if kind == "rrim" else {}
        more.update(extra or {})
        data = self.sr if kind == "rrim" else self.bicubic
        record = provenance(
            kind=kind,
            source_name=self.job.source.get("name", "image"),
            source_shape=self.job.source.get("shape", np.shape(self.job.data)),
            source_dtype=self.job.source.get("dtype", data.dtype),
            factor=self.factor,
            model=self.model,
            device=self.device if kind == "rrim" else "cpu",
            precision=self.precision if kind == "rrim" else None,
            tile=(self.tile if self.tile is not None else self.job.tile) if kind == "rrim" else None,
            normalization=self.normalization if kind == "rrim" else None,
            elapsed_s=self.elapsed_s if kind == "rrim" else self.bicubic_elapsed_s,
            slice_index=self.job.slice_index,
            alpha=self.job.alpha if (kind == "rrim" and self.job.pair) else None,
            metrics=self.metrics,
            extra=more or None,
        )
        return result_layer_kwargs(
            self.job.source, data, kind=kind, factor=self.factor, slice_index=self.job.slice_index, record=record
        )


def load_job_model(weights_id: str | None, *, pair=None, alpha=None, registry=None):
    """The model of a job: a registry weights id, or the network interpolation of a PSNR/GAN
    pair at ``alpha`` (0 = PSNR weights, 1 = GAN weights). Returns a ``LoadedModel``."""
    from .registry import get_registry
    from .weights_io import load_model

    registry = registry or get_registry()
    if pair is None or alpha is None:
        if weights_id is None:
            raise InputError(no_weights_message())
        return load_model(weights_id, registry=registry)
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
    stem = pair[0][: -len("-psnr")]
    psnr.id = f"{stem} (alpha={alpha:.2f})"
    psnr.metadata = dict(
        psnr.metadata, interpolated_from=[{"id": pair[0], "sha256": psnr.sha256}, {"id": pair[1], "sha256": gan.sha256}]
    )
    psnr.sha256 = ""  # no single file holds these weights
    psnr.path = None
    return psnr


def no_weights_message() -> str:
    from .registry import user_weights_dir

    return (
        "No trained weights are installed, so there is no model to upscale with. "
        f"Copy a napari-rrim-sr .safetensors file into {user_weights_dir()} "
        "(or run `napari-rrim-sr models` to see what is found), or install a package that "
        "contributes weights."
    )


def run_upscale(job: UpscaleJob, *, model=None):
    """Generator: yields engine ``Progress`` events per tile/slice, returns an
    :class:`UpscaleResult`. Closing the generator (the widget's Cancel) stops between tiles and
    releases device memory; the source array is only read."""
    import time as _time

    from . import engine
    from .devices import release_memory

    data = job.data
    if not hasattr(data, "shape"):
        data = np.asarray(data)
    spatial = spatial_axes_for(job.ndim)
    norm_kwargs = _job_normalization(job, data)
    loaded = model if model is not None else load_job_model(job.weights_id, pair=job.pair, alpha=job.alpha)
    up = engine.Upscaler(
        loaded,
        device=job.device,
        precision=job.precision,
        channels=3 if job.rgb else 1,
        self_ensemble=job.self_ensemble,
    )
    device = up.device
    factor = int(loaded.scale)
    out_shape = list(data.shape)
    for a in spatial:
        out_shape[a] *= factor
    # preallocated here so the result is a plain array owned by the caller
    sr = np.empty(tuple(out_shape), dtype=data.dtype)
    t0 = _time.perf_counter()
    try:
        yield from up.upscale_iter(
            data,
            spatial_axes=spatial,
            rgb=job.rgb,
            tile=job.tile,
            out=sr,
            **norm_kwargs,
        )
        run_info = dict(up.last_run)
    finally:
        up.close()  # drops the device copy of the model and releases cached GPU memory
        release_memory(device)
    elapsed = _time.perf_counter() - t0
    bic = None
    bic_elapsed = None
    if job.bicubic:
        yield engine.Progress(0, 0, 0, 0, "bicubic comparison")
        t1 = _time.perf_counter()
        bic = engine.upscale_bicubic(data, factor, spatial_axes=spatial, rgb=job.rgb)
        bic_elapsed = _time.perf_counter() - t1
    metrics = None
    if job.metrics:
        yield engine.Progress(0, 0, 0, 0, "self-check metrics")
        try:
            metrics, _ = self_check_images(
                representative_plane(data, rgb=job.rgb),
                loaded,
                rgb=job.rgb,
                device=job.device,
                precision=job.precision,
                tile=job.tile,
                normalization=job.normalization,
                percentiles=job.percentiles,
                self_ensemble=job.self_ensemble,
            )
        finally:
            release_memory(device)
    prov = loaded.provenance()
    if loaded.metadata.get("interpolated_from"):
        prov["interpolated_from"] = loaded.metadata["interpolated_from"]
    norm = dict(_describe_norm(norm_kwargs))
    if run_info.get("normalization"):
        norm["applied"] = jsonable(run_info["normalization"])
    result = UpscaleResult(
        job=job,
        sr=sr,
        bicubic=bic,
        model=prov,
        normalization=norm,
        device=str(run_info.get("device", device)),
        precision=str(run_info.get("precision", "")),
        elapsed_s=elapsed,
        bicubic_elapsed_s=bic_elapsed,
        metrics=metrics,
        factor=factor,
        tile=run_info.get("tile"),
        overlap=run_info.get("overlap"),
    )
    return result


def run_job(job: UpscaleJob, *, model=None) -> UpscaleResult:
    """:func:`run_upscale` to its end, in this thread (the demo and scripts; the widget drives
    the generator in a worker to show progress and cancel)."""
    gen = run_upscale(job, model=model)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _job_normalization(job: UpscaleJob, data) -> dict:
    dtype = np.dtype(data.dtype)
    lo = hi = None
    if job.normalization == "auto" and dtype.kind in "iu":
        lo, hi = _minmax(data)
    return normalization_kwargs(job.normalization, dtype, lo, hi, job.percentiles)


def _minmax(data) -> tuple[float, float]:
    if hasattr(data, "compute") and not isinstance(data, np.ndarray):  # dask
        import dask.array as da

        lo, hi = da.compute(data.min(), data.max())
        return float(lo), float(hi)
    arr = np.asarray(data)
    return float(arr.min()), float(arr.max())


def _describe_norm(kwargs: Mapping[str, Any]) -> dict:
    out = {"mode": kwargs.get("normalization")}
    if "percentiles" in kwargs:
        out["percentiles"] = list(kwargs["percentiles"])
    return out


def self_check_images_iter(
    plane,
    model,
    *,
    rgb: bool,
    y_channel: bool | None = None,
    border: int | None = None,
    data_range: float | None = None,
    device: str = "auto",
    precision: str = "auto",
    tile: int | None = None,
    normalization: str = "auto",
    percentiles: tuple[float, float] = (0.1, 99.9),
    self_ensemble: bool = False,
):
    """Generator form of :func:`self_check_images`: yields engine ``Progress`` per tile of the LR
    upscale (a widget shows it and can cancel by closing the generator), returns the same pair.

    Self-check of ``model`` on one plane, by the protocol of :func:`evaluate.evaluate`
    (LR = MATLAB bicubic x1/scale of the mod-cropped plane, rounded to its dtype; the model and
    bicubic upscale the LR; both are scored against the plane), also returning the images so
    error maps can be shown.

    Returns ``({"model": {...}, "bicubic": {...}, "convention": str}, {"hr", "lr", "model",
    "bicubic"} arrays)``. ``y_channel`` defaults to True for RGB (ignored for gray);
    ``border`` to the model's scale; ``data_range`` to :func:`metrics_data_range` of the plane.
    """
    from . import engine
    from .devices import release_memory
    from .evaluate import make_lr

    plane = np.asarray(plane)
    expected = 3 if rgb else 2
    if plane.ndim != expected:
        raise InputError(f"a self-check needs one {'RGB ' if rgb else ''}plane, got shape {plane.shape}")
    factor = int(model.scale)
    hr, lr = make_lr(plane, factor)
    y_channel = rgb if y_channel is None else (bool(y_channel) and rgb)
    if min(lr.shape[:2]) < 4:
        raise InputError(f"the plane {plane.shape[:2]} is too small for a x{factor} self-check")
    lo, hi = _minmax(lr) if normalization == "auto" else (None, None)
    norm = normalization_kwargs(normalization, lr.dtype, lo, hi, percentiles)
    up = engine.Upscaler(
        model, device=device, precision=precision, channels=3 if rgb else 1, self_ensemble=self_ensemble
    )
    try:
        sr = yield from up.upscale_iter(lr, rgb=rgb, tile=tile, **norm)  # default overlap: capped for small tiles
    finally:
        dev = up.device
        up.close()
        release_memory(dev)
    bic = engine.upscale_bicubic(lr, factor, rgb=rgb)
    dr = metrics_data_range(hr.dtype, hr) if data_range is None else float(data_range)
    b = factor if border is None else int(border)
    res = {
        "model": compare_arrays(sr, hr, rgb=rgb, data_range=dr, y_channel=y_channel, border=b),
        "bicubic": compare_arrays(bic, hr, rgb=rgb, data_range=dr, y_channel=y_channel, border=b),
    }
    conv = res["model"].pop("convention")
    res["bicubic"].pop("convention", None)
    res["convention"] = (
        f"self-check: LR = MATLAB bicubic x1/{factor} of the {'x'.join(str(n) for n in hr.shape[:2])} plane; {conv}"
    )
    return jsonable(res), {"hr": hr, "lr": lr, "model": sr, "bicubic": bic}


def self_check_images(plane, model, **kw) -> tuple[dict, dict]:
    """Self-check of ``model`` on one plane (see :func:`self_check_images_iter` for the protocol
    and arguments), run to its end in this thread."""
    from .progress import drain

    return drain(self_check_images_iter(plane, model, **kw))


def self_check_iter(
    plane,
    weights_id: str,
    *,
    rgb: bool,
    y_channel: bool | None = None,
    border: int | None = None,
    range_choice: str = "auto",
    error_maps: bool = False,
    registry=None,
):
    """Generator form of :func:`self_check` (yields ``Progress``: the metrics widget shows it and
    cancels between tiles); returns the metrics and, with ``error_maps``, ``{"model", "bicubic":
    |image - HR|}``."""
    from .devices import release_memory
    from .engine import Progress
    from .layer_metrics import data_range_choice, error_map

    yield Progress(0, 0, 0, 0, f"loading {weights_id}")
    model = load_job_model(weights_id, registry=registry)
    plane = np.asarray(plane)
    try:
        dr = None if range_choice == "auto" else data_range_choice(range_choice, plane.dtype, plane)
        res, images = yield from self_check_images_iter(
            plane, model, rgb=rgb, y_channel=y_channel, border=border, data_range=dr
        )
    finally:
        release_memory(None)
    maps = {k: error_map(images[k], images["hr"], rgb=rgb) for k in ("model", "bicubic")} if error_maps else {}
    return res, maps


def self_check(
    plane,
    weights_id: str,
    *,
    rgb: bool,
    y_channel: bool | None = None,
    border: int | None = None,
    range_choice: str = "auto",
    error_maps: bool = False,
    registry=None,
) -> tuple[dict, dict]:
    """:func:`self_check_images` of one plane with registry weights ``weights_id``; returns the
    metrics and, with ``error_maps``, ``{"model", "bicubic": |image - HR|}``."""
    from .progress import drain

    return drain(
        self_check_iter(
            plane,
            weights_id,
            rgb=rgb,
            y_channel=y_channel,
            border=border,
            range_choice=range_choice,
            error_maps=error_maps,
            registry=registry,
        )
    )
