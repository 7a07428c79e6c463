"""Training batches made on the GPU: images resident on the device, crops, flips and the bicubic LR there.

On a fast GPU the CPU path of :class:`~.data.PatchDataset` (one patch at a time in numpy/torch
on the CPU) would starve the model. Here every decoded training image is uploaded once as a
uint8 tensor; each step draws ``batch`` windows (patch + bicubic margin), stacks them, makes the
LR of the whole batch with :func:`~napari_rrim_sr.engine.bicubic.imresize_torch` (MATLAB-style bicubic,
antialiased: the evaluation convention), quantises it to 8 bit and applies the 8 flips/rotations,
all as batched tensor operations on the device.

Supported degradations: none besides quantisation (the PSNR recipes). A config that asks for
blur, noise, Poisson or JPEG is refused with a clear error: use the CPU loader for those.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch

from napari_rrim_sr.training.config import ConfigError


def check_supported(cfg) -> None:
    """Raise ConfigError when ``cfg`` needs a degradation the GPU sampler does not make."""
    if (
        cfg.blur_sigma[1] > 0
        or cfg.noise_sigma[1] > 0
        or cfg.poisson_peak[1] > 0
        or cfg.jpeg_quality[1] > 0
        or cfg.alias_prob > 0
    ):
        raise ConfigError(
            "the GPU sampler makes bicubic LR only (no blur/noise/poisson/jpeg/alias): "
            "use the CPU loader for degraded training"
        )


class GpuPatchSampler:
    """Infinite iterator of ``(lr, hr)`` float32 batches on ``device``; batch ``k`` depends on (seed, k) only.

    ``arrays``: (H, W, C) uint8 images (one plane each). Images smaller than the window
    (``patch_size + 2 * margin``) are dropped; :attr:`dropped` counts them.
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        *,
        patch_size: int,
        scale: int,
        batch_size: int,
        device: torch.device | str,
        seed: int = 0,
        augment: bool = True,
        quantize: bool = True,
        channels_last: bool = False,
        start_step: int = 0,
    ):
        self.p, self.s, self.b = int(patch_size), int(scale), int(batch_size)
        if self.p % self.s:
            raise ConfigError(f"patch size {self.p} is not a multiple of scale {self.s}")
        self.margin = int(math.ceil(3 * self.s / self.s) * self.s)  # bicubic support: 3 LR px each side
        self.win = self.p + 2 * self.margin
        self.device = torch.device(device)
        self.augment, self.quantize, self.channels_last = bool(augment), bool(quantize), bool(channels_last)
        self.seed, self.step = int(seed), int(start_step)
        self.images: list[torch.Tensor] = []
        self.dropped = 0
        for a in arrays:
            a = np.asarray(a)
            if a.ndim != 3 or a.dtype != np.uint8:
                raise ConfigError(f"GPU sampler needs (H, W, C) uint8 images, got {a.shape} {a.dtype}")
            if min(a.shape[:2]) < self.win:
                self.dropped += 1
                continue
            self.images.append(torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).to(self.device))
        if not self.images:
            raise ConfigError(f"no training image has both sides >= {self.win} px (patch {self.p} + margins)")
        self.sizes = [(int(t.shape[1]), int(t.shape[2])) for t in self.images]
        # sample images in proportion to their area, like drawing patch positions uniformly over all pixels
        area = np.array([h * w for h, w in self.sizes], np.float64)
        self._p_img = area / area.sum()
        self.bytes = sum(t.numel() for t in self.images)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.batch(self.step)
        self.step += 1
        return out

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        from napari_rrim_sr.engine.bicubic import imresize_torch

        rng = np.random.default_rng([self.seed, 0x6E5, int(k)])
        p, s, win, m = self.p, self.s, self.win, self.margin
        idx = rng.choice(len(self.images), size=self.b, p=self._p_img)
        windows, offs = [], []
        for i in idx:
            h, w = self.sizes[i]
            y = s * int(rng.integers((h - p) // s + 1))  # patch position on the scale grid
            x = s * int(rng.integers((w - p) // s + 1))
            wy = min(max(0, y - m), h - win)  # a window of fixed size holding the patch and its margin
            wx = min(max(0, x - m), w - win)
            wy -= wy % s
            wx -= wx % s
            windows.append(self.images[i][:, wy : wy + win, wx : wx + win])
            offs.append((y - wy, x - wx))
        hrw = torch.stack(windows).float().mul_(1.0 / 255.0)  # (B, C, win, win)
        lrw = imresize_torch(hrw, 1.0 / s, antialias=True)
        if self.quantize:
            lrw = (lrw.clamp(0, 1) * 255.0).round_().mul_(1.0 / 255.0)
        hr = torch.stack([hrw[j, :, oy : oy + p, ox : ox + p] for j, (oy, ox) in enumerate(offs)])
        q = p // s
        lr = torch.stack([lrw[j, :, oy // s : oy // s + q, ox // s : ox // s + q] for j, (oy, ox) in enumerate(offs)])
        if self.augment:
            flips = torch.from_numpy(rng.random((3, self.b)) < 0.5).to(self.device)
            for axis, f in ((-1, flips[0]), (-2, flips[1])):
                mask = f.view(-1, 1, 1, 1)
                hr = torch.where(mask, hr.flip(axis), hr)
                lr = torch.where(mask, lr.flip(axis), lr)
            mask = flips[2].view(-1, 1, 1, 1)  # square patches: a transpose keeps the shape
            hr = torch.where(mask, hr.transpose(-1, -2), hr)
            lr = torch.where(mask, lr.transpose(-1, -2), lr)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return lr.contiguous(memory_format=fmt), hr.contiguous(memory_format=fmt)
