"""The metrics self-check: how well the model recovers the data from its own bicubic LR.

Protocol of :func:`napari_rrim_sr.quality.evaluate.evaluate`: LR = MATLAB bicubic x1/scale of the
mod-cropped plane (rounded to its dtype); the model (normalised by the planner's rules) and
bicubic upscale the LR; both are scored against the plane. Used by the metrics widget and by
``metrics=True`` requests. (Moved here from ``job.py``.)
"""

from __future__ import annotations

import numpy as np

from napari_rrim_sr.engine.progress import Progress, drain
from napari_rrim_sr.errors import InputError
from napari_rrim_sr.jsonable import jsonable

__all__ = ["self_check", "self_check_images", "self_check_images_iter", "self_check_iter"]


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
    """Generator (yields ``Progress`` per tile; closing it cancels) returning ``({"model",
    "bicubic", "convention"}, {"hr", "lr", "model", "bicubic"} arrays)`` for one plane.
    ``y_channel`` defaults to True for RGB; ``border`` to the scale; ``data_range`` to
    :func:`~napari_rrim_sr.quality.layer_metrics.metrics_data_range` of the plane."""
    from napari_rrim_sr.engine import api as engine
    from napari_rrim_sr.engine.devices import release_memory
    from napari_rrim_sr.pipeline.plan import resolve_normalization
    from napari_rrim_sr.quality.evaluate import make_lr
    from napari_rrim_sr.quality.layer_metrics import compare_arrays, metrics_data_range

    plane = np.asarray(plane)
    expected = 3 if rgb else 2
    if plane.ndim != expected:
        raise InputError(f"a self-check needs one {'RGB ' if rgb else ''}plane, got shape {plane.shape}")
    factor = int(model.scale)
    hr, lr = make_lr(plane, factor)
    y_channel = rgb if y_channel is None else (bool(y_channel) and rgb)
    if min(lr.shape[:2]) < 4:
        raise InputError(f"the plane {plane.shape[:2]} is too small for a x{factor} self-check")
    norm, _why = resolve_normalization(lr, model, choice=normalization, percentiles=percentiles, rgb=rgb)
    up = engine.Upscaler(
        model, device=device, precision=precision, channels=3 if rgb else 1, self_ensemble=self_ensemble
    )
    try:
        sr = yield from up.upscale_iter(lr, rgb=rgb, tile=tile, normalization=norm)
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
    """:func:`self_check_images_iter` run to its end in this thread."""
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
    """Generator form of :func:`self_check` (the metrics widget shows its progress and cancels)."""
    from napari_rrim_sr.engine.devices import release_memory
    from napari_rrim_sr.pipeline.plan import load_model_for
    from napari_rrim_sr.quality.layer_metrics import data_range_choice, error_map

    yield Progress(0, 0, 0, 0, f"loading {weights_id}")
    model = load_model_for(weights_id, channels=3 if rgb else 1, registry=registry)
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


def self_check(plane, weights_id: str, **kw) -> tuple[dict, dict]:
    """The self-check of one plane with registry weights ``weights_id`` (see :func:`self_check_iter`)."""
    return drain(self_check_iter(plane, weights_id, **kw))
