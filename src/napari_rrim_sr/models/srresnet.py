"""SRResNet: the SRGAN generator (Ledig et al. 2017).

conv9×9 + PReLU -> ``num_block`` × [conv3×3-BN-PReLU-conv3×3-BN + skip] -> conv3×3 (+BN) + long
skip -> one (scale 2) or two (scale 4) sub-pixel upsamplers (conv3×3 F->4F, pixel-shuffle ×2,
PReLU) -> conv9×9 to the output channels. ``use_bn=False`` drops every BN (convs then get a
bias), the EDSR/MSRResNet variant; the registry's default is ``use_bn=False``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from napari_rrim_sr.models.common import count_indexed, icnr_, shape_of, warn_unused


class ResidualBlock(nn.Module):
    def __init__(self, num_feat: int, use_bn: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=not use_bn)
        self.bn1 = nn.BatchNorm2d(num_feat) if use_bn else nn.Identity()
        self.act = nn.PReLU()
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=not use_bn)
        self.bn2 = nn.BatchNorm2d(num_feat) if use_bn else nn.Identity()
        if not use_bn:  # no BN to tame the residual branch: start it small (MSRResNet init)
            with torch.no_grad():
                for conv in (self.conv1, self.conv2):
                    nn.init.kaiming_normal_(conv.weight, mode="fan_in")
                    conv.weight.mul_(0.1)
                    nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


class Upsample(nn.Module):
    """Sub-pixel convolution: conv3×3 (F -> 4F, ICNR init) -> pixel-shuffle ×2 -> PReLU."""

    def __init__(self, num_feat: int):
        super().__init__()
        self.conv = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(2)
        self.act = nn.PReLU()
        icnr_(self.conv.weight, 2, negative_slope=0.25)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shuffle(self.conv(x)))


class SRResNet(nn.Module):
    """SRGAN's generator. ``(N, C_in, H, W)`` in 0..1 -> ``(N, C_out, scale·H, scale·W)``."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 16,
        use_bn: bool = False,
        **other: Any,
    ):
        super().__init__()
        warn_unused(type(self).__name__, other)
        if scale not in (2, 4):
            raise ValueError(f"SRResNet supports scale 2 or 4, not {scale}")
        self.in_channels, self.out_channels, self.scale = int(in_channels), int(out_channels), int(scale)
        self.num_feat, self.num_block, self.use_bn = int(num_feat), int(num_block), bool(use_bn)
        self.size_multiple = 1
        F = self.num_feat
        self.conv_first = nn.Conv2d(self.in_channels, F, 9, 1, 4)
        self.act_first = nn.PReLU()
        self.body = nn.Sequential(*[ResidualBlock(F, self.use_bn) for _ in range(self.num_block)])
        self.conv_body = nn.Conv2d(F, F, 3, 1, 1, bias=not self.use_bn)
        self.bn_body = nn.BatchNorm2d(F) if self.use_bn else nn.Identity()
        self.upsample = nn.Sequential(*[Upsample(F) for _ in range({2: 1, 4: 2}[self.scale])])
        self.conv_last = nn.Conv2d(F, self.out_channels, 9, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act_first(self.conv_first(x))
        f = h + self.bn_body(self.conv_body(self.body(h)))
        return self.conv_last(self.upsample(f))

    def hparams(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "scale": self.scale,
            "num_feat": self.num_feat,
            "num_block": self.num_block,
            "use_bn": self.use_bn,
        }


def detect(state_dict: Mapping[str, Any]) -> dict | None:
    """Hyper-parameters of the SRResNet ``state_dict`` belongs to, or None."""
    first, last = shape_of(state_dict, "conv_first.weight"), shape_of(state_dict, "conv_last.weight")
    if first is None or last is None or len(first) != 4 or first[2:] != (9, 9):
        return None
    if "act_first.weight" not in state_dict or "upsample.0.conv.weight" not in state_dict:
        return None
    n_up = count_indexed(state_dict, "upsample.")
    if n_up not in (1, 2):
        return None
    return {
        "in_channels": int(first[1]),
        "out_channels": int(last[0]),
        "scale": 2**n_up,
        "num_feat": int(first[0]),
        "num_block": count_indexed(state_dict, "body."),
        "use_bn": "bn_body.weight" in state_dict,
    }


__all__ = ["SRResNet", "ResidualBlock", "detect"]
