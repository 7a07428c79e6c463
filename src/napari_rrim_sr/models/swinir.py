"""SwinIR: image restoration with shifted-window (Swin) transformer blocks.

Paper: Liang et al., "SwinIR: Image Restoration Using Swin Transformer", ICCV Workshops 2021.
Checkpoints (JingyunLiang/SwinIR releases, same key layout): classical SR
(``001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth`` ... ``_x8``, upsampler ``pixelshuffle``),
lightweight SR (``002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4.pth``, ``pixelshuffledirect``),
real-world SR (``003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4_GAN.pth``, ``nearest+conv``; the
``-L`` variants use the ``3conv`` residual connection) and community SwinIR models.

As in the releases, the input is shifted by the DIV2K mean (RGB; 0 for other channel counts),
multiplied by ``img_range`` (1.0 in every release), reflect-padded to a multiple of the window
and the output cropped back. The engine is told the window as ``size_multiple`` so tiles arrive
already aligned and the padding is a no-op.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from napari_rrim_sr.models.common import shape_of, warn_unused

RGB_MEAN = (0.4488, 0.4371, 0.4040)
UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")


def _partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B·nW, ws, ws, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)


def _merge(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def shift_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """The (nW, ws², ws²) attention mask of shifted windows (-100 between different regions)."""
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    mw = _partition(img, ws).view(-1, ws * ws)
    mask = mw.unsqueeze(1) - mw.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, ws: int, heads: int):
        super().__init__()
        self.ws, self.heads = ws, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1])
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, self.heads, n, n) + mask.to(attn.dtype).unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        attn = attn.softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, resolution: int, heads: int, ws: int, shift: int, mlp_ratio: float):
        super().__init__()
        if resolution <= ws:  # as the release: one window, no shift
            ws, shift = resolution, 0
        self.ws, self.shift, self.resolution = ws, shift, resolution
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        if shift:
            self.register_buffer("attn_mask", shift_mask(resolution, resolution, ws, shift))
        else:
            self.attn_mask = None

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
            mask = self.attn_mask if (h, w) == (self.resolution,) * 2 else shift_mask(h, w, self.ws, self.shift)
            mask = mask.to(x.device)
        else:
            mask = None
        y = self.attn(_partition(y, self.ws).view(-1, self.ws * self.ws, c), mask)
        y = _merge(y.view(-1, self.ws, self.ws, c), self.ws, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class _Group(nn.Module):
    """``residual_group``: the Swin blocks of one RSTB."""

    def __init__(self, dim: int, resolution: int, depth: int, heads: int, ws: int, mlp_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, heads, ws, 0 if i % 2 == 0 else ws // 2, mlp_ratio) for i in range(depth)
        )

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, size)
        return x


def _resi_conv(dim: int, kind: str) -> nn.Module:
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if kind == "3conv":
        q = dim // 4
        return nn.Sequential(
            nn.Conv2d(dim, q, 3, 1, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(q, q, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(q, dim, 3, 1, 1),
        )
    raise ValueError(f"resi_connection must be '1conv' or '3conv', not {kind!r}")


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def _to_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *size)


class RSTB(nn.Module):
    """Residual Swin transformer block: Swin blocks, a conv, and a skip."""

    def __init__(self, dim: int, resolution: int, depth: int, heads: int, ws: int, mlp_ratio: float, resi: str):
        super().__init__()
        self.residual_group = _Group(dim, resolution, depth, heads, ws, mlp_ratio)
        self.conv = _resi_conv(dim, resi)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return _to_tokens(self.conv(_to_image(self.residual_group(x, size), size))) + x


class _PatchNorm(nn.Module):
    """``patch_embed``: flatten to tokens, LayerNorm (``patch_embed.norm``) when ``patch_norm``."""

    def __init__(self, dim: int, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _to_tokens(x)
        return self.norm(x) if self.norm is not None else x


class SwinIR(nn.Module):
    """``(N, C_in, H, W)`` -> ``(N, C_out, scale·H, scale·W)``, any H, W (padded to the window)."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        scale: int = 4,
        embed_dim: int = 60,
        depths: Sequence[int] = (6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6),
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        img_size: int = 64,
        img_range: float = 1.0,
        upsampler: str = "pixelshuffledirect",
        resi_connection: str = "1conv",
        num_feat: int = 64,
        patch_norm: bool = True,
        ape: bool = False,
        **other: Any,
    ):
        super().__init__()
        warn_unused(type(self).__name__, other)
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, not {upsampler!r}")
        if len(depths) != len(num_heads):
            raise ValueError("depths and num_heads must have the same length")
        self.in_channels, self.out_channels, self.scale = int(in_channels), int(out_channels), int(scale)
        self.embed_dim, self.window_size, self.img_size = int(embed_dim), int(window_size), int(img_size)
        self.depths, self.num_heads = [int(d) for d in depths], [int(h) for h in num_heads]
        self.mlp_ratio, self.img_range, self.num_feat = float(mlp_ratio), float(img_range), int(num_feat)
        self.upsampler, self.resi_connection = upsampler, resi_connection
        self.patch_norm, self.ape = bool(patch_norm), bool(ape)
        self.size_multiple = self.window_size
        mean = RGB_MEAN if self.in_channels == 3 else (0.0,) * self.in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        dim, nf, s = self.embed_dim, self.num_feat, self.scale
        self.conv_first = nn.Conv2d(self.in_channels, dim, 3, 1, 1)
        self.patch_embed = _PatchNorm(dim, self.patch_norm)
        if self.ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.img_size**2, dim))
        self.layers = nn.ModuleList(
            RSTB(dim, self.img_size, d, h, self.window_size, self.mlp_ratio, resi_connection)
            for d, h in zip(self.depths, self.num_heads)
        )
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = _resi_conv(dim, resi_connection)
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, nf, 3, 1, 1), nn.LeakyReLU(inplace=True))
            up: list[nn.Module] = []
            if s & (s - 1) == 0:
                for _ in range(int(math.log2(s))):
                    up += [nn.Conv2d(nf, 4 * nf, 3, 1, 1), nn.PixelShuffle(2)]
            elif s == 3:
                up += [nn.Conv2d(nf, 9 * nf, 3, 1, 1), nn.PixelShuffle(3)]
            else:
                raise ValueError(f"pixelshuffle upsampler supports scales 2^n and 3, not {s}")
            self.upsample = nn.Sequential(*up)
            self.conv_last = nn.Conv2d(nf, self.out_channels, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(dim, self.out_channels * s * s, 3, 1, 1), nn.PixelShuffle(s))
        elif upsampler == "nearest+conv":
            if s not in (2, 4, 8):
                raise ValueError(f"nearest+conv upsampler supports scales 2, 4, 8, not {s}")
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, nf, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.n_up = int(math.log2(s))
            for i in range(1, self.n_up + 1):
                setattr(self, f"conv_up{i}", nn.Conv2d(nf, nf, 3, 1, 1))
            self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
            self.conv_last = nn.Conv2d(nf, self.out_channels, 3, 1, 1)
        else:  # restoration (denoising / JPEG), scale 1
            if s != 1:
                raise ValueError("SwinIR without an upsampler is a scale-1 model")
            self.conv_last = nn.Conv2d(dim, self.out_channels, 3, 1, 1)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        t = self.patch_embed(x)
        if self.ape:
            t = t + self.absolute_pos_embed
        for layer in self.layers:
            t = layer(t, size)
        return _to_image(self.norm(t), size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ws = self.window_size
        ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
        if ph or pw or torch.jit.is_tracing():  # traced (ONNX export): pad by the traced size, always
            x = F.pad(x, (0, pw, 0, ph), "reflect")
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        if self.upsampler == "":
            first = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self._features(first)) + first)
        else:
            x = self.conv_first(x)
            x = self.conv_after_body(self._features(x)) + x
            if self.upsampler == "pixelshuffle":
                x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
            elif self.upsampler == "pixelshuffledirect":
                x = self.upsample(x)
            else:
                x = self.conv_before_upsample(x)
                for i in range(1, self.n_up + 1):
                    x = F.leaky_relu(
                        getattr(self, f"conv_up{i}")(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2
                    )
                x = self.conv_last(F.leaky_relu(self.conv_hr(x), 0.2))
        x = x / self.img_range + mean
        return x[..., : h * self.scale, : w * self.scale]

    def hparams(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "scale": self.scale,
            "embed_dim": self.embed_dim,
            "depths": list(self.depths),
            "num_heads": list(self.num_heads),
            "window_size": self.window_size,
            "mlp_ratio": self.mlp_ratio,
            "img_size": self.img_size,
            "img_range": self.img_range,
            "upsampler": self.upsampler,
            "resi_connection": self.resi_connection,
            "num_feat": self.num_feat,
            "patch_norm": self.patch_norm,
            "ape": self.ape,
        }


_BLOCK = re.compile(r"layers\.(\d+)\.residual_group\.blocks\.(\d+)\.")


def detect(state_dict: Mapping[str, Any]) -> dict | None:
    """Hyper-parameters of a SwinIR ``state_dict``, or None."""
    first = shape_of(state_dict, "conv_first.weight")
    table = shape_of(state_dict, "layers.0.residual_group.blocks.0.attn.relative_position_bias_table")
    if first is None or table is None:
        return None
    dim, in_ch = int(first[0]), int(first[1])
    blocks: dict[int, set[int]] = {}
    for k in state_dict:
        if m := _BLOCK.match(k):
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    n_layers = len(blocks)
    if sorted(blocks) != list(range(n_layers)):
        return None
    depths = [len(blocks[i]) for i in range(n_layers)]
    heads = [
        int(state_dict[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"].shape[1])
        for i in range(n_layers)
    ]
    ws = (math.isqrt(int(table[0])) + 1) // 2
    fc1 = shape_of(state_dict, "layers.0.residual_group.blocks.0.mlp.fc1.weight")
    mlp_ratio = int(fc1[0]) / dim if fc1 else 2.0
    img_size = 64
    for key, val in state_dict.items():
        if key.endswith(".attn_mask"):
            n_win, n = int(val.shape[0]), int(val.shape[1])
            img_size = math.isqrt(n_win) * math.isqrt(n)
            break
    resi = "3conv" if "conv_after_body.4.weight" in state_dict else "1conv"
    num_feat = 64
    if "conv_up1.weight" in state_dict:
        upsampler = "nearest+conv"
        scale = 2 ** sum(f"conv_up{i}.weight" in state_dict for i in (1, 2, 3))
        num_feat = int(state_dict["conv_before_upsample.0.weight"].shape[0])
        out_ch = int(state_dict["conv_last.weight"].shape[0])
    elif "conv_before_upsample.0.weight" in state_dict:
        upsampler = "pixelshuffle"
        num_feat = int(state_dict["conv_before_upsample.0.weight"].shape[0])
        ups = [int(m.group(1)) for k in state_dict if (m := re.match(r"upsample\.(\d+)\.weight$", k))]
        if not ups:
            return None
        r2 = int(state_dict["upsample.0.weight"].shape[0]) // num_feat
        scale = 3 if r2 == 9 else 2 ** len(ups)
        out_ch = int(state_dict["conv_last.weight"].shape[0])
    elif "upsample.0.weight" in state_dict:
        upsampler = "pixelshuffledirect"
        out_ch = in_ch  # upsample.0 holds out·scale²; the releases map C to C channels
        n = int(state_dict["upsample.0.weight"].shape[0])
        scale = math.isqrt(n // out_ch) if n % out_ch == 0 else 0
        if scale < 1 or scale * scale * out_ch != n:
            return None
    elif "conv_last.weight" in state_dict:
        upsampler, scale = "", 1
        out_ch = int(state_dict["conv_last.weight"].shape[0])
    else:
        return None
    return {
        "in_channels": in_ch,
        "out_channels": out_ch,
        "scale": scale,
        "embed_dim": dim,
        "depths": depths,
        "num_heads": heads,
        "window_size": ws,
        "mlp_ratio": mlp_ratio,
        "img_size": img_size,
        "img_range": 1.0,
        "upsampler": upsampler,
        "resi_connection": resi,
        "num_feat": num_feat,
        "patch_norm": "patch_embed.norm.weight" in state_dict,
        "ape": "absolute_pos_embed" in state_dict,
    }


__all__ = ["SwinIR", "detect", "shift_mask"]
