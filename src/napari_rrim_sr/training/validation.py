"""Validation during training: the evaluation convention of ``napari-rrim-sr evaluate``.

LR = :func:`napari_rrim_sr.quality.evaluate.make_lr` of the (mod-cropped) HR image in its integer
storage (MATLAB bicubic x1/scale, rounded half away from zero as MATLAB's cast does), SR through
the product's engine in fp32, scores by :func:`napari_rrim_sr.quality.metrics.compare` (Y channel for RGB,
a ``scale``-px border, data range 255): the numbers a run logs are the numbers ``evaluate`` gives
for its exported weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_rrim_sr.safe_write import atomic_write

__all__ = ["infer", "save_sample_grid", "val_convention", "validate_images"]


def val_convention(cfg) -> str:
    what = "Y channel (BT.601)" if cfg.channels == 3 else "gray"
    return (
        f"x{cfg.scale}, LR = MATLAB-style bicubic of the mod-{cfg.scale} crop, "
        f"{what}, {cfg.scale}-px border, data range 255"
        + (f", first {cfg.val_limit} images" if cfg.val_limit else "")
        + (f", centre crops <= {cfg.val_crop} px" if cfg.val_crop else "")
    )


def infer(net: nn.Module, lr01: np.ndarray, cfg, device) -> np.ndarray:
    """SR of an (h, w, C) 0..1 image, fp32, through the engine (tiling as in the product)."""
    try:
        from napari_rrim_sr.engine.api import upscale
    except ImportError:
        upscale = None
    if upscale is not None:
        from napari_rrim_sr.registry.loading import LoadedModel

        lm = LoadedModel.from_module(net, cfg.backbone, cfg.hparams)
        kwargs = {"device": device, "precision": "fp32"}
        if cfg.val_tile:
            kwargs["tile"] = cfg.val_tile
        img = lm_input = lr01.astype(np.float32)
        if img.shape[2] == 1:
            lm_input = img[..., 0]
        out = upscale(lm_input, lm, **kwargs)
        out = np.asarray(getattr(out, "image", out), dtype=np.float64)
        return out[..., None] if out.ndim == 2 else out
    with torch.no_grad():
        x = torch.from_numpy(lr01.transpose(2, 0, 1)[None].astype(np.float32)).to(device)
        y = net(x).float().clamp_(0, 1)
    return y[0].permute(1, 2, 0).cpu().numpy().astype(np.float64)


def _lr_of(hr: np.ndarray, bits: int, scale: int) -> np.ndarray:
    """evaluate's LR of an HR image held as float 0..255 (``bits`` 8 or 16 storage), as 0..255."""
    from napari_rrim_sr.quality.evaluate import make_lr

    levels = 255.0 if bits == 8 else 65535.0
    dtype = np.uint8 if bits == 8 else np.uint16
    stored = np.clip(np.floor(hr * (levels / 255.0) + 0.5), 0, levels).astype(dtype)
    _, lr = make_lr(stored, scale)
    return lr.astype(np.float64) * (255.0 / levels)


def _scores(compare, sr: np.ndarray, hr: np.ndarray, scale: int) -> dict:
    y = sr.shape[2] == 3
    a, b = (sr, hr) if y else (sr[..., 0], hr[..., 0])
    m = compare(a, b, data_range=255.0, y_channel=y, border=scale)
    return {k: float(m[k]) for k in ("psnr", "ssim", "fsim") if k in m}


@torch.no_grad()
def validate_images(net: nn.Module, images, cfg, device, *, bicubic: dict | None = None):
    """Mean scores of ``net`` over the validation ``images`` (``ValImage``: ``hr`` float 0..255,
    ``bits``). Returns ``(mean, bicubic_mean, first)``: bicubic's scores are computed once
    (``bicubic`` given: reused), ``first`` is ``(lr, sr, hr, scores)`` of the first image for
    the sample grid (None without images)."""
    from napari_rrim_sr.engine.bicubic import bicubic_upscale
    from napari_rrim_sr.quality.metrics import compare

    s = cfg.scale
    was_training = net.training
    net.eval()
    rows, bic_rows = [], []
    first = None
    try:
        for k, v in enumerate(images):
            lr = _lr_of(v.hr, v.bits, s)
            sr = np.clip(infer(net, lr / 255.0, cfg, device) * 255.0, 0, 255)
            if v.bits == 8:
                sr = np.floor(sr + 0.5)
            hr = v.hr
            rows.append(_scores(compare, sr, hr, s))
            if bicubic is None:
                bic = np.clip(bicubic_upscale(lr, s, channel_axis=-1), 0, 255)
                if v.bits == 8:
                    bic = np.floor(bic + 0.5)
                bic_rows.append(_scores(compare, bic, hr, s))
            if k == 0:
                first = (lr, sr, hr, rows[-1])
    finally:
        if was_training:
            net.train()
    mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]} if rows else {}
    if bic_rows:
        bicubic = {key: float(np.mean([r[key] for r in bic_rows])) for key in bic_rows[0]}
    return mean, bicubic, first


def save_sample_grid(lr: np.ndarray, sr: np.ndarray, hr: np.ndarray, m: dict, *, scale: int, path: Path) -> Path:
    """LR (nearest) | bicubic | SR | HR of a central crop, labelled, as a PNG at ``path``."""
    from PIL import Image, ImageDraw

    from napari_rrim_sr.engine.bicubic import bicubic_upscale

    s = scale
    h, w = hr.shape[:2]
    side = min(h, w, 192)
    side -= side % s
    y0 = ((h - side) // 2) // s * s
    x0 = ((w - side) // 2) // s * s
    bic = np.clip(bicubic_upscale(lr, s, channel_axis=-1), 0, 255)
    lr_crop = lr[y0 // s : (y0 + side) // s, x0 // s : (x0 + side) // s]
    lr_near = np.repeat(np.repeat(lr_crop, s, axis=0), s, axis=1)
    panels = [
        lr_near,
        bic[y0 : y0 + side, x0 : x0 + side],
        sr[y0 : y0 + side, x0 : x0 + side],
        hr[y0 : y0 + side, x0 : x0 + side],
    ]
    labels = ["LR (nearest)", "bicubic", f"SR {m.get('psnr', 0):.2f} dB", "HR"]
    gap, head = 4, 14
    c = hr.shape[2]
    canvas = np.full((side + head, 4 * side + 3 * gap, c), 255, np.uint8)
    for i, p in enumerate(panels):
        canvas[head:, i * (side + gap) : i * (side + gap) + side] = np.clip(np.floor(p + 0.5), 0, 255).astype(np.uint8)
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(labels):
        draw.text((i * (side + gap) + 2, 1), text, fill=0)
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), overwrite=True)
