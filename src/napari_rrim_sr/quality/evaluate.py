"""Evaluate a model against bicubic under the standard SR convention (see docs/RRIM.md).

Protocol, stated in every result's ``"convention"``: HR is cropped to a multiple of the
scale; LR = MATLAB-style bicubic x1/scale with antialiasing of that crop, rounded to the HR's
integer dtype (as benchmark LR PNGs are stored); SR = the model on LR (engine defaults:
"dtype" normalisation), bicubic = MATLAB ``imresize`` x scale; metrics on the Y channel
(BT.601) for RGB, on the image itself otherwise, with ``scale`` pixels shaved from each border.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np

from napari_rrim_sr.errors import InputError

METRIC_KEYS = ("psnr", "ssim", "fsim", "rmse")
#: engine keywords that configure the Upscaler itself, with evaluation's defaults (fp32, so that
#: scores do not depend on the hardware's bf16 support)
_UPSCALER_DEFAULTS = {"device": "auto", "precision": "fp32", "self_ensemble": False}


def _split_engine_kw(kw: dict) -> tuple[dict, dict]:
    """``(Upscaler constructor keywords, keywords for upscale())`` from one engine_kw dict."""
    up_kw = {k: kw.get(k, default) for k, default in _UPSCALER_DEFAULTS.items()}
    return up_kw, {k: v for k, v in kw.items() if k not in _UPSCALER_DEFAULTS}


def make_lr(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """``(hr_cropped, lr)``: the mod-``scale`` crop and its MATLAB bicubic x1/scale, in HR's dtype
    (integers rounded half away from zero and clipped, as MATLAB's uint8 cast does)."""
    from napari_rrim_sr.engine.bicubic import bicubic_downscale, mod_crop
    from napari_rrim_sr.engine.normalize import clip_limits

    rgb = hr.ndim == 3
    ch_ax = -1 if rgb else None
    hr_c = mod_crop(hr, scale, channel_axis=ch_ax)
    lr = bicubic_downscale(hr_c, scale, channel_axis=ch_ax)
    if hr.dtype.kind in "iu":
        lo, hi = clip_limits(hr.dtype)
        lr = np.clip(np.floor(lr + 0.5), lo, hi).astype(hr.dtype)
    else:
        lr = lr.astype(hr.dtype)
    return np.asarray(hr_c), lr


def evaluate(
    hr, model, *, data_range=None, y_channel=None, border=None, scale=None, upscaler=None, **engine_kw
) -> dict:
    """Model vs bicubic on one HR image (2-D gray or (H, W, 3) RGB).

    Returns ``{"model": {metrics}, "bicubic": {metrics}, "convention": str, "shape": ...}``.
    ``data_range`` defaults to the dtype's range (required for floats); ``y_channel`` defaults
    to True for RGB; ``border`` to the scale. ``engine_kw`` go to the engine (tile, device...);
    precision defaults to fp32 so that scores do not depend on the hardware's bf16 support.
    """
    from napari_rrim_sr.engine.api import Upscaler, upscale_bicubic
    from napari_rrim_sr.quality.metrics import compare, data_range_for

    hr = np.asarray(hr)
    if hr.ndim not in (2, 3) or (hr.ndim == 3 and hr.shape[-1] != 3):
        raise InputError(f"evaluate needs a gray (H, W) or RGB (H, W, 3) image, got shape {hr.shape}")
    rgb = hr.ndim == 3
    up_kw, engine_kw = _split_engine_kw(engine_kw)
    up = upscaler or Upscaler(model, channels=3 if rgb else 1, **up_kw)
    s = int(scale or up.scale)
    if s != up.scale:
        raise InputError(f"scale {s} differs from the model's scale {up.scale}")
    if min(hr.shape[:2]) < 2 * s:
        raise InputError(f"HR image {hr.shape[:2]} is too small for x{s} evaluation")
    hr_c, lr = make_lr(hr, s)
    sr = up.upscale(lr, rgb=rgb, **engine_kw)
    bic = upscale_bicubic(lr, s, rgb=rgb)
    r = float(data_range) if data_range is not None else data_range_for(hr.dtype)
    y = rgb if y_channel is None else bool(y_channel)
    b = s if border is None else int(border)
    m = compare(sr, hr_c, data_range=r, y_channel=y, border=b)
    bc = compare(bic, hr_c, data_range=r, y_channel=y, border=b)
    conv = (
        f"LR = MATLAB bicubic x1/{s} (antialiased) of the HR cropped to a multiple of {s}, "
        f"rounded to {hr.dtype}; " + m.pop("convention")
    )
    bc.pop("convention", None)
    return {
        "model": m,
        "bicubic": bc,
        "convention": conv,
        "shape": tuple(hr_c.shape),
        "model_id": up.model.id,
        "precision": up.precision,
        "self_ensemble": up.self_ensemble,
    }


def image_files(paths: Iterable) -> list[Path]:
    """The image files named by ``paths`` (files, or folders of PNG/JPEG/TIFF, sorted): what an
    evaluation reads, and so what its report may never replace."""
    from napari_rrim_sr.io.images import SUFFIXES

    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in SUFFIXES and f.is_file())
        else:
            files.append(p)
    if not files:
        raise InputError("no images to evaluate")
    return files


def evaluate_folder(paths: Iterable, model, *, progress=None, **kw) -> dict:
    """Evaluate every image in ``paths`` (files or folders of PNG/JPEG/TIFF) with one model.

    Returns ``{"rows": [{"image", "model", "bicubic"}...], "mean": {"model", "bicubic"},
    "convention", "model_id", "provenance", "self_ensemble"}``; ``provenance`` names the weights
    (path, file and tensors sha256) the numbers belong to. Gray and RGB images may be mixed (the
    model runs per channel or replicated as the engine's channel rules say); means are over all
    images.
    """
    from napari_rrim_sr.engine.api import Upscaler
    from napari_rrim_sr.io.images import read_image

    files = image_files(paths)
    up_kw, ekw = _split_engine_kw(kw)
    ups: dict[int, Upscaler] = {}
    rows = []
    convention = ""
    try:
        for i, f in enumerate(files):
            hr, info = read_image(f)
            if hr.ndim == 3 and hr.shape[-1] == 4:
                hr = hr[..., :3]  # alpha is not part of the evaluation
            ch = 3 if hr.ndim == 3 else 1
            if ch not in ups:
                ups[ch] = Upscaler(model, channels=ch, **up_kw)
            try:
                res = evaluate(hr, None, upscaler=ups[ch], **ekw)
            except InputError as exc:  # too small, wrong shape...: say which file
                raise InputError(f"{f}: {exc}") from None
            convention = res["convention"]
            rows.append({"image": str(f), "shape": res["shape"], "model": res["model"], "bicubic": res["bicubic"]})
            if progress is not None:
                progress(i + 1, len(files), f)
        model = next(iter(ups.values())).model
    finally:
        for up in ups.values():
            up.close()
    mean = {which: {k: _mean([r[which][k] for r in rows]) for k in METRIC_KEYS} for which in ("model", "bicubic")}
    return {
        "rows": rows,
        "mean": mean,
        "convention": convention,
        "model_id": model.id,
        "provenance": model.provenance(),
        "self_ensemble": bool(up_kw["self_ensemble"]),
    }


def _mean(values) -> float:
    vals = [float(v) for v in values]
    if any(math.isinf(v) for v in vals):
        return float("inf")
    return float(np.mean(vals))
