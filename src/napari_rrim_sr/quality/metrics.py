"""Full-reference image-quality metrics: RMSE, PSNR, SSIM, FSIM and FSIMc.

Why here and not scikit-image: the super-resolution literature (and our docs' "Standard
evaluation convention") fixes details that generic implementations leave open: BT.601 Y
channel with the 16..235 offset, a border shave of ``scale`` pixels, SSIM with an 11x11
Gaussian window (sigma 1.5) averaged over the *valid* region, and FSIM exactly as the
reference MATLAB code of Zhang et al. (IEEE TIP 2011), which no installed package provides.

Layout: a 2-D array is a gray image; a 3-D array has a channel axis (``channel_axis``,
default last, as napari RGB layers and scikit-image). Three channels are taken as RGB where
colour matters (``rgb_to_y``, FSIM's luma and FSIMc chroma); other channel counts are
scored per channel and averaged. Stacks (Z/T planes) are scored plane by plane by the caller.

Data range: uint8 -> 255, uint16 -> 65535 (:func:`data_range_for`); float images have no
implicit range, so ``data_range`` must be given for them.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi

from napari_rrim_sr.errors import InputError, positive_number

__all__ = [
    "data_range_for",
    "rgb_to_y",
    "shave",
    "rmse",
    "psnr",
    "ssim",
    "phase_congruency",
    "fsim",
    "fsimc",
    "compare",
    "overshoot",
]

# ----------------------------------------------------------------------------------------
# validation helpers


def data_range_for(dtype_or_array) -> float:
    """The nominal value range of an integer/bool dtype (uint8 -> 255, uint16 -> 65535).

    Floats raise: their range (0..1? 0..255? reflectance?) is a property of the data, and
    guessing it silently changes PSNR by tens of dB.
    """
    dt = getattr(dtype_or_array, "dtype", None)
    if not isinstance(dt, np.dtype):  # a dtype-like (np.uint8 has a non-dtype .dtype attribute)
        dt = dtype_or_array
    try:
        dt = np.dtype(dt)
    except TypeError:
        raise InputError(f"not a dtype or array: {dtype_or_array!r}") from None
    if dt.kind == "b":
        return 1.0
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return float(info.max) - float(info.min)
    if dt.kind == "f":
        raise InputError(
            f"data_range is required for floating-point images (dtype {dt}): their value range "
            "is not implied by the dtype; pass e.g. data_range=1.0 for 0..1 or 255.0 for 0..255"
        )
    raise InputError(f"unsupported image dtype {dt} (expected integer, bool or float)")


def _as_image(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.size == 0:
        raise InputError(f"{name} is empty (shape {arr.shape})")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name} must be real-valued, got dtype {arr.dtype}")
    out = arr.astype(np.float64, copy=False)
    if not np.isfinite(out).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return out


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    if a_arr.shape != b_arr.shape:
        raise InputError(f"images differ in shape: {a_arr.shape} vs {b_arr.shape}")
    return _as_image(a_arr, "first image"), _as_image(b_arr, "second image")


def _resolve_range(data_range, *arrays) -> float:
    if data_range is None:
        ranges = {data_range_for(np.asarray(x).dtype) for x in arrays}
        if len(ranges) != 1:
            raise InputError(f"data_range is required: the images' dtypes imply different ranges ({sorted(ranges)})")
        return ranges.pop()
    return positive_number(data_range, "data_range")


def _to_hwc(a: np.ndarray, channel_axis: int | None) -> tuple[np.ndarray, bool]:
    """(H, W, C) view of a gray (2-D) or multichannel (3-D) image; flag says multichannel."""
    if a.ndim == 2:
        return a[:, :, None], False
    if a.ndim == 3:
        if channel_axis is None:
            raise InputError(f"a 3-D image {a.shape} needs a channel_axis (stacks: score each plane)")
        if not -3 <= channel_axis < 3:
            raise InputError(f"channel_axis={channel_axis} out of range for shape {a.shape}")
        return np.moveaxis(a, channel_axis, -1), True
    raise InputError(
        f"expected a 2-D gray or 3-D multichannel image, got shape {a.shape} (for Z/T stacks, score each plane)"
    )


def _rgb_hwc(a: np.ndarray, channel_axis: int, what: str) -> np.ndarray:
    hwc, multi = _to_hwc(a, channel_axis)
    if not multi or hwc.shape[-1] != 3:
        raise InputError(f"{what} needs an RGB image with 3 channels, got shape {a.shape}")
    return hwc


# ----------------------------------------------------------------------------------------
# conventions


def rgb_to_y(img, data_range: float | None = None, *, channel_axis: int = -1) -> np.ndarray:
    """BT.601 luma Y (studio swing) as MATLAB's ``rgb2ycbcr``: the SR papers' "Y channel".

    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` for R, G, B in 0..255; for other
    ranges the same formula is applied on the 0..255 scale and the result is scaled back,
    so Y is float64 in the input's scale (16..235 for ``data_range=255``, 16/255..235/255
    for 1.0). Not rounded, matching the common Python SR evaluation code.
    """
    arr = np.asarray(img)
    r = _resolve_range(data_range, arr)
    x = _rgb_hwc(_as_image(arr, "image"), channel_axis, "rgb_to_y")
    k = np.array([65.481, 128.553, 24.966]) / 255.0
    return x @ k + 16.0 * r / 255.0


def shave(img, border: int, *, channel_axis: int | None = -1) -> np.ndarray:
    """Drop ``border`` pixels from each side of the spatial axes (SR convention: ``scale``).

    Gray (2-D): both axes; 3-D: the two axes other than ``channel_axis``.
    """
    arr = np.asarray(img)
    if isinstance(border, bool) or int(border) != border or border < 0:
        raise InputError(f"border must be a non-negative integer, got {border!r}")
    b = int(border)
    if arr.ndim not in (2, 3):
        raise InputError(f"expected a 2-D or 3-D image, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"image is empty (shape {arr.shape})")
    if b == 0:
        return arr
    if arr.ndim == 3:
        if channel_axis is None or not -3 <= channel_axis < 3:
            raise InputError(f"channel_axis={channel_axis} invalid for shape {arr.shape}")
        spatial = [ax for ax in range(3) if ax != channel_axis % 3]
    else:
        spatial = [0, 1]
    if any(arr.shape[ax] <= 2 * b for ax in spatial):
        raise InputError(f"border {b} leaves nothing of an image of shape {arr.shape}")
    sl = [slice(None)] * arr.ndim
    for ax in spatial:
        sl[ax] = slice(b, arr.shape[ax] - b)
    return arr[tuple(sl)]


# ----------------------------------------------------------------------------------------
# pixel metrics


def rmse(a, b, data_range: float | None = None) -> float:
    """Root-mean-square error over all pixels and channels.

    Without ``data_range``: in the images' own units. With it: expressed on the 8-bit
    0..255 scale (``rmse * 255 / data_range``), so values from uint16 or 0..1 float images
    read like the RMSE tables of SR papers.
    """
    x, y = _pair(a, b)
    e = math.sqrt(float(np.mean((x - y) ** 2)))
    if data_range is None:
        return e
    return e * 255.0 / _resolve_range(data_range)


def psnr(a, b, data_range: float | None = None) -> float:
    """PSNR in dB, ``10 log10(data_range^2 / MSE)`` over all values; ``inf`` if identical."""
    x, y = _pair(a, b)
    r = _resolve_range(data_range, a, b)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(r * r / mse)


_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # 11x11 window: MATLAB fspecial('gaussian', 11, 1.5), skimage truncate=3.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _ssim_window() -> np.ndarray:
    t = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / _SSIM_SIGMA) ** 2)
    return g / g.sum()


def ssim(a, b, data_range: float | None = None, *, channel_axis: int | None = -1) -> float:
    """Mean SSIM (Wang et al. 2004) as in the SR convention and MATLAB's ``ssim_index``.

    11x11 Gaussian window (sigma 1.5), K1=0.01, K2=0.03, population (co)variances, the map
    averaged over the valid region (5 px in from each edge), no downsampling; multichannel:
    mean over channels. Equals ``skimage.metrics.structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=...)``.
    """
    x, y = _pair(a, b)
    r = _resolve_range(data_range, a, b)
    x, _ = _to_hwc(x, channel_axis)
    y, _ = _to_hwc(y, channel_axis)
    if min(x.shape[:2]) < 2 * _SSIM_RADIUS + 1:
        raise InputError(f"SSIM needs images of at least 11x11 pixels, got {x.shape[:2]}")
    g = _ssim_window()
    stack = np.stack([x, y, x * x, y * y, x * y])  # (5, H, W, C)
    # 'valid' filtering: correlate along H then W, keeping only fully covered positions.
    stack = ndi.correlate1d(stack, g, axis=1, mode="reflect")
    stack = ndi.correlate1d(stack, g, axis=2, mode="reflect")
    p = _SSIM_RADIUS
    ux, uy, uxx, uyy, uxy = stack[:, p:-p, p:-p, :]
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (_SSIM_K1 * r) ** 2
    c2 = (_SSIM_K2 * r) ** 2
    smap = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(np.mean(smap.reshape(-1, smap.shape[-1]).mean(axis=0)))


# ----------------------------------------------------------------------------------------
# FSIM (Zhang, Zhang, Mou & Zhang, IEEE TIP 2011), following the authors' FeatureSIM.m and
# their phasecong2.m (Kovesi's phase congruency, PC_2 measure).

_PC_NSCALE = 4
_PC_NORIENT = 4
_PC_MIN_WAVELENGTH = 6
_PC_MULT = 2.0
_PC_SIGMA_ONF = 0.55
_PC_DTHETA_ON_SIGMA = 1.2
_PC_K = 2.0
_PC_EPSILON = 1e-4
_FSIM_T1, _FSIM_T2, _FSIM_T3, _FSIM_T4, _FSIM_LAMBDA = 0.85, 160.0, 200.0, 200.0, 0.03
_FSIM_MIN_SIZE = 8


def _freq_range(n: int) -> np.ndarray:
    # Kovesi's normalised frequency coordinates (odd/even handled as in the MATLAB code).
    if n % 2:
        return np.arange(-(n - 1) / 2, (n - 1) / 2 + 1) / (n - 1)
    return np.arange(-n / 2, n / 2) / n


@lru_cache(maxsize=4)
def _pc_bank(rows: int, cols: int):
    """Log-Gabor filters (S, O, H, W) and per-orientation noise-model constants."""
    x, y = np.meshgrid(_freq_range(cols), _freq_range(rows))
    radius = np.fft.ifftshift(np.sqrt(x * x + y * y))
    theta = np.fft.ifftshift(np.arctan2(-y, x))
    lp = 1.0 / (1.0 + (radius / 0.45) ** 30)  # lowpassfilter([rows cols], .45, 15)
    radius[0, 0] = 1.0
    sin_t, cos_t = np.sin(theta), np.cos(theta)

    log_sig2 = 2.0 * math.log(_PC_SIGMA_ONF) ** 2
    log_gabor = np.empty((_PC_NSCALE, rows, cols))
    for s in range(_PC_NSCALE):
        fo = 1.0 / (_PC_MIN_WAVELENGTH * _PC_MULT**s)
        lg = np.exp(-(np.log(radius / fo) ** 2) / log_sig2) * lp
        lg[0, 0] = 0.0
        log_gabor[s] = lg

    theta_sigma = math.pi / _PC_NORIENT / _PC_DTHETA_ON_SIGMA
    spread = np.empty((_PC_NORIENT, rows, cols))
    for o in range(_PC_NORIENT):
        ang = o * math.pi / _PC_NORIENT
        ds = sin_t * math.cos(ang) - cos_t * math.sin(ang)
        dc = cos_t * math.cos(ang) + sin_t * math.sin(ang)
        dtheta = np.abs(np.arctan2(ds, dc))
        spread[o] = np.exp(-(dtheta**2) / (2 * theta_sigma**2))

    filters = log_gabor[:, None] * spread[None, :]  # (S, O, H, W)
    # Noise model constants (depend on the filters only).
    even = sfft.ifft2(filters, axes=(-2, -1)).real * math.sqrt(rows * cols)  # spatial even filters
    em_n = (filters[0] ** 2).sum(axis=(-2, -1))  # (O,)
    sum_an2 = (even**2).sum(axis=(0, 2, 3))  # (O,)
    sum_aiaj = np.zeros(_PC_NORIENT)
    for si in range(_PC_NSCALE - 1):
        for sj in range(si + 1, _PC_NSCALE):
            sum_aiaj += (even[si] * even[sj]).sum(axis=(-2, -1))
    filters.setflags(write=False)
    return filters, em_n, sum_an2, sum_aiaj


def phase_congruency(img) -> np.ndarray:
    """Phase congruency map in [0, 1] of a 2-D gray image (FSIM's ``phasecong2``).

    Kovesi's log-Gabor implementation with FSIM's parameters (4 scales from wavelength 6,
    mult 2, sigmaOnf 0.55, 4 orientations, dThetaOnSigma 1.2, noise k 2, epsilon 1e-4).
    Largely contrast invariant; the FFT makes the image periodic, so borders see wrap-around.
    """
    im = _as_image(img, "image")
    if im.ndim != 2:
        raise InputError(f"phase_congruency needs a 2-D image, got shape {im.shape}")
    rows, cols = im.shape
    if min(rows, cols) < _FSIM_MIN_SIZE:
        raise InputError(f"image {rows}x{cols} too small for phase congruency (min 8 px)")
    filters, em_n, sum_an2, sum_aiaj = _pc_bank(rows, cols)
    # The filters are zero at DC, so removing the mean changes nothing mathematically but
    # makes flat images give exactly zero response instead of FFT round-off noise.
    imfft = sfft.fft2(im - im.mean())
    energy_all = np.zeros((rows, cols))
    an_all = np.zeros((rows, cols))
    for o in range(_PC_NORIENT):
        eo = sfft.ifft2(imfft[None] * filters[:, o], axes=(-2, -1))  # (S, H, W)
        e, od = eo.real, eo.imag
        an = np.abs(eo)
        sum_e, sum_o = e.sum(axis=0), od.sum(axis=0)
        x_energy = np.sqrt(sum_e**2 + sum_o**2) + _PC_EPSILON
        mean_e, mean_o = sum_e / x_energy, sum_o / x_energy
        energy = (e * mean_e + od * mean_o - np.abs(e * mean_o - od * mean_e)).sum(axis=0)

        median_e2n = float(np.median(an[0] ** 2))
        mean_e2n = -median_e2n / math.log(0.5)
        noise_power = mean_e2n / em_n[o]
        est_noise_energy2 = 2 * noise_power * sum_an2[o] + 4 * noise_power * sum_aiaj[o]
        tau = math.sqrt(max(est_noise_energy2, 0.0) / 2)
        est_noise_energy = tau * math.sqrt(math.pi / 2)
        est_noise_sigma = math.sqrt((2 - math.pi / 2) * tau**2)
        t = (est_noise_energy + _PC_K * est_noise_sigma) / 1.7  # empirical PC_2 rescaling
        energy_all += np.maximum(energy - t, 0.0)
        an_all += an.sum(axis=0)
    pc = np.zeros_like(energy_all)
    np.divide(energy_all, an_all, out=pc, where=an_all > 0)
    return pc


def _box_same_subsample(x: np.ndarray, f: int) -> np.ndarray:
    """MATLAB ``conv2(x, fspecial('average', f), 'same')`` then ``x(1:f:end, 1:f:end)``."""
    if f == 1:
        return x
    lo, hi = f - 1 - f // 2, f // 2  # 'same' window alignment for even f as in conv2
    for axis in (0, 1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (lo + 1, hi)  # +1: leading zero for the cumulative-sum difference
        c = np.cumsum(np.pad(x, pad), axis=axis)
        n = x.shape[axis]
        x = (np.take(c, np.arange(f, n + f), axis=axis) - np.take(c, np.arange(n), axis=axis)) / f
    return x[::f, ::f]


_SCHARR_X = np.array([[3, 0, -3], [10, 0, -10], [3, 0, -3]], dtype=np.float64) / 16.0


def _gradient_magnitude(y: np.ndarray) -> np.ndarray:
    # conv2(..., 'same') with zero padding; the kernel flip only changes the sign.
    gx = ndi.correlate(y, _SCHARR_X, mode="constant", cval=0.0)
    gy = ndi.correlate(y, _SCHARR_X.T, mode="constant", cval=0.0)
    return np.sqrt(gx * gx + gy * gy)


def _fsim_core(a255: np.ndarray, b255: np.ndarray, color: bool) -> tuple[float, float]:
    """FSIM and FSIMc of two images on the 0..255 scale, (H, W) or (H, W, 3) if ``color``."""
    rows, cols = a255.shape[:2]
    f = max(1, int(math.floor(min(rows, cols) / 256 + 0.5)))  # MATLAB round (half away)
    if color:
        luma = np.array([0.299, 0.587, 0.114])
        iq = np.array([[0.596, -0.274, -0.322], [0.211, -0.523, 0.312]]).T
        y1, y2 = a255 @ luma, b255 @ luma
        i1, q1 = np.moveaxis(a255 @ iq, -1, 0)
        i2, q2 = np.moveaxis(b255 @ iq, -1, 0)
    else:
        y1, y2 = a255, b255
    y1, y2 = _box_same_subsample(y1, f), _box_same_subsample(y2, f)
    if min(y1.shape) < _FSIM_MIN_SIZE:
        raise InputError(f"image {rows}x{cols} too small for FSIM (min 8 px)")
    pc1, pc2 = phase_congruency(y1), phase_congruency(y2)
    g1, g2 = _gradient_magnitude(y1), _gradient_magnitude(y2)
    pc_sim = (2 * pc1 * pc2 + _FSIM_T1) / (pc1**2 + pc2**2 + _FSIM_T1)
    g_sim = (2 * g1 * g2 + _FSIM_T2) / (g1**2 + g2**2 + _FSIM_T2)
    pcm = np.maximum(pc1, pc2)
    wsum = float(pcm.sum())
    if wsum <= 0.0:
        # No phase-congruent feature anywhere (flat images): the reference divides 0/0;
        # weigh all pixels equally instead.
        pcm = np.ones_like(pcm)
        wsum = float(pcm.size)
    sim = g_sim * pc_sim
    fs = float((sim * pcm).sum() / wsum)
    if not color:
        return fs, fs  # the reference's FSIMc equals FSIM for gray images
    i1, i2 = _box_same_subsample(i1, f), _box_same_subsample(i2, f)
    q1, q2 = _box_same_subsample(q1, f), _box_same_subsample(q2, f)
    i_sim = (2 * i1 * i2 + _FSIM_T3) / (i1**2 + i2**2 + _FSIM_T3)
    q_sim = (2 * q1 * q2 + _FSIM_T4) / (q1**2 + q2**2 + _FSIM_T4)
    iq_sim = i_sim * q_sim
    # real((I*Q)^lambda) as in MATLAB, where a negative base gives a complex power.
    chroma = np.abs(iq_sim) ** _FSIM_LAMBDA * np.where(iq_sim < 0, math.cos(math.pi * _FSIM_LAMBDA), 1.0)
    fsc = float((sim * chroma * pcm).sum() / wsum)
    return fs, fsc


def _fsim_prepare(a, b, data_range, channel_axis):
    x, y = _pair(a, b)
    r = _resolve_range(data_range, a, b)
    x, multi = _to_hwc(x, channel_axis)
    y, _ = _to_hwc(y, channel_axis)
    s = 255.0 / r  # FSIM's constants (T2 = 160...) assume the 0..255 scale
    return x * s, y * s, multi


def fsim(a, b, data_range: float | None = None, *, channel_axis: int | None = -1, rgb: bool | None = None) -> float:
    """FSIM (Zhang et al. 2011): phase-congruency-weighted similarity of PC and gradients.

    As the authors' ``FeatureSIM.m``: images rescaled to 0..255 via ``data_range``, box
    filtered and subsampled by ``F = max(1, round(min(H, W) / 256))``, Scharr gradients,
    T1=0.85, T2=160. RGB (3 channels, unless ``rgb=False``): FSIM of the 0.299/0.587/0.114
    luma. Other multichannel images: mean of per-channel FSIM. In (0, 1]; 1 if identical.
    """
    x, y, multi = _fsim_prepare(a, b, data_range, channel_axis)
    c = x.shape[-1]
    if multi and c == 3 and rgb is not False:
        return _fsim_core(x, y, color=True)[0]
    if rgb and not (multi and c == 3):
        raise InputError(f"rgb=True needs a 3-channel image, got shape {np.shape(a)}")
    return float(np.mean([_fsim_core(x[..., k], y[..., k], color=False)[0] for k in range(c)]))


def fsimc(a, b, data_range: float | None = None, *, channel_axis: int | None = -1) -> float:
    """FSIMc: FSIM with the YIQ chroma term (T3=T4=200, lambda=0.03) of the reference code.

    RGB images only, except that a gray (2-D) image gives FSIM, as the reference does.
    """
    x, y, multi = _fsim_prepare(a, b, data_range, channel_axis)
    if not multi:
        return _fsim_core(x[..., 0], y[..., 0], color=False)[1]
    if x.shape[-1] != 3:
        raise InputError(f"FSIMc needs an RGB image with 3 channels, got shape {np.shape(a)}")
    return _fsim_core(x, y, color=True)[1]


# ----------------------------------------------------------------------------------------
# one-call evaluation


def compare(
    sr,
    hr,
    *,
    data_range: float | None = None,
    y_channel: bool = False,
    border: int = 0,
    channel_axis: int | None = -1,
    rgb: bool | None = None,
) -> dict:
    """All metrics of ``sr`` against the reference ``hr`` under one stated convention.

    ``y_channel=True`` (the SR papers' convention, needs RGB): RMSE/PSNR/SSIM on BT.601 Y
    (:func:`rgb_to_y`); FSIM on the reference code's own luma of the RGB image; no FSIMc.
    ``y_channel=False``: RMSE/PSNR over all channels, SSIM averaged over channels, FSIM and,
    for RGB, FSIMc. ``border`` pixels are shaved from every side first (use the SR scale).
    RMSE is reported on the 0..255 scale. Returns ``{"rmse", "psnr", "ssim", "fsim",
    ["fsimc"], "convention"}``; ``convention`` is a sentence to print next to the numbers.
    """
    sr_arr, hr_arr = np.asarray(sr), np.asarray(hr)
    if sr_arr.shape != hr_arr.shape:
        raise InputError(f"SR and HR differ in shape: {sr_arr.shape} vs {hr_arr.shape}")
    r = _resolve_range(data_range, sr_arr, hr_arr)
    x, y = _pair(sr_arr, hr_arr)
    x = shave(x, border, channel_axis=channel_axis)
    y = shave(y, border, channel_axis=channel_axis)
    n_ch = _to_hwc(x, channel_axis)[0].shape[-1] if x.ndim == 3 else 1
    is_rgb = n_ch == 3 and rgb is not False
    if y_channel:
        if not is_rgb:
            raise InputError(f"y_channel=True needs an RGB image with 3 channels, got shape {sr_arr.shape}")
        px, py = rgb_to_y(x, r, channel_axis=channel_axis), rgb_to_y(y, r, channel_axis=channel_axis)
        ssim_ax = None
    else:
        px, py, ssim_ax = x, y, channel_axis
    out = {
        "rmse": rmse(px, py, data_range=r),
        "psnr": psnr(px, py, data_range=r),
        "ssim": ssim(px, py, data_range=r, channel_axis=ssim_ax),
        "fsim": fsim(x, y, data_range=r, channel_axis=channel_axis, rgb=rgb),
    }
    if is_rgb and not y_channel:
        out["fsimc"] = fsimc(x, y, data_range=r, channel_axis=channel_axis)
    where = (
        "Y channel (BT.601, 16-235)"
        if y_channel
        else ("RGB, all channels" if is_rgb else ("gray" if x.ndim == 2 else "per channel, averaged"))
    )
    out["convention"] = (
        f"{where}; {border} px border shaved; data range {r:g}; RMSE on the 0-255 scale; "
        "SSIM 11x11 Gaussian sigma 1.5, K1=0.01, K2=0.03, valid region; "
        "FSIM per Zhang et al. 2011 reference code"
        + (" (on its 0.299/0.587/0.114 luma)" if is_rgb else "")
        + (" and FSIMc" if "fsimc" in out else "")
    )
    return out


# ----------------------------------------------------------------------------------------
# no-reference: false texture on native input (no HR exists)


def overshoot(lr, sr, scale: int = 4, *, data_range: float | None = None) -> tuple[float, float]:
    """``(mean, p99.9)`` of how far each output pixel leaves the range of its 3x3 LR neighbourhood.

    Why: native data (a microscope frame, a satellite tile) has no HR to score against, but an
    upscaler that stays faithful keeps each output pixel between the min and max of the LR
    pixels around the one it came from; dark holes, bright fringes and "worms" a model draws
    into noise leave that range. Bicubic overshoots a little by construction. Gray (2-D) is
    measured on its values, RGB ((H, W, 3)) on BT.601 Y; both on the 0..255 scale (grey
    levels): values are multiplied by ``255 / data_range`` (default: the dtype's range for
    integers, 255 for floats, so pass ``data_range`` for float data in 0..1). The outermost
    ``2 * scale`` output pixels are left out (their LR neighbourhood is one-sided).
    """
    lr_a, sr_a = np.asarray(lr), np.asarray(sr)
    s = int(scale)
    if s < 1 or s != scale:
        raise InputError(f"scale must be a positive integer, got {scale!r}")
    if lr_a.ndim not in (2, 3) or sr_a.ndim != lr_a.ndim:
        raise InputError(f"overshoot needs a 2-D gray or (H, W, 3) RGB pair, got {lr_a.shape} and {sr_a.shape}")
    want = (lr_a.shape[0] * s, lr_a.shape[1] * s, *lr_a.shape[2:])
    if sr_a.shape != want:
        raise InputError(f"SR shape {sr_a.shape} is not LR shape {lr_a.shape} times {s} (expected {want})")
    if data_range is None:
        data_range = data_range_for(lr_a) if lr_a.dtype.kind in "biu" else 255.0
    k = 255.0 / positive_number(data_range, "data_range")
    if lr_a.ndim == 2:
        ylr, ysr = lr_a.astype(np.float64) * k, sr_a.astype(np.float64) * k
    else:
        ylr, ysr = rgb_to_y(lr_a.astype(np.float64) * k, 255.0), rgb_to_y(sr_a.astype(np.float64) * k, 255.0)
    if min(ylr.shape) <= 4:
        raise InputError(f"overshoot needs an LR of at least 5x5 pixels, got {lr_a.shape}")
    lo = np.kron(ndi.minimum_filter(ylr, 3, mode="nearest"), np.ones((s, s)))
    hi = np.kron(ndi.maximum_filter(ylr, 3, mode="nearest"), np.ones((s, s)))
    ex = np.maximum(ysr - hi, 0) + np.maximum(lo - ysr, 0)
    b = 2 * s
    ex = ex[b:-b, b:-b]
    return float(ex.mean()), float(np.percentile(ex, 99.9))
