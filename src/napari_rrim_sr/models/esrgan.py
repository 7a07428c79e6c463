"""ESRGAN in the ORIGINAL key layout (``model.N...``), as the 2018 release and most community models use.

Paper: Wang et al., "ESRGAN: Enhanced Super-Resolution Generative Adversarial Networks", ECCV
Workshops 2018. Checkpoints in this layout: ``RRDB_ESRGAN_x4.pth``, ``RRDB_PSNR_x4.pth`` (the
xinntao/ESRGAN release) and the OpenModelDB community models trained with the old code, e.g.
``4x-UltraSharp.pth`` (23 blocks, 64 features), ``4x_foolhardy_Remacri.pth``, 1x restoration
models (no up-convolution) and 2x/8x models. The BasicSR/Real-ESRGAN layout (``conv_first``,
``body.N.rdb1``...) is :mod:`.rrdbnet`, whose RRDB block this module builds under the original names.

Layout (``nb`` blocks, ``n_up`` = log2(scale) nearest×2 + conv stages)::

    model.0                          conv(in, nf)
    model.1.sub.{i}.RDB{1,2,3}.conv{1..5}.0   the RRDB trunk, ``model.1.sub.{nb}`` its last conv
    model.{3 + 3k}   k < n_up        up-conv after a nearest ×2 (model.{2 + 3k} is the Upsample)
    model.{2 + 3·n_up}               HR conv, then LeakyReLU
    model.{4 + 3·n_up}               last conv(nf, out)

A pixel-unshuffled input (``model.0`` taking 4× or 16× the output channels, as in Real-ESRGAN's
x2/x1 models converted to this layout) lowers the scale by 2 or 4 and needs H, W divisible by it.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from napari_rrim_sr.models.common import shape_of, warn_unused
from napari_rrim_sr.models.rrdbnet import RRDB


def _rrdb(nf: int, gc: int) -> RRDB:
    """The one RRDB of :mod:`.rrdbnet`, with this layout's names (``RDB1..3``, ``convK.0``)."""
    return RRDB(nf, gc, names=("RDB1", "RDB2", "RDB3"), wrapped=True, init_scale=None)


class _Trunk(nn.Module):
    """``model.1``: the RRDB blocks plus one conv, added to its input (the original ShortcutBlock)."""

    def __init__(self, nf: int, nb: int, gc: int):
        super().__init__()
        self.sub = nn.Sequential(*[_rrdb(nf, gc) for _ in range(nb)], nn.Conv2d(nf, nf, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sub(x)


class ESRGAN(nn.Module):
    """Original-layout ESRGAN. ``(N, C_in, H, W)`` -> ``(N, C_out, scale·H, scale·W)``."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
        unshuffle: int = 1,
        **other: Any,
    ):
        super().__init__()
        warn_unused(type(self).__name__, other)
        self.in_channels, self.out_channels, self.scale = int(in_channels), int(out_channels), int(scale)
        self.num_feat, self.num_block, self.num_grow_ch = int(num_feat), int(num_block), int(num_grow_ch)
        self.unshuffle = int(unshuffle)
        n_up = (self.scale * self.unshuffle).bit_length() - 1
        if self.unshuffle not in (1, 2, 4) or 2**n_up != self.scale * self.unshuffle or n_up > 4:
            raise ValueError(f"ESRGAN supports scales 1, 2, 4, 8 (16), not {scale} with unshuffle {unshuffle}")
        self.n_up = n_up
        self.size_multiple = self.unshuffle
        nf = self.num_feat
        layers: list[nn.Module] = [
            nn.Conv2d(self.in_channels * self.unshuffle**2, nf, 3, 1, 1),
            _Trunk(nf, self.num_block, self.num_grow_ch),
        ]
        for _ in range(n_up):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(nf, nf, 3, 1, 1), nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(nf, nf, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(nf, self.out_channels, 3, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        return self.model(x)

    def hparams(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "scale": self.scale,
            "num_feat": self.num_feat,
            "num_block": self.num_block,
            "num_grow_ch": self.num_grow_ch,
            "unshuffle": self.unshuffle,
        }


_TOP = re.compile(r"model\.(\d+)\.weight$")
_BLOCK = re.compile(r"model\.1\.sub\.(\d+)\.")


def detect(state_dict: Mapping[str, Any]) -> dict | None:
    """Hyper-parameters of an original-layout ESRGAN ``state_dict``, or None."""
    first = shape_of(state_dict, "model.0.weight")
    conv1 = shape_of(state_dict, "model.1.sub.0.RDB1.conv1.0.weight")
    if first is None or conv1 is None or len(first) != 4:
        return None
    nb = 1 + max(int(m.group(1)) for k in state_dict if (m := _BLOCK.match(k)) and ".RDB1." in k)
    if shape_of(state_dict, f"model.1.sub.{nb}.weight") is None:
        return None
    tops = sorted(int(m.group(1)) for k in state_dict if (m := _TOP.match(k)))
    last = tops[-1]
    if (last - 4) % 3 or last < 4:
        return None
    n_up = (last - 4) // 3
    expected = [0] + [3 + 3 * k for k in range(n_up)] + [2 + 3 * n_up, last]
    if tops != expected:
        return None
    out_ch, nf, first_in = int(state_dict[f"model.{last}.weight"].shape[0]), int(first[0]), int(first[1])
    unshuffle = 1
    for r in (1, 2, 4):
        if first_in == out_ch * r * r and (2**n_up) % r == 0 and 2**n_up // r >= 1:
            unshuffle = r
            break
    in_ch = first_in // (unshuffle * unshuffle)
    return {
        "in_channels": in_ch,
        "out_channels": out_ch,
        "scale": 2**n_up // unshuffle,
        "num_feat": nf,
        "num_block": nb,
        "num_grow_ch": int(conv1[0]),
        "unshuffle": unshuffle,
    }


__all__ = ["ESRGAN", "detect"]
