"""RRIM: the study's Residual-in-Residual Inception Module generator (see docs/architecture.md).

Layout (``F = num_feat``, LeakyReLU(0.2) written ``lrelu``; no batch normalisation anywhere)::

    head   conv_first (C_in->F, 3x3) -> lrelu -> conv_first2 (F->F, 3x3)         = h
    body   num_block x RRIMBlock -> conv_body (3x3);  long skip: f = h + body(h)
    tail   up1: conv(F->4F) -> shuffle x2 -> lrelu
           deep inception module with residual
           up2: conv(F->4F) -> shuffle x2 -> lrelu                            (scale 4 only)
           conv_last (F->C_out, 3x3)

    RRIMBlock(x):  y = x
                   y = y + Shallow_i(y)   for i = 1, 2, 3     (inner residuals)
                   y = y + Middle(y)
                   return x + proj(y)                          (outer residual, 1x1 proj)

Inception modules (``b = F // 2`` channels per branch, all convs followed by lrelu except the
1x1 fusion; the 1x1 "reduce" convs of all branches are computed by one fused 1x1 conv):

* Shallow (3 branches, concat 3b):  1x1 | 1x1-1x5-5x1 | 1x1-1x7-7x1
* Middle  (4 branches, concat 4b):  1x1 | 1x1-1x3-3x1 | 1x1-1x5-5x1 | 1x1-1x3-3x1-1x3-3x1
* Deep    (3 branches, concat 5b):  1x1 | 1x1-{1x3 || 3x1} | 1x1-1x3-3x1-{1x3 || 3x1}
  (Inception-v3's "expanded filter bank": the last factorised pair runs in parallel and both
  outputs are kept.)

The last conv of every residual branch (each module's fusion 1x1 and the block's 1x1
projection) and ``conv_last`` are initialised with Kaiming weights multiplied by 0.1: a smaller
*initialisation* so the 8x4 residual stack starts near identity; there is no constant residual
scaling. The two sub-pixel convolutions use ICNR initialisation.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from napari_rrim_sr.models.common import (
    PixelShuffleUpsample,
    count_indexed,
    default_init_weights,
    shape_of,
    warn_unused,
)

RESIDUAL_INIT_SCALE = 0.1


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2, inplace=True)


def _fconv(ch: int, k: int, horizontal: bool) -> nn.Conv2d:
    """Factorised half of a k×k conv: 1×k (horizontal) or k×1, same padding, ch -> ch."""
    if horizontal:
        return nn.Conv2d(ch, ch, (1, k), 1, (0, k // 2))
    return nn.Conv2d(ch, ch, (k, 1), 1, (k // 2, 0))


class _Factorised(nn.Sequential):
    """1×k -> lrelu -> k×1 -> lrelu (repeated ``depth`` times): a factorised k×k conv stack."""

    def __init__(self, ch: int, k: int, depth: int = 1):
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [_fconv(ch, k, True), _lrelu(), _fconv(ch, k, False), _lrelu()]
        super().__init__(*layers)


class _Inception(nn.Module):
    """Common skeleton: fused 1×1 reduce -> split into branches -> concat -> 1×1 fusion."""

    n_stems: int = 1

    def __init__(self, num_feat: int, branch_ch: int, concat_ch: int):
        super().__init__()
        self.branch_ch = branch_ch
        self.reduce = nn.Conv2d(num_feat, branch_ch * self.n_stems, 1)
        self.act = _lrelu()
        self.fuse = nn.Conv2d(concat_ch, num_feat, 1)

    def _stems(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(self.act(self.reduce(x)), self.branch_ch, dim=1)

    def init_weights(self) -> None:
        default_init_weights(self)
        default_init_weights(self.fuse, scale=RESIDUAL_INIT_SCALE)


class ShallowInception(_Inception):
    """Simplest, largest kernels: 1×1 | 1×5→5×1 | 1×7→7×1; concat 3b -> 1×1 -> F."""

    n_stems = 3

    def __init__(self, num_feat: int, branch_ch: int):
        super().__init__(num_feat, branch_ch, 3 * branch_ch)
        self.b5 = _Factorised(branch_ch, 5)
        self.b7 = _Factorised(branch_ch, 7)
        self.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1, s5, s7 = self._stems(x)
        return self.fuse(torch.cat((s1, self.b5(s5), self.b7(s7)), 1))


class MiddleInception(_Inception):
    """Kernels 3 and 5, one deeper branch: 1×1 | 3 | 5 | 3→3; concat 4b -> 1×1 -> F."""

    n_stems = 4

    def __init__(self, num_feat: int, branch_ch: int):
        super().__init__(num_feat, branch_ch, 4 * branch_ch)
        self.b3 = _Factorised(branch_ch, 3)
        self.b5 = _Factorised(branch_ch, 5)
        self.b33 = _Factorised(branch_ch, 3, depth=2)
        self.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1, s3, s5, s33 = self._stems(x)
        return self.fuse(torch.cat((s1, self.b3(s3), self.b5(s5), self.b33(s33)), 1))


class DeepInception(_Inception):
    """Widest, kernel 3 only, expanded filter bank: 1×1 | {1×3 ‖ 3×1} | 1×3→3×1→{1×3 ‖ 3×1};
    concat 5b -> 1×1 -> F."""

    n_stems = 3

    def __init__(self, num_feat: int, branch_ch: int):
        super().__init__(num_feat, branch_ch, 5 * branch_ch)
        b = branch_ch
        self.b_h = _fconv(b, 3, True)
        self.b_v = _fconv(b, 3, False)
        self.c_pre = _Factorised(b, 3)
        self.c_h = _fconv(b, 3, True)
        self.c_v = _fconv(b, 3, False)
        self.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1, sb, sc = self._stems(x)
        t = self.c_pre(sc)
        a = self.act  # in-place on fresh conv outputs only
        return self.fuse(torch.cat((s1, a(self.b_h(sb)), a(self.b_v(sb)), a(self.c_h(t)), a(self.c_v(t))), 1))


class RRIMBlock(nn.Module):
    """3 shallow + 1 middle inception modules, residual around each and around the block."""

    def __init__(self, num_feat: int, branch_ch: int):
        super().__init__()
        self.shallow1 = ShallowInception(num_feat, branch_ch)
        self.shallow2 = ShallowInception(num_feat, branch_ch)
        self.shallow3 = ShallowInception(num_feat, branch_ch)
        self.middle = MiddleInception(num_feat, branch_ch)
        # outer residual: a learned 1×1 projection (small init) instead of RRDB's fixed 0.2 scaling;
        # without it "x + (x + ...)" would double the identity path in every block.
        self.proj = nn.Conv2d(num_feat, num_feat, 1)
        default_init_weights(self.proj, scale=RESIDUAL_INIT_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + self.shallow1(x)
        y = y + self.shallow2(y)
        y = y + self.shallow3(y)
        y = y + self.middle(y)
        return x + self.proj(y)


def branch_channels(num_feat: int) -> int:
    return max(1, num_feat // 2)


class RRIM(nn.Module):
    """The RRIM generator. ``(N, C_in, H, W)`` in 0..1 -> ``(N, C_out, scale·H, scale·W)``."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 8,
        **other: Any,
    ):
        super().__init__()
        warn_unused(type(self).__name__, other)
        if scale not in (2, 4):
            raise ValueError(f"RRIM supports scale 2 or 4, not {scale}")
        self.in_channels, self.out_channels, self.scale = int(in_channels), int(out_channels), int(scale)
        self.num_feat, self.num_block = int(num_feat), int(num_block)
        self.size_multiple = 1
        F, b = self.num_feat, branch_channels(self.num_feat)

        self.conv_first = nn.Conv2d(self.in_channels, F, 3, 1, 1)
        self.conv_first2 = nn.Conv2d(F, F, 3, 1, 1)
        self.body = nn.Sequential(*[RRIMBlock(F, b) for _ in range(self.num_block)])
        self.conv_body = nn.Conv2d(F, F, 3, 1, 1)
        self.up1 = PixelShuffleUpsample(F, _lrelu())
        self.deep = DeepInception(F, b)
        self.up2 = PixelShuffleUpsample(F, _lrelu()) if self.scale == 4 else None
        self.conv_last = nn.Conv2d(F, self.out_channels, 3, 1, 1)
        self.act = _lrelu()
        default_init_weights([self.conv_first, self.conv_first2, self.conv_body])
        # small output at init (|y| ~ 0.2 instead of ~2): measurably faster early L1 training
        default_init_weights(self.conv_last, scale=RESIDUAL_INIT_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_first2(self.act(self.conv_first(x)))
        f = h + self.conv_body(self.body(h))
        f = self.up1(f)
        f = f + self.deep(f)
        if self.up2 is not None:
            f = self.up2(f)
        return self.conv_last(f)

    def hparams(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "scale": self.scale,
            "num_feat": self.num_feat,
            "num_block": self.num_block,
        }


def detect(state_dict: Mapping[str, Any]) -> dict | None:
    """Hyper-parameters of the RRIM that ``state_dict`` belongs to, or None if it is not an RRIM."""
    first, last = shape_of(state_dict, "conv_first.weight"), shape_of(state_dict, "conv_last.weight")
    if first is None or last is None or "conv_first2.weight" not in state_dict:
        return None
    if "body.0.shallow1.fuse.weight" not in state_dict or "deep.fuse.weight" not in state_dict:
        return None
    if "up1.conv.weight" not in state_dict:
        return None
    return {
        "in_channels": int(first[1]),
        "out_channels": int(last[0]),
        "scale": 4 if "up2.conv.weight" in state_dict else 2,
        "num_feat": int(first[0]),
        "num_block": count_indexed(state_dict, "body."),
    }


__all__ = ["RRIM", "RRIMBlock", "ShallowInception", "MiddleInception", "DeepInception", "detect"]
