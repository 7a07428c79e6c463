"""SRGAN discriminator (Ledig et al. 2017), made patch-size agnostic.

8 conv3×3 layers with widths F, F, 2F, 2F, 4F, 4F, 8F, 8F (64..512 for ``num_feat=64``); the
second conv of each width has stride 2 (so the 8 convs halve the resolution 4 times);
LeakyReLU(0.2) after each; BN after every conv but the first (``use_bn``). Then
``AdaptiveAvgPool2d(pool_size)`` (default 4×4), flatten, dense 1024, LeakyReLU(0.2), dense 1.

The adaptive pooling replaces SRGAN's fixed flatten (6×6×512 for 96-pixel patches): any patch
size works, the pooled map is 4×4×8F for every size (identity for 64-pixel patches, 2×2
averages for 128). The output is the raw logit ``(N, 1)``: the sigmoid lives in the loss
(``BCEWithLogitsLoss``, or the relativistic-average loss of ESRGAN on raw logits).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from napari_rrim_sr.models.common import default_init_weights, shape_of, warn_unused


class SRGANDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, num_feat: int = 64, use_bn: bool = True, pool_size: int = 4, **other: Any):
        super().__init__()
        warn_unused(type(self).__name__, other)
        self.in_channels, self.num_feat = int(in_channels), int(num_feat)
        self.use_bn, self.pool_size = bool(use_bn), int(pool_size)
        widths = [self.num_feat * m for m in (1, 1, 2, 2, 4, 4, 8, 8)]
        layers: list[nn.Module] = []
        prev = self.in_channels
        for i, ch in enumerate(widths):
            stride = 2 if i % 2 == 1 else 1
            bn = self.use_bn and i > 0
            layers.append(nn.Conv2d(prev, ch, 3, stride, 1, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            prev = ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(self.pool_size)
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(prev * self.pool_size**2, 1024),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(1024, 1),
        )
        default_init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))

    def hparams(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "num_feat": self.num_feat,
            "use_bn": self.use_bn,
            "pool_size": self.pool_size,
        }


def detect(state_dict: Mapping[str, Any]) -> dict | None:
    """Hyper-parameters of the :class:`SRGANDiscriminator` ``state_dict`` belongs to, or None."""
    first = shape_of(state_dict, "features.0.weight")
    fc = shape_of(state_dict, "classifier.1.weight")
    out = shape_of(state_dict, "classifier.3.weight")
    if first is None or fc is None or out is None or out[0] != 1 or len(first) != 4:
        return None
    num_feat = int(first[0])
    pool_area = fc[1] // (8 * num_feat)
    pool = int(round(pool_area**0.5))
    if pool * pool * 8 * num_feat != fc[1]:
        return None
    return {
        "in_channels": int(first[1]),
        "num_feat": num_feat,
        "use_bn": any(k.startswith("features.") and k.endswith(".running_mean") for k in state_dict),
        "pool_size": pool,
    }


__all__ = ["SRGANDiscriminator", "detect"]
