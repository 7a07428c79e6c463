"""Synthetic degradations that turn an HR patch into a realistic LR: blur, noise (Gaussian,
Poisson shot noise, read noise), aliasing (no antialiasing filter) and JPEG. The dataset draws
their parameters from a seeded generator, so a recipe replays exactly."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Degradations:
    """Ranges and probabilities of the on-the-fly LR degradations (see TrainConfig)."""

    blur_sigma: tuple[float, float] = (0.0, 0.0)
    blur_prob: float = 1.0
    alias_prob: float = 0.0
    noise_sigma: tuple[float, float] = (0.0, 0.0)  # 0..255 units
    noise_prob: float = 1.0
    poisson_peak: tuple[float, float] = (0.0, 0.0)
    poisson_prob: float = 1.0
    jpeg_quality: tuple[int, int] = (0, 0)
    jpeg_prob: float = 1.0
    quantize: bool = True

    @classmethod
    def from_config(cls, cfg) -> "Degradations":
        return cls(
            blur_sigma=tuple(cfg.blur_sigma),
            blur_prob=cfg.blur_prob,
            alias_prob=cfg.alias_prob,
            noise_sigma=tuple(cfg.noise_sigma),
            noise_prob=cfg.noise_prob,
            poisson_peak=tuple(cfg.poisson_peak),
            poisson_prob=cfg.poisson_prob,
            jpeg_quality=tuple(int(q) for q in cfg.jpeg_quality),
            jpeg_prob=cfg.jpeg_prob,
            quantize=cfg.quantize_lr,
        )

    @property
    def blur(self) -> bool:
        return self.blur_sigma[1] > 0 and self.blur_prob > 0

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def gaussian_blur(t, sigma: float):
    """Separable Gaussian blur of a (C, H, W) tensor, reflect padding (HR pixels)."""
    import torch
    import torch.nn.functional as F

    if sigma <= 0:
        return t
    r = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-r, r + 1, dtype=t.dtype)
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    k = k / k.sum()
    c = t.shape[0]
    y = t[None]
    mode = "reflect" if min(t.shape[-2:]) > r else "replicate"
    y = F.pad(y, (r, r, 0, 0), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, r, r), mode=mode)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def jpeg_roundtrip(t, quality: int):
    """JPEG-compress a (C, H, W) tensor in 0..1 (8-bit) and decode it again."""
    import torch
    from PIL import Image

    a = (t.clamp(0, 1) * 255.0).round().to(torch.uint8)
    arr = a[0].numpy() if a.shape[0] == 1 else a.permute(1, 2, 0).contiguous().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.asarray(im.convert("L" if a.shape[0] == 1 else "RGB"), dtype=np.float32) / 255.0
    out = torch.from_numpy(out.copy())
    return out[None] if out.ndim == 2 else out.permute(2, 0, 1).contiguous()
