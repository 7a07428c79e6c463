"""SRVGGNetCompact: Real-ESRGAN's small VGG-style generator (key layout ``body.N``).

Paper: Wang et al., "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic
Data", ICCV Workshops 2021 (the compact model arrived with the v0.2.x releases). Checkpoints:
``realesr-general-x4v3.pth`` and ``realesr-general-wdn-x4v3.pth`` (64 features, 32 convs),
``realesr-animevideov3.pth`` (64 features, 16 convs), and community 1x-4x "Compact" models.

``body`` = conv(in, nf), PReLU, ``num_conv`` × (conv(nf, nf), PReLU), conv(nf, out·scale²); the
output is pixel-shuffled and the nearest-upsampled input is added (the net learns a residual).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from napari_rrim_sr.models.common import shape_of, warn_unused


class SRVGGNetCompact(nn.Module):
    """``(N, C, H, W)`` -> ``(N, C, scale·H, scale·W)``; ``in_channels == out_channels``."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_conv: int = 16,
        **other: Any,
    ):
        super().__init__()
        warn_unused(type(self).__name__, other)
        self.in_channels, self.out_channels, self.scale = int(in_channels), int(out_channels), int(scale)
        self.num_feat, self.num_conv = int(num_feat), int(num_conv)
        if self.in_channels != self.out_channels:
            raise ValueError("SRVGGNetCompact adds its upsampled input: in_channels must equal out_channels")
        nf = self.num_feat
        layers: list[nn.Module] = [nn.Conv2d(self.in_channels, nf, 3, 1, 1), nn.PReLU(num_parameters=nf)]
        for _ in range(self.num_conv):
            layers += [nn.Conv2d(nf, nf, 3, 1, 1), nn.PReLU(num_parameters=nf)]
        layers.append(nn.Conv2d(nf, self.out_channels * self.scale**2, 3, 1, 1))
        self.body = nn.Sequential(*layers)
        self.upsampler = nn.PixelShuffle(self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.upsampler(self.body(x))
        return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")

    def hparams(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "scale": self.scale,
            "num_feat": self.num_feat,
            "num_conv": self.num_conv,
        }


_BODY = re.compile(r"body\.(\d+)\.weight$")


def detect(state_dict: Mapping[str, Any]) -> dict | None:
    """Hyper-parameters of an SRVGGNetCompact ``state_dict`` (PReLU activations), or None."""
    first, act = shape_of(state_dict, "body.0.weight"), shape_of(state_dict, "body.1.weight")
    if first is None or act is None or len(first) != 4 or len(act) != 1:
        return None
    if any(not (k.startswith("body.") or k.startswith("upsampler.")) for k in state_dict):
        return None
    idx = sorted(int(m.group(1)) for k in state_dict if (m := _BODY.match(k)))
    last = idx[-1]
    if last % 2 or idx != list(range(last + 1)):
        return None
    in_ch, nf = int(first[1]), int(first[0])
    last_out = int(state_dict[f"body.{last}.weight"].shape[0])
    scale = math.isqrt(last_out // in_ch) if last_out % in_ch == 0 else 0
    if scale < 1 or scale * scale * in_ch != last_out:
        return None
    return {"in_channels": in_ch, "out_channels": in_ch, "scale": scale, "num_feat": nf, "num_conv": (last - 2) // 2}


__all__ = ["SRVGGNetCompact", "detect"]
