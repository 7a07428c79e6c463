"""RRDBNet: the ESRGAN generator, with BasicSR / Real-ESRGAN's exact state-dict key layout.

Keys: ``conv_first``, ``body.N.rdb{1,2,3}.conv{1..5}``, ``conv_body``, ``conv_up1``, ``conv_up2``,
``conv_hr``, ``conv_last`` — so ``RRDB_PSNR_x4``, ``ESRGAN_x4`` and ``RealESRGAN_x4plus`` /
``RealESRGAN_x2plus`` checkpoints load after :func:`.common.clean_state_dict`.

As in BasicSR, the network always upsamples ×4 internally (two nearest ×2 + conv stages); for
scale 2 the input is first ``pixel_unshuffle``-d by 2 (so H and W must be even:
``size_multiple == 2``) and ``conv_first`` takes ``4·in_channels`` channels; scale 1 (unshuffle
by 4) is supported for BasicSR compatibility but not registered.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from napari_rrim_sr.models.common import count_indexed, default_init_weights, shape_of, warn_unused

_UNSHUFFLE = {1: 4, 2: 2, 4: 1}


class ResidualDenseBlock(nn.Module):
    """5 densely connected convs, LeakyReLU 0.2, residual scaled by 0.2.

    ``wrapped`` keeps each conv in a one-element ``nn.Sequential`` (keys ``convK.0.*``, the original
    ESRGAN release's layout, :mod:`.esrgan`) instead of BasicSR's ``convK.*``; ``init_scale`` None
    keeps PyTorch's default init (a network that is only ever loaded from a checkpoint).
    """

    def __init__(
        self, num_feat: int = 64, num_grow_ch: int = 32, wrapped: bool = False, init_scale: float | None = 0.1
    ):
        super().__init__()
        convs = []
        for k in range(1, 6):
            conv = nn.Conv2d(num_feat + (k - 1) * num_grow_ch, num_feat if k == 5 else num_grow_ch, 3, 1, 1)
            convs.append(conv)
            setattr(self, f"conv{k}", nn.Sequential(conv) if wrapped else conv)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        if init_scale is not None:
            default_init_weights(convs, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for k in range(1, 5):
            feats.append(self.lrelu(getattr(self, f"conv{k}")(torch.cat(feats, 1) if k > 1 else x)))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: 3 RDBs, outer residual scaled by 0.2.

    ``names`` are the RDBs' attribute names (``rdb1..3`` in BasicSR, ``RDB1..3`` in the original release).
    """

    def __init__(
        self,
        num_feat: int,
        num_grow_ch: int = 32,
        names: tuple[str, str, str] = ("rdb1", "rdb2", "rdb3"),
        wrapped: bool = False,
        init_scale: float | None = 0.1,
    ):
        super().__init__()
        self.rdb_names = tuple(names)
        for name in self.rdb_names:
            setattr(self, name, ResidualDenseBlock(num_feat, num_grow_ch, wrapped, init_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for name in self.rdb_names:
            out = getattr(self, name)(out)
        return out * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator. ``(N, C_in, H, W)`` in 0..1 -> ``(N, C_out, scale·H, scale·W)``."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
        **other: Any,
    ):
        super().__init__()
        warn_unused(type(self).__name__, other)
        if scale not in _UNSHUFFLE:
            raise ValueError(f"RRDBNet supports scale 1, 2 or 4, not {scale}")
        self.in_channels, self.out_channels, self.scale = int(in_channels), int(out_channels), int(scale)
        self.num_feat, self.num_block, self.num_grow_ch = int(num_feat), int(num_block), int(num_grow_ch)
        self.unshuffle = _UNSHUFFLE[self.scale]
        self.size_multiple = self.unshuffle
        nf = self.num_feat
        self.conv_first = nn.Conv2d(self.in_channels * self.unshuffle**2, nf, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(nf, self.num_grow_ch) for _ in range(self.num_block)])
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, self.out_channels, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            h, w = x.shape[-2:]
            if h % self.unshuffle or w % self.unshuffle:
                raise ValueError(
                    f"RRDBNet at scale {self.scale} needs H and W divisible by {self.unshuffle}, got {h}x{w}"
                )
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))

    def hparams(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "scale": self.scale,
            "num_feat": self.num_feat,
            "num_block": self.num_block,
            "num_grow_ch": self.num_grow_ch,
        }


def _scale_and_in_channels(first_in: int, out_ch: int) -> tuple[int, int] | None:
    # the usual case: same channel count in and out
    for scale, r in _UNSHUFFLE.items():
        if first_in == out_ch * r * r:
            return scale, out_ch
    # otherwise assume a 1- or 3-channel input
    for scale, r in ((4, 1), (2, 2), (1, 4)):
        if first_in % (r * r) == 0 and first_in // (r * r) in (1, 3):
            return scale, first_in // (r * r)
    return None


def detect(state_dict: Mapping[str, Any]) -> dict | None:
    """Hyper-parameters of the RRDBNet ``state_dict`` belongs to (BasicSR layout), or None."""
    first, last = shape_of(state_dict, "conv_first.weight"), shape_of(state_dict, "conv_last.weight")
    conv1 = shape_of(state_dict, "body.0.rdb1.conv1.weight")
    if first is None or last is None or conv1 is None or "conv_up1.weight" not in state_dict:
        return None
    found = _scale_and_in_channels(int(first[1]), int(last[0]))
    if found is None:
        return None
    scale, in_ch = found
    return {
        "in_channels": in_ch,
        "out_channels": int(last[0]),
        "scale": scale,
        "num_feat": int(first[0]),
        "num_block": count_indexed(state_dict, "body."),
        "num_grow_ch": int(conv1[0]),
    }


__all__ = ["RRDBNet", "RRDB", "ResidualDenseBlock", "detect"]
