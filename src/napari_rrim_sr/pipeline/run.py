"""The runner: a :class:`~.plan.Plan` executed for every output kind, with progress and cancel.

:func:`run_iter` is a generator of :class:`napari_rrim_sr.engine.progress.Progress` events that returns
a :class:`Result` (a widget drives it in a worker; closing it cancels between tiles or chunks);
:func:`run` drains it (:func:`napari_rrim_sr.engine.progress.drain`, the one loop that does so).
Memory and files: the engine on the planned data, each part with its own model and the
normalisation computed once over the whole data. Store: :mod:`napari_rrim_sr.pipeline.chunked`'s runner
(resume, overwrite, progress, cancel). Then every result is checked against its input
(:mod:`.check`) and described by the one provenance builder (:mod:`.provenance`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from napari_rrim_sr.engine.progress import Progress, drain
from napari_rrim_sr.errors import Cancelled, InputError
from napari_rrim_sr.pipeline.check import check_result, check_warnings, model_zero_offset
from napari_rrim_sr.pipeline.plan import Plan, engine_kwargs
from napari_rrim_sr.pipeline.provenance import build_provenance

__all__ = ["Result", "run", "run_iter"]


@dataclass
class Result:
    """What a run produced. ``data``: the result (numpy; a lazy dask array of level 0 for a
    store); ``bicubic``: the bicubic reference (when asked); ``check``: the result-vs-input
    check (:func:`~.check.check_result`); ``warnings``: lines to show; ``provenance``: the
    record of the model result (``bicubic_provenance`` of the bicubic one); ``files``: paths
    written; ``store``: the OME-Zarr path; ``summary``: the store runner's summary."""

    plan: Plan
    data: Any
    bicubic: np.ndarray | None = None
    check: dict | None = None
    warnings: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    bicubic_provenance: dict | None = None
    device: str = ""
    precision: str = ""
    tile: int | None = None
    overlap: int | None = None
    elapsed_s: float = 0.0
    bicubic_elapsed_s: float | None = None
    metrics: dict | None = None
    zero_offset: dict | None = None
    engine: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    store: Path | None = None
    summary: dict | None = None

    @property
    def scale(self) -> int:
        return self.plan.scale

    def line(self) -> str:
        """One line for the CLI and the widget: model, device, precision and the check."""
        c = self.check or {}
        chk = ""
        if c:
            som = c.get("shift_of_mean")
            chk = (
                f"; check: mean {c['mean_in']:.4g} -> {c['mean_out']:.4g}"
                + (f" ({100 * som:+.1f} %)" if som is not None else "")
                + f", PSNR {c['psnr']:.1f} dB vs input"
            )
        return f"{self.plan.model.id}, {self.device}, {self.precision}{chk}"

    def layer_kwargs(self, kind: str = "rrim", *, extra: Mapping[str, Any] | None = None) -> dict:
        """``viewer.add_image`` keyword arguments of the ``"rrim"`` or ``"bicubic"`` result, the
        provenance record in ``metadata["napari_rrim_sr"]``."""
        from napari_rrim_sr.io.geometry import result_layer_kwargs, source_from_data

        src = self.plan.request.source
        layer = src.layer
        if layer is None:
            layer = source_from_data(
                src.data,
                {
                    "name": src.name,
                    "rgb": self.plan.rgb,
                    "scale": src.scale,
                    "translate": src.translate,
                    "metadata": src.metadata,
                },
            )
        record = dict(self.provenance if kind == "rrim" else (self.bicubic_provenance or {}))
        record.update(extra or {})
        data = self.data if kind == "rrim" else self.bicubic
        return result_layer_kwargs(
            layer, data, kind=kind, factor=self.scale, slice_index=self.plan.slice_index, record=record
        )


def _likely_cause(plan: Plan) -> str:
    n = plan.parts[0].normalization
    dt = n.dtype
    if n.mode == "dtype" and dt.kind in "iu" and dt.itemsize > 1:
        return (
            "dtype normalisation of data that use a small part of their dtype range: the model sees values "
            "far below its training range; use normalisation 'auto' or 'range'"
        )
    if plan.precision in ("bf16", "fp16"):
        return f"{plan.precision} precision on data with more than 8 significant bits; use fp32"
    return (
        f"the model {plan.model.id} does not fit this data ({plan.parts[0].choice.get('reason')}); "
        "try the other model or another normalisation"
    )


def run(plan: Plan, progress=None, cancel=None):
    """Execute ``plan`` in this thread; ``progress(Progress)`` after every step, ``cancel`` (an
    Event or callable) checked between steps (raises :class:`~napari_rrim_sr.errors.Cancelled`)."""
    return drain(run_iter(plan), progress, cancel)


def run_iter(plan: Plan, cancel=None):
    """Generator: yields :class:`Progress`, returns a :class:`Result`. Closing it cancels (no
    partial result is returned; a store keeps its finished chunks for ``resume``)."""
    gen = _store_iter(plan) if plan.output_kind == "store" else _memory_iter(plan)
    if cancel is None:
        return (yield from gen)
    is_set = cancel.is_set if hasattr(cancel, "is_set") else cancel
    try:
        while True:
            if is_set():
                raise Cancelled("upscaling cancelled; no result was produced")
            try:
                ev = next(gen)
            except StopIteration as stop:
                return stop.value
            yield ev
    finally:
        gen.close()


def _zero_offsets(plan: Plan, device: str, precision: str) -> dict:
    """The model's response to black (0..1 units and data units), measured once per model."""
    out = []
    for p in plan.parts:
        off = model_zero_offset(p.model, channels=3 if p.rgb else 1, device=device, precision=precision)
        out.append(
            {
                "model": p.model.id,
                "max_0_1": round(off, 8),
                "max_data_units": round(off * (p.normalization.hi - p.normalization.lo or 1.0), 6),
                "constant_input_kept": bool(p.constant),
            }
        )
    rec = dict(out[0]) if len(out) == 1 else {"channels": out}
    rec["policy"] = (
        "not subtracted (a per-model bias, not a property of the data); a constant input is returned as its constant"
    )
    return rec


def _provenance(plan: Plan, kind: str, *, res: Result, extra=None) -> dict:
    req = plan.request
    return build_provenance(
        kind=kind,
        source=plan.source_record,
        scale=plan.scale,
        model=_model_record(plan),
        model_choice=plan.choice_record(),
        normalization=plan.normalization_record(),
        precision=res.precision,
        precision_reason=plan.precision_reason,
        backend=(res.engine or {}).get("backend", req.backend),  # what ran, not what was asked
        device=res.device,
        tile=res.tile,
        overlap=res.overlap,
        self_ensemble=req.self_ensemble,
        engine=res.engine,
        elapsed_s=res.elapsed_s if kind == "rrim" else res.bicubic_elapsed_s,
        slice_index=plan.slice_index,
        alpha=req.alpha if req.pair else None,
        check=res.check if kind == "rrim" else None,
        warnings=res.warnings if kind == "rrim" else [],
        zero_offset=res.zero_offset,
        metrics=res.metrics,
        plan=plan.explain(),
        extra=extra,
    )


def _model_record(plan: Plan) -> dict:
    m = plan.model
    rec = m.provenance()
    if m.metadata.get("interpolated_from"):
        rec["interpolated_from"] = m.metadata["interpolated_from"]
    return rec


def _protect(plan: Plan) -> list[Path]:
    src = plan.request.source
    out = [Path(p) for p in plan.output.protect]
    if src.path is not None:
        out.append(Path(src.path))
    for p in plan.parts:
        if p.model.path is not None:
            out.append(Path(p.model.path))
    return out


def _memory_iter(plan: Plan):
    from napari_rrim_sr.engine.api import Upscaler, upscale_bicubic
    from napari_rrim_sr.engine.devices import release_memory

    req = plan.request
    data = plan.data
    sr = np.empty(plan.out_shape, dtype=data.dtype)
    ekw = engine_kwargs(req, plan.precision)
    res = Result(plan=plan, data=sr)
    t0 = time.perf_counter()
    for p in plan.parts:
        piece = data if p.index is None else data[p.index]
        target = sr if p.out_index is None else sr[p.out_index]
        if p.constant:
            target[...] = np.asarray(p.normalization.lo).astype(data.dtype)
            yield Progress(1, 1, 1, 1, f"{p.label}constant input")
            continue
        up = Upscaler(p.model, channels=3 if p.rgb else 1, **ekw)
        dev = up.device
        try:
            gen = up.upscale_iter(
                piece,
                spatial_axes=p.spatial_axes,
                rgb=p.rgb,
                tile=req.tile,
                overlap=req.overlap,
                normalization=p.normalization,
                out=target,
            )
            if p is plan.parts[0]:
                yield from gen
            else:  # one run: only its first part says "starting" (a widget counts runs by it)
                yield from _relabel(gen, p.label)
            res.engine = dict(up.last_run)
        finally:
            up.close()
            release_memory(dev)
    res.elapsed_s = time.perf_counter() - t0
    res.device = str(res.engine.get("device", req.device))
    res.precision = str(res.engine.get("precision", plan.precision))
    res.tile, res.overlap = res.engine.get("tile"), res.engine.get("overlap")
    if not res.engine:  # constant input only: the model did not run
        res.device, res.precision = "none (constant input)", plan.precision
    if req.bicubic:
        yield Progress(0, 0, 0, 0, "bicubic reference")
        t1 = time.perf_counter()
        res.bicubic = upscale_bicubic(data, plan.scale, spatial_axes=plan.spatial_axes, rgb=plan.rgb)
        res.bicubic_elapsed_s = time.perf_counter() - t1
    yield from _finish(plan, res, sr)
    if plan.output_kind == "files":
        _write_files(plan, res)
    return res


def _relabel(gen, label: str):
    """``gen``'s events with ``label`` before their message; returns its value."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        yield Progress(ev.tiles_done, ev.tiles_total, ev.slices_done, ev.slices_total, f"{label}{ev.message}")


def _finish(plan: Plan, res: Result, sr):
    """Check, zero offset, metrics, provenance (shared by memory, files and store)."""
    req = plan.request
    if req.check:
        yield Progress(0, 0, 0, 0, "checking the result against the input")
        res.check = check_result(plan.data, sr, scale=plan.scale, spatial_axes=plan.spatial_axes, rgb=plan.rgb)
        res.warnings = check_warnings(res.check, likely_cause=_likely_cause(plan))
    dev = req.device if res.device.startswith("none") else res.device
    res.zero_offset = _zero_offsets(plan, dev, plan.precision)
    if req.metrics:
        from napari_rrim_sr.io.geometry import representative_plane
        from napari_rrim_sr.pipeline.selfcheck import self_check_images

        yield Progress(0, 0, 0, 0, "self-check metrics")
        # drained here: its own "starting" would read as the next run of a batch
        res.metrics, _ = self_check_images(
            representative_plane(plan.data, spatial_axes=plan.spatial_axes, rgb=plan.rgb),
            plan.model,
            rgb=plan.rgb,
            device=req.device,
            precision=plan.precision,
            tile=req.tile,
            normalization=req.normalization,
            percentiles=req.percentiles,
            self_ensemble=req.self_ensemble,
        )
    res.provenance = _provenance(plan, "rrim", res=res, extra=plan.output.extra or None)
    if res.bicubic is not None:
        res.bicubic_provenance = _provenance(plan, "bicubic", res=res, extra=plan.output.extra or None)


def _write_files(plan: Plan, res: Result) -> None:
    from napari_rrim_sr.io.images import write_image

    out, src = plan.output, plan.request.source
    protect = _protect(plan)
    like = dict(src.info or {})
    targets = [(out.path, res.data, res.provenance)]
    if res.bicubic is not None:
        if out.bicubic_path is None:
            raise InputError("the bicubic reference needs a bicubic output path")
        targets.append((out.bicubic_path, res.bicubic, res.bicubic_provenance))
    for path, arr, prov in targets:
        res.files.append(
            write_image(
                path,
                arr,
                like=like,
                metadata=prov,
                scale=plan.scale,
                overwrite=out.overwrite,
                axes=src.axes,
                rgb=plan.rgb,
                protect=protect,
            )
        )


def _store_iter(plan: Plan):
    import dask.array as da
    import zarr

    from napari_rrim_sr.io.geometry import META_KEY
    from napari_rrim_sr.pipeline import chunked

    out = plan.output
    job, zsrc = plan.store_job, plan.store_source
    from napari_rrim_sr.engine.devices import resolve_device

    # the device the workers resolve "auto" to (the CLI line and provenance name it, not "auto")
    res = Result(plan=plan, data=None, device=str(resolve_device(plan.request.device)), precision=plan.precision)
    res.engine = dict(job.engine_kw)
    res.tile, res.overlap = plan.request.tile, plan.request.overlap
    t0 = time.perf_counter()
    prov0 = _provenance(plan, "rrim", res=res)
    summary = yield from chunked.run_job_iter(
        job,
        zsrc,
        client=out.client,
        workers=out.workers,
        overwrite=out.overwrite,
        resume=out.resume,
        command=out.command,
        provenance=prov0,
        provenance_extra=out.extra or None,
        protect=[p for p in _protect(plan) if zsrc.kind == "object" or Path(p) != Path(zsrc.path)],
    )
    res.elapsed_s = time.perf_counter() - t0
    res.summary, res.store = summary, Path(job.out_path)
    level0 = zarr.open_array(str(Path(job.out_path) / chunked.LEVEL0), mode="r")
    yield from _finish(plan, res, level0)
    group = zarr.open_group(str(job.out_path), mode="r+")
    rec = dict(group.attrs.get(META_KEY) or {})
    fresh = {k: v for k, v in res.provenance.items() if k not in ("created",)}
    rec.update(fresh)
    group.attrs[META_KEY] = rec
    res.provenance = rec
    res.data = da.from_zarr(str(Path(job.out_path) / chunked.LEVEL0))
    return res
