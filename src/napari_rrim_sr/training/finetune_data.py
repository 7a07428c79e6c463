"""Fine-tuning data and its measurements: planes from layers or files, the held-out split, the
data's noise statistics and the degradations chosen from them, the time budget, and held-out
scoring. :mod:`.finetune` runs the fine-tune on top of these."""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_rrim_sr.errors import InputError
from napari_rrim_sr.training.data import Degradations, decode_image, find_images, map_channels, to_unit_storage

log = logging.getLogger(__name__)

#: (batch, HR patch) candidates, largest first; the first that fits MIN_STEPS in the budget is used
BUDGET_LADDER = ((16, 128), (8, 128), (8, 96), (4, 96), (4, 64), (2, 64))
MIN_STEPS = 300
HELDOUT_FRACTION = 0.2
#: how the fine-tuning data were scaled to 0..1 (stored in the weights; upscale new data the same way)
NORMALIZATION = (
    "8-bit data: dtype range (/255); other data: 0.1-99.9 percentiles per file, layer or pair "
    "image (upscale 16-bit or float data with percentile normalisation)"
)


# -- data ---------------------------------------------------------------------------------------


@dataclass
class Planes:
    """2D samples in 0..1, each (H, W, C) float32, with a description of where they came from."""

    planes: list[np.ndarray]
    sources: list[str]
    bits: int = 16

    def describe(self) -> str:
        shapes = sorted({f"{p.shape[1]}x{p.shape[0]}" for p in self.planes})
        return f"{len(self.planes)} plane(s) ({', '.join(shapes[:3])}) from {', '.join(self.sources[:4])}" + (
            " ..." if len(self.sources) > 4 else ""
        )


def _unit(arr: np.ndarray, normalize: str = "auto") -> tuple[np.ndarray, int]:
    stored, bits = to_unit_storage(arr, normalize)
    return stored.astype(np.float32) / (255.0 if bits == 8 else 65535.0), bits


def _unit_named(arr: np.ndarray, normalize: str, name) -> tuple[np.ndarray, int]:
    """:func:`_unit` with the image named: a constant image is one line, and NaN/Inf pixels
    (replaced before training: NaN by the range's low end, +-Inf clipped) are said, not hidden."""
    if arr.dtype.kind == "f":
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            log.warning(
                "%s: %d of %d values are NaN/Inf; for fine-tuning NaN is replaced by the low end of the "
                "intensity range and +-Inf is clipped to it",
                name,
                bad,
                arr.size,
            )
    try:
        return _unit(arr, normalize)
    except ValueError as exc:
        raise InputError(f"{name}: {exc}; there is nothing to learn from it, leave it out") from None


def load_planes(sources: Sequence[Any], *, channels: int = 1, normalize: str = "auto") -> Planes:
    """Arrays (2D, YXC with C = 3/4, or a stack: its first axis are samples) and/or image paths."""
    planes: list[np.ndarray] = []
    names: list[str] = []
    bits_seen = []
    for src in sources:
        if isinstance(src, (str, Path)):
            files, problems = find_images([src])
            if not files:
                raise InputError(f"no images in {src}" + (f": {problems[0][1]}" if problems else ""))
            for f in files:
                dec = decode_image(f)
                arr = map_channels(dec, channels)  # (N, H, W, C)
                u, bits = _unit_named(arr, normalize, f)
                planes.extend(list(u))
                bits_seen.append(bits)
                names.append(Path(f).name)
            continue
        a = np.asarray(src)
        if a.ndim == 2:
            a = a[None, :, :, None]
        elif a.ndim == 3 and a.shape[-1] in (3, 4) and min(a.shape[:2]) > 4:
            a = a[None]
        elif a.ndim == 3:
            a = a[..., None]
        elif a.ndim != 4:
            raise InputError(f"fine-tuning data must be 2D images or stacks of them, got shape {a.shape}")
        from napari_rrim_sr.training.data import Decoded

        arr = map_channels(Decoded(a, a.shape[-1] in (3, 4)), channels)
        u, bits = _unit_named(arr, normalize, f"array{tuple(np.shape(src))}")
        planes.extend(list(u))
        bits_seen.append(bits)
        names.append(f"array{tuple(np.shape(src))}")
    if not planes:
        raise InputError("no fine-tuning data given")
    return Planes(planes, names, min(bits_seen) if bits_seen else 16)


@dataclass
class Split:
    train: list[np.ndarray]
    heldout: list[np.ndarray]
    how: str


def split_heldout(
    planes: Sequence[np.ndarray], *, patch_size: int, scale: int, fraction: float = HELDOUT_FRACTION
) -> Split:
    """Held-out planes (several planes) or a held-out region (one plane); see the module doc."""
    n = len(planes)
    if n >= 2:
        k = max(1, round(fraction * n))
        gap = 1 if n - k - 1 >= 2 else 0
        return Split(
            list(planes[: n - k - gap]),
            list(planes[n - k :]),
            f"planes {n - k}..{n - 1} of {n} held out" + (f", plane {n - k - 1} skipped as a gap" if gap else ""),
        )
    p = planes[0]
    h, w = p.shape[:2]
    cut = int(w * (1 - max(fraction, 0.25))) // scale * scale
    gap = 2 * scale * 4
    if cut - gap < patch_size or w - cut < 8 * scale:
        raise InputError(
            f"one {w}x{h} image is too small to hold out a region and still train on "
            f"{patch_size}-px patches: give a larger image or several"
        )
    return Split(
        [p[:, : cut - gap]], [p[:, cut:]], f"the right {w - cut} of {w} columns held out ({gap}-px gap before them)"
    )


# -- statistics and degradations ----------------------------------------------------------------


@dataclass
class DataStats:
    """What the data looks like, in 0..1 units of the normalised planes."""

    noise_sigma: float  #: white-noise σ in flat regions (model_choice.measure_condition)
    whiteness: float
    noisy: bool
    shot_slope: float  #: d(variance)/d(mean) of the local noise: 1 / photons at full scale
    read_var: float  #: the variance at zero signal (intercept)
    mean_level: float  #: median intensity

    @property
    def photons(self) -> float:
        return 1.0 / self.shot_slope if self.shot_slope > 0 else float("inf")

    def describe(self) -> str:
        s = f"flat-region noise σ {100 * self.noise_sigma:.2f} % of range ({'noise' if self.noisy else 'clean'})"
        if math.isfinite(self.photons):
            s += f", shot noise ≈ {self.photons:.0f} photons at full scale"
        return s

    def as_dict(self) -> dict:
        d = asdict(self)
        d["photons"] = self.photons if math.isfinite(self.photons) else None
        return d


def _mean_variance(q: np.ndarray, b: int = 8) -> tuple[float, float]:
    """Fit local noise variance = slope * local mean + intercept over the flattest blocks per
    intensity bin (the Haar diagonal detail: white noise passes, smooth structure does not)."""
    q = q[: q.shape[0] // (2 * b) * 2 * b, : q.shape[1] // (2 * b) * 2 * b]
    a, bb, c, d = q[0::2, 0::2], q[0::2, 1::2], q[1::2, 0::2], q[1::2, 1::2]
    hh, low = (a - bb - c + d) / 2, (a + bb + c + d) / 4
    nh, nw = hh.shape[0] // b, hh.shape[1] // b
    if nh * nw < 20:
        return 0.0, 0.0

    def blk(x):
        return x[: nh * b, : nw * b].reshape(nh, b, nw, b).transpose(0, 2, 1, 3).reshape(nh * nw, -1)

    var = (np.median(np.abs(blk(hh)), axis=1) / 0.6745) ** 2
    mean = blk(low).mean(axis=1)
    edges = np.quantile(mean, np.linspace(0, 1, 11))
    xs, ys = [], []
    for lo, hi in itertools.pairwise(edges):
        sel = (mean >= lo) & (mean <= hi)
        if sel.sum() >= 5:
            xs.append(float(np.median(mean[sel])))
            ys.append(float(np.quantile(var[sel], 0.25)))  # the flattest blocks of this level
    if len(xs) < 3:
        return 0.0, 0.0
    slope, intercept = np.polyfit(xs, ys, 1)
    return max(0.0, float(slope)), max(0.0, float(intercept))


def measure_statistics(planes: Sequence[np.ndarray], max_planes: int = 4) -> DataStats:
    """Noise statistics of up to ``max_planes`` planes spread over the data (medians)."""
    from napari_rrim_sr.registry.choice import measure_condition

    idx = np.unique(np.linspace(0, len(planes) - 1, min(max_planes, len(planes))).round().astype(int))
    conds, fits, means = [], [], []
    for i in idx:
        g = planes[i].mean(axis=-1) if planes[i].ndim == 3 else planes[i]
        conds.append(measure_condition(g))
        fits.append(_mean_variance(g.astype(np.float64)))
        means.append(float(np.median(g)))
    sigma = float(np.median([c.noise_sigma for c in conds]))
    white = float(np.median([c.whiteness for c in conds]))
    noisy = sum(c.noisy for c in conds) * 2 > len(conds)
    slope = float(np.median([f[0] for f in fits]))
    read = float(np.median([f[1] for f in fits]))
    return DataStats(sigma, white, noisy, slope, read, float(np.median(means)))


def choose_degradations(
    stats: DataStats,
    *,
    kind: str = "auto",
    blur: bool = False,
    photons: float | None = None,
    read_sigma: float | None = None,
) -> tuple[Degradations, str]:
    """Degradations for unpaired fine-tuning and a sentence saying why.

    ``kind``: ``auto`` (from ``stats``), ``clean``, ``shot``, ``read`` or ``shot+read``;
    ``photons`` (at full scale) and ``read_sigma`` (0..1 units) override the measured values.
    Ranges span a factor of about 2 around the estimate, so the model tolerates the error.
    """
    if kind not in ("auto", "clean", "shot", "read", "shot+read"):
        raise InputError(f"degradations must be auto, clean, shot, read or shot+read, not {kind!r}")
    peak = photons if photons is not None else stats.photons
    # shot noise matters when it dominates the variance at the median level
    shot_matters = math.isfinite(peak) and stats.shot_slope * max(stats.mean_level, 0.05) > stats.read_var
    # read noise: the flat-region σ, unless shot noise is present (that σ then holds the
    # background's shot noise too): the variance at zero signal
    sigma = read_sigma if read_sigma is not None else (math.sqrt(stats.read_var) if shot_matters else stats.noise_sigma)
    if kind == "auto":
        if not stats.noisy:
            kind = "clean"
        elif shot_matters:
            kind = "shot+read" if sigma >= 0.002 else "shot"
        else:
            kind = "read"
    deg = Degradations()
    parts = []
    if "read" in kind:
        s255 = max(0.5, 255.0 * max(sigma, 0.002))
        deg.noise_sigma = (round(0.6 * s255, 2), round(1.5 * s255, 2))
        parts.append(f"Gaussian read noise σ {deg.noise_sigma[0]:g}-{deg.noise_sigma[1]:g} of 255")
    if "shot" in kind:
        p = peak if math.isfinite(peak) and peak > 0 else 200.0
        p = float(np.clip(p, 5.0, 1e5))
        deg.poisson_peak = (round(0.5 * p, 1), round(2.0 * p, 1))
        parts.append(f"Poisson noise at {deg.poisson_peak[0]:g}-{deg.poisson_peak[1]:g} photons at full scale")
    if blur:
        deg.blur_sigma, deg.blur_prob = (0.2, 1.2), 0.5
        parts.append("HR blur σ 0.2-1.2 px (p 0.5)")
    why = f"{kind}: " + ("; ".join(parts) if parts else "bicubic x1/s only") + f" (measured: {stats.describe()})"
    return deg, why


def synthesize_lr(
    hr: np.ndarray, deg: Degradations, scale: int, rng: np.random.Generator, bits: int = 16
) -> np.ndarray:
    """LR of an (H, W, C) 0..1 HR plane with the training degradations (one draw), (H/s, W/s, C)."""
    import torch

    from napari_rrim_sr.engine.bicubic import imresize_torch
    from napari_rrim_sr.training.data import gaussian_blur

    s = int(scale)
    h, w = hr.shape[0] // s * s, hr.shape[1] // s * s
    t = torch.from_numpy(np.ascontiguousarray(hr[:h, :w].transpose(2, 0, 1), dtype=np.float32))
    if deg.blur and rng.random() < deg.blur_prob:
        t = gaussian_blur(t, float(rng.uniform(*deg.blur_sigma)))
    lr = imresize_torch(t, 1.0 / s, antialias=True)
    if deg.noise_sigma[1] > 0 and rng.random() < deg.noise_prob:
        lr = lr + float(rng.uniform(*deg.noise_sigma)) / 255.0 * torch.from_numpy(
            rng.standard_normal(lr.shape).astype(np.float32)
        )
    if deg.poisson_peak[1] > 0 and rng.random() < deg.poisson_prob:
        lo, hi = max(deg.poisson_peak[0], 1.0), max(deg.poisson_peak[1], 1.0)
        peak = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        lr = torch.from_numpy(
            (rng.poisson(np.clip(lr.numpy(), 0, None).astype(np.float64) * peak) / peak).astype(np.float32)
        )
    levels = 255.0 if bits == 8 else 65535.0
    lr = (lr.clamp(0, 1) * levels).round() / levels
    return lr.numpy().transpose(1, 2, 0)


def degradation_preview(
    plane: np.ndarray, deg: Degradations, scale: int, *, size: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(real, synthetic)``: a ``size`` px crop of the real data and a synthetic LR patch of the
    same size (made from a ``size*scale`` HR crop), both 2D in 0..1: what the model will be fed
    next to what it was trained on."""
    p = np.asarray(plane, np.float32)
    p = p if p.ndim == 3 else p[..., None]
    h, w = p.shape[:2]
    s = int(scale)
    side = min(size, h // s, w // s)  # the HR crop behind the synthetic patch must fit too
    real = p[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side].mean(-1)
    big = side * s
    y0, x0 = (h - big) // 2 // s * s, (w - big) // 2 // s * s
    syn = synthesize_lr(p[y0 : y0 + big, x0 : x0 + big], deg, s, np.random.default_rng(seed)).mean(-1)
    return real, syn


# -- budget -------------------------------------------------------------------------------------


@dataclass
class Budget:
    steps: int
    batch_size: int
    patch_size: int
    seconds_per_step: float  #: measured at (batch_size, patch_size) or extrapolated by pixels
    measured: dict = field(default_factory=dict)


def time_steps(
    module, *, batch: int, patch: int, scale: int, channels: int, steps: int = 2, precision: str = "fp32"
) -> float:
    """Seconds per training step (forward, L1, backward, Adam) on random data, after one warm-up."""
    import torch

    from napari_rrim_sr.engine import devices

    net = copy.deepcopy(module).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-6)
    x = torch.rand(batch, channels, patch // scale, patch // scale)
    y = torch.rand(batch, channels, patch, patch)
    dev = torch.device("cpu")
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with devices.autocast(dev, precision):
            out = net(x)
        loss = (out.float() - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def plan_budget(
    module,
    minutes: float,
    *,
    scale: int,
    channels: int,
    max_patch: int,
    precision: str = "fp32",
    max_steps: int = 0,
    train_fraction: float = 0.85,
) -> Budget:
    """Steps, batch and patch size for ``minutes`` on this machine (see the module doc)."""
    probe_b, probe_p = 2, 64 if max_patch >= 64 else max_patch // scale * scale
    t = time_steps(module, batch=probe_b, patch=probe_p, scale=scale, channels=channels, precision=precision)
    per_px = t / (probe_b * probe_p**2)
    seconds = max(1.0, 60.0 * minutes * train_fraction)
    ladder = [(b, p) for b, p in BUDGET_LADDER if p <= max_patch] or [(2, probe_p)]
    choice = ladder[-1]
    for b, p in ladder:
        if seconds / (per_px * b * p * p) >= MIN_STEPS:
            choice = b, p
            break
    b, p = choice
    sps = per_px * b * p * p
    measured = {
        "probe": {"batch": probe_b, "patch": probe_p, "seconds_per_step": round(t, 4)},
        "seconds_per_megapixel": round(per_px * 1e6, 3),
    }
    if (b, p) != (probe_b, probe_p) and not max_steps:  # time the chosen size itself (the probe extrapolates)
        sps = time_steps(module, batch=b, patch=p, scale=scale, channels=channels, steps=1, precision=precision)
        measured["chosen"] = {"batch": b, "patch": p, "seconds_per_step": round(sps, 4)}
        if seconds / sps < MIN_STEPS / 2 and ladder.index((b, p)) + 1 < len(ladder):
            b, p = ladder[ladder.index((b, p)) + 1]  # much slower than predicted (a busy machine): one size down
            sps = sps * (b * p * p) / (choice[0] * choice[1] ** 2)
    steps = max(10, int(seconds / sps))
    if max_steps:
        steps = min(steps, int(max_steps))
    return Budget(steps, b, p, sps, measured)


# -- held-out scoring ---------------------------------------------------------------------------


@dataclass
class HeldOut:
    """Fixed held-out (LR, HR) crops, 0..1, (h, w, C) and (s*h, s*w, C)."""

    lr: list[np.ndarray]
    hr: list[np.ndarray]
    how: str

    @property
    def pixels(self) -> int:
        return int(sum(h.shape[0] * h.shape[1] for h in self.hr))


def _crops(hr: np.ndarray, side: int, n: int, scale: int, rng) -> list[tuple[int, int, int, int]]:
    h, w = hr.shape[:2]
    ch, cw = min(side, h) // scale * scale, min(side, w) // scale * scale
    out = []
    for _ in range(n):
        y = scale * int(rng.integers((h - ch) // scale + 1))
        x = scale * int(rng.integers((w - cw) // scale + 1))
        out.append((y, x, ch, cw))
    return out


def make_heldout(
    planes: Sequence[np.ndarray],
    deg: Degradations,
    scale: int,
    *,
    crops: int = 4,
    side: int = 192,
    seed: int = 1234,
    bits: int = 16,
    how: str = "",
) -> HeldOut:
    """``crops`` fixed HR crops over the held-out planes, each with one synthetic LR draw."""
    rng = np.random.default_rng(seed)
    lrs, hrs = [], []
    for k in range(crops):
        p = planes[k % len(planes)]
        y, x, ch, cw = _crops(p, side, 1, scale, rng)[0]
        hr = p[y : y + ch, x : x + cw]
        lrs.append(synthesize_lr(hr, deg, scale, rng, bits))
        hrs.append(hr)
    return HeldOut(lrs, hrs, how)


def heldout_from_pairs(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    scale: int,
    *,
    crops: int = 4,
    side: int = 192,
    seed: int = 1234,
    how: str = "",
) -> HeldOut:
    rng = np.random.default_rng(seed)
    lrs, hrs = [], []
    for k in range(crops):
        lr, hr = pairs[k % len(pairs)]
        y, x, ch, cw = _crops(hr, side, 1, scale, rng)[0]
        hrs.append(hr[y : y + ch, x : x + cw])
        lrs.append(lr[y // scale : (y + ch) // scale, x // scale : (x + cw) // scale])
    return HeldOut(lrs, hrs, how)


def _sr(net, lr: np.ndarray, channels: int) -> np.ndarray:
    import torch

    x = np.ascontiguousarray(lr.transpose(2, 0, 1), np.float32)
    if channels == 3 and x.shape[0] == 1:
        x = np.repeat(x, 3, 0)
    with torch.no_grad():
        y = net(torch.from_numpy(x)[None].to(next(net.parameters()).device)).float().clamp_(0, 1)[0].cpu().numpy()
    if channels == 3 and lr.shape[2] == 1:
        y = y.mean(0, keepdims=True)
    return y.transpose(1, 2, 0)


def score(images: Sequence[np.ndarray], held: HeldOut, scale: int) -> dict:
    """Mean PSNR/SSIM of ``images`` against the held-out HR (0..1 range, ``scale``-px border)."""
    from napari_rrim_sr.quality.metrics import psnr, shave, ssim

    ps, ss = [], []
    for sr, hr in zip(images, held.hr):
        a = shave(sr[..., 0] if sr.shape[2] == 1 else sr, scale, channel_axis=None if sr.shape[2] == 1 else -1)
        b = shave(hr[..., 0] if hr.shape[2] == 1 else hr, scale, channel_axis=None if hr.shape[2] == 1 else -1)
        ps.append(psnr(a, b, data_range=1.0))
        ss.append(ssim(a, b, data_range=1.0, channel_axis=None if a.ndim == 2 else -1))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss))}


def score_model(net, held: HeldOut, scale: int, channels: int) -> dict:
    was = net.training
    net.eval()
    try:
        return score([_sr(net, lr, channels) for lr in held.lr], held, scale)
    finally:
        net.train(was)


def score_bicubic(held: HeldOut, scale: int) -> dict:
    from napari_rrim_sr.engine.bicubic import bicubic_upscale

    return score([np.clip(bicubic_upscale(lr, scale, channel_axis=-1), 0, 1) for lr in held.lr], held, scale)
