"""Paired LR/HR data: check the size ratio, register the pair by translation, crop to the overlap.

A real pair (e.g. a low- and a high-magnification acquisition of the same field) is never on
exactly the same grid. The HR is registered to the LR's grid (the model's input stays as
acquired): the HR is cross-correlated with the bicubic xs LR (Hann-windowed, no spectral
whitening: the LR has no high frequencies to whiten) with sub-pixel precision
(``skimage.registration.phase_cross_correlation``), refined by re-correlating the shifted HR. The HR is then
shifted (cubic spline) and both are cropped to the overlap on the LR grid.

A pair that does not register by a translation (another field, a rotation, a different
modality) is refused with its residual: the RMS difference between the LR and the aligned HR
brought to LR resolution, after a least-squares gain/offset fit, as a fraction of the LR's
standard deviation (0 = identical, about 1 = unrelated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from napari_rrim_sr.errors import InputError
from napari_rrim_sr.training.data import finish_pair

#: pairs whose residual is above this are refused (noise-free synthetic pairs: < 0.05; unrelated: ~1)
MAX_RESIDUAL = 0.5
#: relative tolerance of the HR/LR size ratio against the model's scale
RATIO_TOLERANCE = 0.02


@dataclass
class AlignedPair:
    """An LR plane and its HR registered to the LR grid, cropped to the overlap (both float64)."""

    lr: np.ndarray  #: (h, w)
    hr: np.ndarray  #: (s*h, s*w)
    shift: tuple[float, float]  #: (dy, dx) in HR pixels: where the HR content sits relative to the LR's
    residual: float  #: see the module docstring
    ratio: tuple[float, float]  #: HR/LR size ratio (y, x) as given

    def as_dict(self) -> dict:
        return {
            "shift_hr_px": [round(float(v), 3) for v in self.shift],
            "residual": round(float(self.residual), 4),
            "ratio": [round(float(v), 4) for v in self.ratio],
            "lr_shape": list(self.lr.shape),
            "hr_shape": list(self.hr.shape),
        }


def _plane(a, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if arr.ndim != 2:
        raise InputError(f"{what} must be a 2D plane, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=float(np.nanmedian(arr)))
    return arr


def check_ratio(lr_shape, hr_shape, scale: int, tol: float = RATIO_TOLERANCE) -> tuple[float, float]:
    """The HR/LR size ratio per axis; :class:`InputError` unless both equal ``scale`` (within ``tol``)."""
    ry, rx = hr_shape[0] / lr_shape[0], hr_shape[1] / lr_shape[1]
    if abs(ry - scale) > tol * scale or abs(rx - scale) > tol * scale:
        raise InputError(
            f"the HR/LR size ratio is {ry:.3f} x {rx:.3f} ({hr_shape[1]}x{hr_shape[0]} vs "
            f"{lr_shape[1]}x{lr_shape[0]}), not the model's scale {scale}"
        )
    return ry, rx


def _fit_residual(lr: np.ndarray, hr_low: np.ndarray) -> float:
    x, y = hr_low.ravel(), lr.ravel()
    sd = float(y.std())
    if not sd > 0:
        return float("inf")
    a = np.vstack([x, np.ones_like(x)]).T
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(np.sqrt(np.mean((a @ coef - y) ** 2)) / sd)


def register_pair(lr, hr, scale: int, *, max_residual: float = MAX_RESIDUAL, upsample: int = 100) -> AlignedPair:
    """Register ``hr`` to ``lr`` by a sub-pixel translation and crop both to the overlap.

    Raises :class:`InputError` when the size ratio is not ``scale``, the overlap is too small,
    or the residual after alignment exceeds ``max_residual`` (the message gives it).
    """
    from scipy import ndimage
    from skimage.registration import phase_cross_correlation

    from napari_rrim_sr.engine.bicubic import bicubic_downscale, bicubic_upscale

    lr, hr = _plane(lr, "the LR image"), _plane(hr, "the HR image")
    s = int(scale)
    ratio = check_ratio(lr.shape, hr.shape, s)
    h, w = min(lr.shape[0], hr.shape[0] // s), min(lr.shape[1], hr.shape[1] // s)
    if min(h, w) < 16:
        raise InputError(f"the pair is too small to register ({w}x{h} LR px; at least 16 needed)")
    lr, hr = lr[:h, :w], hr[: h * s, : w * s]
    up = bicubic_upscale(lr, s)
    win = np.outer(np.hanning(up.shape[0]), np.hanning(up.shape[1]))  # no wrap-around edges in the FFT

    def unit(a):
        return (a - a.mean()) / (a.std() or 1.0) * win

    dy = dx = 0.0
    for _ in range(3):  # refine: the correlation of the shifted HR peaks closer to zero, where it is unbiased
        moved = ndimage.shift(hr, (dy, dx), order=3, mode="nearest") if dy or dx else hr
        step, _, _ = phase_cross_correlation(unit(up), unit(moved), upsample_factor=upsample, normalization=None)
        dy, dx = dy + float(step[0]), dx + float(step[1])  # ndimage.shift(hr, (dy, dx)) lands on the LR's grid
        if max(abs(float(v)) for v in step) < 1.0 / upsample:
            break
    aligned = ndimage.shift(hr, (dy, dx), order=3, mode="nearest")
    m = math.ceil((max(abs(dy), abs(dx)) + 2 * s) / s)  # LR px lost at each side (shift + bicubic support)
    if h - 2 * m < 16 or w - 2 * m < 16:
        raise InputError(
            f"after the shift of ({-dy:.2f}, {-dx:.2f}) HR px the overlap is too small ({w - 2 * m}x{h - 2 * m} LR px)"
        )
    lr_c = lr[m : h - m, m : w - m]
    hr_c = aligned[m * s : (h - m) * s, m * s : (w - m) * s]
    residual = _fit_residual(lr_c, bicubic_downscale(hr_c, s))
    if not residual <= max_residual:
        raise InputError(
            f"the LR/HR pair does not align by a translation: residual {residual:.3f} after a shift of "
            f"({-dy:.2f}, {-dx:.2f}) HR px exceeds {max_residual:g} (0 = identical, ~1 = unrelated)"
        )
    return AlignedPair(lr_c, hr_c, (-dy, -dx), residual, ratio)


class PairedDataset:
    """Map-style dataset of ``(lr, hr)`` float32 tensors cut from aligned pairs (values 0..1).

    Item ``i`` is a pure function of ``(seed, i)``, like :class:`.data.PatchDataset`.
    """

    def __init__(
        self,
        pairs: list[tuple[np.ndarray, np.ndarray]],
        *,
        patch_size: int,
        scale: int,
        channels: int = 1,
        augment: bool = True,
        seed: int = 0,
    ):
        s, p = int(scale), int(patch_size)
        if p % s:
            raise InputError(f"patch size {p} is not a multiple of scale {s}")

        def chw(a):  # (h, w) or (h, w, C) -> (C, h, w)
            a = np.asarray(a, np.float32)
            return np.ascontiguousarray(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))

        self.pairs = [(chw(lr), chw(hr)) for lr, hr in pairs]
        for lr, hr in self.pairs:
            if min(lr.shape[1:]) < p // s:
                raise InputError(
                    f"a pair ({lr.shape[1]}x{lr.shape[0]} LR px) is smaller than the LR patch ({p // s} px)"
                )
        self.patch_size, self.scale, self.channels = p, s, int(channels)
        self.augment, self.seed = bool(augment), int(seed)

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, i: int):
        import torch

        rng = np.random.default_rng([self.seed, int(i)])
        lr_full, hr_full = self.pairs[int(rng.integers(len(self.pairs)))]
        q, s = self.patch_size // self.scale, self.scale
        y = int(rng.integers(lr_full.shape[1] - q + 1))
        x = int(rng.integers(lr_full.shape[2] - q + 1))
        lr = torch.from_numpy(np.ascontiguousarray(lr_full[:, y : y + q, x : x + q]))
        hr = torch.from_numpy(np.ascontiguousarray(hr_full[:, y * s : (y + q) * s, x * s : (x + q) * s]))
        return finish_pair(lr, hr, rng, self.augment, self.channels)
