"""SPAN: Swift Parameter-free Attention Network (NTIRE 2024 efficient SR challenge winner).

Paper: Wan et al., "Swift Parameter-free Attention Network for Efficient Super-Resolution",
CVPR Workshops 2024. Checkpoints: ``spanx4_ch48.pth`` and ``spanx2_ch48.pth`` (the
hongyuanyu/SPAN release) and community 1x-4x SPAN models (OpenModelDB).

Each ``Conv3XC`` stores both its training form (``sk`` 1×1 skip plus the ``conv`` 1×1-3×3-1×1
chain) and the re-parameterised 3×3 ``eval_conv``. Inference runs ``eval_conv`` only, as the
release and spandrel do; the training form is kept so the state dict loads strictly (and
:meth:`Conv3XC.fuse` can rebuild ``eval_conv`` from it). Normalisation as released: the input
is shifted by the DIV2K mean and multiplied by ``img_range`` (255); the output is NOT scaled
back (the network learned 0..1 output). A ``no_norm`` buffer in the checkpoint turns the
normalisation off.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from napari_rrim_sr.models.common import shape_of, warn_unused

RGB_MEAN = (0.4488, 0.4371, 0.4040)


class Conv3XC(nn.Module):
    """A 3×3 conv trained as 1×1 skip + (1×1 -> 3×3 -> 1×1), run as the fused ``eval_conv``."""

    def __init__(self, c_in: int, c_out: int, gain: int = 2, relu: bool = False):
        super().__init__()
        self.has_relu = relu
        self.sk = nn.Conv2d(c_in, c_out, 1)
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_in * gain, 1),
            nn.Conv2d(c_in * gain, c_out * gain, 3),
            nn.Conv2d(c_out * gain, c_out, 1),
        )
        self.eval_conv = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.fuse()

    @torch.no_grad()
    def fuse(self) -> None:
        """Set ``eval_conv`` to the exact 3×3 equivalent of the training form."""
        w1, b1 = self.conv[0].weight, self.conv[0].bias
        w2, b2 = self.conv[1].weight, self.conv[1].bias
        w3, b3 = self.conv[2].weight, self.conv[2].bias
        w = F.conv2d(w1.flip(2, 3).permute(1, 0, 2, 3), w2, padding=2, stride=1).flip(2, 3).permute(1, 0, 2, 3)
        b = (w2 * b1.reshape(1, -1, 1, 1)).sum((1, 2, 3)) + b2
        w = F.conv2d(w.flip(2, 3).permute(1, 0, 2, 3), w3, padding=0, stride=1).flip(2, 3).permute(1, 0, 2, 3)
        b = (w3 * b.reshape(1, -1, 1, 1)).sum((1, 2, 3)) + b3
        w = w + F.pad(self.sk.weight, [1, 1, 1, 1])
        self.eval_conv.weight.copy_(w)
        self.eval_conv.bias.copy_(b + self.sk.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.eval_conv(x)
        return F.leaky_relu(out, 0.05) if self.has_relu else out


class SPAB(nn.Module):
    """Swift parameter-free attention block: 3 Conv3XC (SiLU), attention ``sigmoid(out3) - 0.5``."""

    def __init__(self, ch: int):
        super().__init__()
        self.c1_r, self.c2_r, self.c3_r = Conv3XC(ch, ch), Conv3XC(ch, ch), Conv3XC(ch, ch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the release applies SiLU in place, so the "pre-activation" out1 it returns (used by
        # block 6's skip into conv_cat) is in fact SiLU(out1); spandrel keeps that, and so do we
        out1 = F.silu(self.c1_r(x))
        out3 = self.c3_r(F.silu(self.c2_r(out1)))
        att = torch.sigmoid(out3) - 0.5
        return (out3 + x) * att, out1


class SPAN(nn.Module):
    """``(N, C_in, H, W)`` -> ``(N, C_out, scale·H, scale·W)``; 6 SPAB blocks of ``num_feat`` channels."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        scale: int = 4,
        num_feat: int = 48,
        img_range: float = 255.0,
        norm: bool = True,
        **other: Any,
    ):
        super().__init__()
        warn_unused(type(self).__name__, other)
        self.in_channels, self.out_channels, self.scale = int(in_channels), int(out_channels), int(scale)
        self.num_feat, self.img_range, self.norm = int(num_feat), float(img_range), bool(norm)
        if not self.norm:
            self.register_buffer("no_norm", torch.zeros(1))
        # the released mean is RGB; a 1-channel model uses its average (an assumption: no public
        # 1-channel SPAN checkpoint is known)
        mean = RGB_MEAN if self.in_channels == 3 else (sum(RGB_MEAN) / 3,) * self.in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        nf = self.num_feat
        self.conv_1 = Conv3XC(self.in_channels, nf)
        for i in range(1, 7):
            setattr(self, f"block_{i}", SPAB(nf))
        self.conv_cat = nn.Conv2d(nf * 4, nf, 1)
        self.conv_2 = Conv3XC(nf, nf)
        self.upsampler = nn.Sequential(
            nn.Conv2d(nf, self.out_channels * self.scale**2, 3, 1, 1), nn.PixelShuffle(self.scale)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm:
            x = (x - self.mean.to(x.dtype)) * self.img_range
        feat = self.conv_1(x)
        out = feat
        outs = []
        for i in range(1, 7):
            out, out1 = getattr(self, f"block_{i}")(out)
            outs.append((out, out1))
        out_b1, out_b6, out_b5_2 = outs[0][0], self.conv_2(outs[5][0]), outs[5][1]
        return self.upsampler(self.conv_cat(torch.cat([feat, out_b6, out_b1, out_b5_2], 1)))

    def hparams(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "scale": self.scale,
            "num_feat": self.num_feat,
            "img_range": self.img_range,
            "norm": self.norm,
        }


def detect(state_dict: Mapping[str, Any]) -> dict | None:
    """Hyper-parameters of a SPAN ``state_dict``, or None."""
    first = shape_of(state_dict, "conv_1.eval_conv.weight")
    up = shape_of(state_dict, "upsampler.0.weight")
    if first is None or up is None or shape_of(state_dict, "block_6.c3_r.eval_conv.weight") is None:
        return None
    nf, in_ch = int(first[0]), int(first[1])
    out_ch = in_ch  # the upsampler holds out·scale²; the releases map C to C channels
    scale = math.isqrt(int(up[0]) // out_ch) if int(up[0]) % out_ch == 0 else 0
    if scale < 1 or scale * scale * out_ch != int(up[0]):
        return None
    return {
        "in_channels": in_ch,
        "out_channels": out_ch,
        "scale": scale,
        "num_feat": nf,
        "img_range": 255.0,
        "norm": "no_norm" not in state_dict,
    }


__all__ = ["SPAN", "SPAB", "Conv3XC", "detect"]
