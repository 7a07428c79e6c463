"""Fine-tune a registered model on the user's own data, within a time budget, scored on held-out data.

What a user with no GPU can do in minutes: start from any registered weights of the right
channel count, train on their own images (unpaired: LR made from them with degradations
chosen from what the data looks like; or paired: registered real LR/HR pairs), and learn
whether the result beats the model they started from, on data it never trained on.

* **Data**: arrays (2D planes, or stacks whose slices are samples) or image files/folders;
  or LR/HR pairs (:mod:`.pairs`: ratio check, sub-pixel registration, residual, overlap crop).
  Intensities go to 0..1 like the trainer's (8-bit: /255; other: 0.1-99.9 percentiles).
* **Held-out split** (:func:`split_heldout`): whole planes when there are several (the last
  ~20 %, after a one-plane gap, so neighbouring slices of a z-series do not leak), else the
  right-hand quarter of a single image (training uses the rest, minus a gap).
* **Degradations** (:func:`choose_degradations`) from measured statistics
  (:func:`measure_statistics`): white noise in flat regions
  (:func:`napari_rrim_sr.model_choice.measure_condition`) as read noise, the slope of the
  local variance over the local mean as shot noise (photons at full scale = 1 / slope), and
  optional blur. :func:`degradation_preview` shows a synthetic LR patch next to real data.
* **Budget** (:func:`plan_budget`): a few training steps are timed on this machine; the patch
  and batch size are the largest of a ladder that still give enough steps in the budget.
  The trainer's ``max_minutes`` deadline guards against a slower machine later on.
* **Scores**: PSNR/SSIM (0..1 range, ``scale``-px border) on the held-out part for the base
  model, bicubic and the model being trained, periodically (``on_point`` gets each curve
  point) and at the end; ``cancel`` stops early and keeps the best checkpoint so far.
* **Result**: the best weights (by held-out PSNR) are written with the recipe, data
  description and scores in their metadata, registered in the user weights folder, and a
  one-paragraph model card is written beside them. If they do not beat the base model the
  card and the metadata say so (``"beats_base": false``) and callers must not make them the
  default.
"""

from __future__ import annotations

import copy
import datetime as _dt
import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, RRIMError, WeightsError
from .data import Degradations, ImageRecord, PatchDataset, decode_image, find_images, map_channels, to_unit_storage

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
                u, bits = _unit(arr, normalize)
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
        from .data import Decoded

        arr = map_channels(Decoded(a, a.shape[-1] in (3, 4)), channels)
        u, bits = _unit(arr, normalize)
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
    from ..model_choice import measure_condition

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

    from ..bicubic import imresize_torch
    from .data import gaussian_blur

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

    from .. import devices

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
    from ..metrics import psnr, shave, ssim

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
    from ..bicubic import bicubic_upscale

    return score([np.clip(bicubic_upscale(lr, scale, channel_axis=-1), 0, 1) for lr in held.lr], held, scale)


# -- the run ------------------------------------------------------------------------------------


@dataclass
class FinetuneSettings:
    """Everything a fine-tune needs; the widget and the CLI fill one of these."""

    data: list[Any] = field(default_factory=list)
    """Arrays (2D / stacks) or image paths (files, folders) for unpaired fine-tuning."""
    pairs: list[tuple[Any, Any]] = field(default_factory=list)
    """(LR, HR) arrays or paths for paired fine-tuning (used instead of ``data`` when given)."""
    init: str = "rrim-x4-gray"
    """Registered weights id or weights file to start from."""
    minutes: float = 5.0
    """Wall-clock budget of the training part."""
    out: str = ""
    """Run folder (weights, card, trainer run directory); required."""
    name: str = ""
    """Id of the new weights (default: INIT-ft-DATE-TIME)."""
    degradations: str = "auto"
    """auto, clean, shot, read or shot+read (unpaired data)."""
    blur: bool = False
    """Also blur the HR before downscaling (unpaired data)."""
    photons: float | None = None
    """Override the measured photon count at full scale (shot noise)."""
    read_sigma: float | None = None
    """Override the measured read-noise σ (0..1 units)."""
    max_steps: int = 0
    """Cap on the number of steps (0 = from the budget; tests)."""
    batch_size: int = 0
    """0 = from the budget."""
    patch_size: int = 0
    """0 = from the budget."""
    lr: float = 1e-4
    evals: int = 8
    """Held-out evaluations during training (plus the one at the end)."""
    heldout_crops: int = 4
    heldout_side: int = 192
    max_residual: float = 0.5
    """Largest registration residual accepted for a pair."""
    compare: list[str] = field(default_factory=list)
    """Other registered weights to score on the held-out part at the end (e.g. rrim-x4-gray-real)."""
    register: bool = True
    overwrite: bool = False
    seed: int = 0
    threads: int = 0
    precision: str = "fp32"
    device: str = "cpu"


@dataclass
class FinetuneResult:
    name: str
    weights: Path | None
    installed: Path | None
    card: Path | None
    scores: dict  #: {"model": {...}, "base": {...}, "bicubic": {...}, other ids...}
    beats_base: bool
    best_step: int
    steps: int
    status: str  #: completed, cancelled
    curve: list[dict]
    budget: Budget
    recipe: dict

    def table(self) -> str:
        rows = [("model", self.name), ("base", self.recipe.get("init", "")), ("bicubic", "")]
        rows += [(k, k) for k in self.scores if k not in ("model", "base", "bicubic")]
        lines = [f"{'':<8} {'weights':<40} {'PSNR dB':>8} {'SSIM':>7}"]
        for key, label in rows:
            m = self.scores.get(key)
            if m:
                tag = key if key in ("model", "base", "bicubic") else "other"
                lines.append(f"{tag:<8} {label[:40]:<40} {m['psnr']:8.3f} {m['ssim']:7.4f}")
        return "\n".join(lines)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "finetuned"


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def _prepare_pairs(settings: FinetuneSettings, scale: int, say: Callable[[str], None]):
    from .pairs import register_pair

    loaded = []
    for lr_src, hr_src in settings.pairs:
        lr = load_planes([lr_src], channels=1).planes
        hr = load_planes([hr_src], channels=1).planes
        if len(lr) != len(hr):
            raise InputError(f"the LR and HR of a pair have {len(lr)} and {len(hr)} planes")
        for a, b in zip(lr, hr):
            p = register_pair(a[..., 0], b[..., 0], scale, max_residual=settings.max_residual)
            say(
                f"pair {len(loaded)}: HR shifted by ({p.shift[0]:.2f}, {p.shift[1]:.2f}) px, residual {p.residual:.3f}, "
                f"overlap {p.lr.shape[1]}x{p.lr.shape[0]} LR px"
            )
            loaded.append(p)
    return loaded


def finetune(
    settings: FinetuneSettings,
    *,
    on_point: Callable[[dict], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    cancel=None,
    registry=None,
) -> FinetuneResult:
    """Run a fine-tune (see the module doc). ``on_point(point)`` gets each held-out curve point
    (``step``, ``elapsed_s``, ``psnr``, ``ssim``, ``base_psnr``, ``bicubic_psnr``); ``cancel``
    (a ``threading.Event`` or a callable) stops after the current step, keeping the best so far."""
    import torch

    from ..registry import get_registry
    from ..weights_io import load_model
    from .config import TrainConfig
    from .trainer import Trainer

    say = on_status or (lambda msg: log.info("%s", msg))
    if not settings.out:
        raise InputError("fine-tuning needs an output folder (out)")
    if settings.minutes <= 0:
        raise InputError(f"the time budget must be > 0 minutes, got {settings.minutes}")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    registry = registry or get_registry()
    base = load_model(settings.init, registry=registry)
    s, ch = base.scale, base.in_channels
    out = Path(settings.out).expanduser()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = _safe_name(settings.name or f"{base.id or Path(str(settings.init)).stem}-ft-{stamp}")
    from ..registry import user_weights_dir
    from ..safe_write import check_target

    weights_path = out / f"{name}.safetensors"
    check_target(weights_path, overwrite=settings.overwrite)
    if settings.register:
        check_target(user_weights_dir() / f"{name}.safetensors", overwrite=settings.overwrite)

    # -- data, split, degradations, held-out
    paired = bool(settings.pairs)
    t0 = time.perf_counter()
    if paired:
        aligned = _prepare_pairs(settings, s, say)
        pair_arrays = [(a.lr.astype(np.float32)[..., None], a.hr.astype(np.float32)[..., None]) for a in aligned]
        max_patch = min(min(hr.shape[:2]) for _, hr in pair_arrays)
        if len(pair_arrays) >= 2:
            k = max(1, round(HELDOUT_FRACTION * len(pair_arrays)))
            train_pairs, held_pairs = pair_arrays[:-k], pair_arrays[-k:]
            how = f"pairs {len(pair_arrays) - k}..{len(pair_arrays) - 1} of {len(pair_arrays)} held out (real LR)"
        else:
            lr, hr = pair_arrays[0]
            cut = int(lr.shape[1] * 0.75)
            train_pairs, held_pairs = [(lr[:, : cut - 8], hr[:, : (cut - 8) * s])], [(lr[:, cut:], hr[:, cut * s :])]
            how = f"the right {lr.shape[1] - cut} of {lr.shape[1]} LR columns held out (real LR, 8-px gap)"
            max_patch = min(train_pairs[0][1].shape[:2])
        deg, deg_why, stats = None, "real LR/HR pairs (registered by translation)", None
        data_desc = {
            "kind": "paired",
            "pairs": [a.as_dict() for a in aligned],
            "sources": [
                [str(a) if isinstance(a, (str, Path)) else f"array{np.shape(a)}" for a in pr] for pr in settings.pairs
            ],
        }
    else:
        planes = load_planes(settings.data, channels=ch)
        stats = measure_statistics(planes.planes)
        deg, deg_why = choose_degradations(
            stats,
            kind=settings.degradations,
            blur=settings.blur,
            photons=settings.photons,
            read_sigma=settings.read_sigma,
        )
        split = split_heldout(planes.planes, patch_size=min(settings.patch_size or 64, 64), scale=s)
        how = split.how
        max_patch = min(min(p.shape[:2]) for p in split.train)
        data_desc = {
            "kind": "unpaired",
            "sources": planes.sources,
            "description": planes.describe(),
            "train_planes": len(split.train),
            "heldout_planes": len(split.heldout),
            "statistics": stats.as_dict(),
        }
    say(f"data ready in {time.perf_counter() - t0:.1f} s; held-out: {how}; LR: {deg_why}")

    # -- budget
    budget = plan_budget(
        base.module,
        settings.minutes,
        scale=s,
        channels=ch,
        max_patch=max_patch,
        precision=settings.precision,
        max_steps=settings.max_steps,
    )
    if settings.batch_size:
        budget.batch_size = settings.batch_size
    if settings.patch_size:
        budget.patch_size = settings.patch_size
    if budget.patch_size > max_patch:
        raise InputError(f"patch size {budget.patch_size} is larger than the training data ({max_patch} px)")
    say(
        f"budget {settings.minutes:g} min: {budget.steps} steps of {budget.batch_size} x {budget.patch_size} px "
        f"({budget.seconds_per_step:.2f} s/step measured)"
    )

    if paired:
        from .pairs import PairedDataset

        held = heldout_from_pairs(held_pairs, s, crops=settings.heldout_crops, side=settings.heldout_side, how=how)
        dataset = PairedDataset(train_pairs, patch_size=budget.patch_size, scale=s, channels=ch, seed=settings.seed)
    else:
        held = make_heldout(
            split.heldout, deg, s, crops=settings.heldout_crops, side=settings.heldout_side, bits=planes.bits, how=how
        )
        records = []
        for i, p in enumerate(split.train):
            arr = np.rint(np.clip(p, 0, 1) * 65535.0).astype(np.uint16)[None]
            records.append(ImageRecord(f"plane{i}", tuple(arr.shape), 16, arr))
        dataset = PatchDataset(
            records, patch_size=budget.patch_size, scale=s, channels=ch, degradations=deg, seed=settings.seed
        )
        dataset.deg.quantize = True

    base_scores = score_model(base.module, held, s, ch)
    bic_scores = score_bicubic(held, s)
    say(f"held-out before: base {base_scores['psnr']:.3f} dB, bicubic {bic_scores['psnr']:.3f} dB")
    curve: list[dict] = []

    def point(step: int, m: dict, elapsed: float) -> dict:
        p = {
            "step": step,
            "elapsed_s": round(elapsed, 1),
            "psnr": m["psnr"],
            "ssim": m["ssim"],
            "base_psnr": base_scores["psnr"],
            "base_ssim": base_scores["ssim"],
            "bicubic_psnr": bic_scores["psnr"],
        }
        curve.append(p)
        if on_point is not None:
            on_point(dict(p))
        return p

    point(0, base_scores, 0.0)

    # -- train
    eval_every = max(1, budget.steps // max(1, settings.evals))
    warmup = min(50, budget.steps // 10)
    cfg = TrainConfig(
        name=name,
        out=str(out / "run"),
        description="",
        seed=settings.seed,
        data=[str(x) for x in data_desc["sources"]],
        init=str(base.path or settings.init),
        backbone=base.backbone,
        steps=budget.steps,
        batch_size=budget.batch_size,
        patch_size=budget.patch_size,
        lr=settings.lr,
        warmup=warmup,
        ema=0.995,
        schedule="cosine",
        device=settings.device,
        precision=settings.precision,
        threads=settings.threads,
        val_every=0,
        ckpt_every=0,
        keep_ckpts=0,
        log_every=max(1, eval_every),
        progress=False,
        register=False,
        max_minutes=settings.minutes,
    )
    if deg is not None:
        cfg.blur_sigma, cfg.blur_prob = list(deg.blur_sigma), deg.blur_prob
        cfg.noise_sigma, cfg.poisson_peak = list(deg.noise_sigma), list(deg.poisson_peak)
    best = {"psnr": base_scores["psnr"], "ssim": base_scores["ssim"], "step": 0, "state": None}
    state = {"cancelled": False, "eval_s": 0.0, "eval_every": eval_every, "replans": []}
    # without a step cap the loader is made for up to twice the planned steps, and the plan is
    # fitted to the real speed at 10 % and 50 % of the run (replan); the deadline stays the guard
    loader_steps = budget.steps if settings.max_steps else 2 * budget.steps
    replan_at = max(5, budget.steps // 10)
    cfg.steps = loader_steps

    def net_of(tr):
        return tr.ema.module if tr.ema is not None else tr.model

    def evaluate(tr) -> None:
        te = time.perf_counter()
        m = score_model(net_of(tr), held, s, ch)
        state["eval_s"] += time.perf_counter() - te
        point(tr.step, m, tr.elapsed())
        if m["psnr"] > best["psnr"] or best["state"] is None:
            best.update(
                psnr=m["psnr"],
                ssim=m["ssim"],
                step=tr.step,
                state={k: v.detach().cpu().clone() for k, v in net_of(tr).state_dict().items()},
            )

    def replan(tr) -> None:
        """Fit the remaining steps to the remaining time at the speed seen so far (evaluations
        included): the probe ran before training, on a machine whose load may have changed."""
        rate = tr.elapsed() / tr.step
        left = 60.0 * settings.minutes - tr.elapsed() - 2.0 * state["eval_s"] / max(1, len(curve) - 1)
        total = min(loader_steps, max(tr.step + 1, tr.step + int(left / rate)))
        state["replans"].append({"at_step": tr.step, "s_per_step": round(rate, 3), "steps": total})
        tr.set_total_steps(total)
        state["eval_every"] = max(1, total // max(1, settings.evals))
        say(f"step {tr.step}: {rate:.2f} s/step so far, {total} steps fit the budget")

    def callback(tr, stats) -> None:
        if _is_cancelled(cancel):
            state["cancelled"] = True
            tr.cfg.steps = tr.step  # the trainer finishes at once (as on its deadline)
        elif (
            not settings.max_steps
            and tr.step < tr.cfg.steps
            and (
                (not state["replans"] and tr.step >= replan_at)
                or (len(state["replans"]) == 1 and tr.step >= tr.cfg.steps // 2)
            )
        ):
            replan(tr)
        if tr.step % state["eval_every"] == 0 or tr.step >= tr.cfg.steps:
            evaluate(tr)

    trainer = Trainer(cfg, callbacks=[callback], registry=registry, dataset=dataset)
    say(f"training {budget.steps} steps on {trainer.device} ({trainer.precision})")
    tr_result = trainer.run()
    if not curve or curve[-1]["step"] != trainer.step:
        evaluate(trainer)
    status = "cancelled" if state["cancelled"] else tr_result.status

    # -- final scores (the best checkpoint)
    model_scores = {"psnr": best["psnr"], "ssim": best["ssim"]}
    beats = best["step"] > 0 and best["psnr"] > base_scores["psnr"]
    if best["step"] == 0:  # never better than the base: keep the last state, flagged
        best["state"] = {k: v.detach().cpu().clone() for k, v in net_of(trainer).state_dict().items()}
        best["step"] = trainer.step
        model_scores = {k: curve[-1][k] for k in ("psnr", "ssim")}
    scores = {"model": model_scores, "base": base_scores, "bicubic": bic_scores}
    for other in settings.compare:
        try:
            om = load_model(other, registry=registry)
        except RRIMError as exc:  # a missing comparison model is reported, not fatal
            say(f"cannot score {other}: {exc}")
            continue
        if om.scale != s or om.in_channels != ch:
            say(f"{other} is not an x{s} {ch}-channel model: not scored")
            continue
        scores[other] = score_model(om.module, held, s, ch)

    recipe = {
        "init": str(settings.init),
        "init_id": base.id,
        "init_sha256": base.sha256,
        "paired": paired,
        "degradations": deg.as_dict() if deg is not None else None,
        "degradations_why": deg_why,
        "minutes": settings.minutes,
        "steps_planned": budget.steps,
        "steps_done": trainer.step,
        "best_step": best["step"],
        "batch_size": budget.batch_size,
        "patch_size": budget.patch_size,
        "lr": settings.lr,
        "schedule": "cosine",
        "warmup": warmup,
        "ema": cfg.ema,
        "loss": "l1",
        "seconds_per_step": round(budget.seconds_per_step, 4),
        "budget_probe": budget.measured,
        "eval_seconds": round(state["eval_s"], 1),
        "replans": state["replans"],
        "status": status,
        "hardware": trainer.hardware,
    }
    heldout_desc = {
        "how": held.how,
        "crops": len(held.hr),
        "pixels": held.pixels,
        "lr": "real LR" if paired else "synthetic LR (the training degradations, fixed seed)",
        "metric": f"PSNR/SSIM on 0..1 data, {s}-px border",
    }
    result = FinetuneResult(
        name, None, None, None, scores, beats, best["step"], trainer.step, status, curve, budget, recipe
    )
    _write_outputs(result, best["state"], base, data_desc, heldout_desc, out, settings, registry)
    say(
        ("beats" if beats else "does NOT beat") + f" the base model on held-out data: {model_scores['psnr']:.3f} vs "
        f"{base_scores['psnr']:.3f} dB"
    )
    return result


def model_card(result: FinetuneResult, data_desc: dict, heldout_desc: dict) -> str:
    """One paragraph of Markdown: what it is, on what, how, how well, and whether to use it."""
    sc, r = result.scores, result.recipe
    m, b, c = sc["model"], sc["base"], sc["bicubic"]
    data = data_desc.get("description") or f"{len(data_desc.get('pairs', []))} registered LR/HR pair(s)"
    if "train_planes" in data_desc:
        data = f"{data_desc['train_planes']} training planes of {data}"
    others = "".join(f", {k} {v['psnr']:.2f} dB" for k, v in sc.items() if k not in ("model", "base", "bicubic"))
    verdict = (
        "It beats its base model on the held-out data."
        if result.beats_base
        else "**It does not beat its base model on the held-out data: keep using the base model** (this file is "
        "registered but is not recommended as a default)."
    )
    return (
        f"# {result.name}\n\n"
        f"`{result.name}` is `{r.get('init_id') or r.get('init')}` fine-tuned on {data} "
        f"({'paired real LR/HR' if r.get('paired') else 'unpaired: ' + str(r.get('degradations_why'))}), "
        f"for {result.steps} steps of {r['batch_size']} × {r['patch_size']} px patches "
        f"(L1, Adam lr {r['lr']:g}, cosine, EMA {r['ema']}; best held-out step {result.best_step}; "
        f"budget {r['minutes']:g} min on {r.get('hardware', {}).get('cpu', 'this machine')}, {result.status}). "
        f"On held-out data never trained on ({heldout_desc['how']}; {heldout_desc['lr']}; {heldout_desc['metric']}) "
        f"it scores {m['psnr']:.2f} dB / SSIM {m['ssim']:.4f}, against {b['psnr']:.2f} dB / {b['ssim']:.4f} for "
        f"the base model and {c['psnr']:.2f} dB / {c['ssim']:.4f} for bicubic{others}. {verdict} "
        f"Use it only on data like its training data, scaled the same way ({NORMALIZATION}).\n"
    )


def _write_outputs(
    result: FinetuneResult, state_dict, base, data_desc, heldout_desc, out: Path, settings: FinetuneSettings, registry
) -> None:
    from ..jsonable import jsonable
    from ..registry import user_weights_dir
    from ..safe_write import atomic_write
    from ..weights_io import save_weights

    metrics = {
        **result.scores["model"],
        "base": result.scores["base"],
        "bicubic": result.scores["bicubic"],
        "others": {k: v for k, v in result.scores.items() if k not in ("model", "base", "bicubic")},
        "heldout": heldout_desc,
        "curve": result.curve,
    }
    desc = (
        f"{result.recipe.get('init_id') or settings.init} fine-tuned on "
        f"{data_desc.get('description') or 'LR/HR pairs'}" + ("" if result.beats_base else " (does not beat its base)")
    )
    extra = jsonable(
        {
            "finetune": {
                "data": data_desc,
                "heldout": heldout_desc,
                "scores": result.scores,
                "beats_base": result.beats_base,
                "status": result.status,
            },
            "beats_base": result.beats_base,
            "recommended": result.beats_base,
        }
    )

    def write(tmp: Path) -> None:
        save_weights(
            tmp,
            state_dict,
            backbone=base.backbone,
            hparams=base.hparams,
            name=result.name,
            description=desc,
            recipe=jsonable(result.recipe),
            metrics=jsonable(metrics),
            extra=extra,
            overwrite=True,
            normalization=NORMALIZATION,
        )

    card = model_card(result, data_desc, heldout_desc)
    result.weights = atomic_write(out / f"{result.name}.safetensors", write, overwrite=settings.overwrite)
    result.card = atomic_write(out / f"{result.name}.md", card, overwrite=settings.overwrite)
    if settings.register:
        folder = user_weights_dir(create=True)
        src = result.weights
        result.installed = atomic_write(
            folder / src.name, src.read_bytes(), overwrite=settings.overwrite, protect=[src]
        )
        atomic_write(folder / f"{result.name}.md", card, overwrite=settings.overwrite)
        registry.weights(refresh=True)
        if registry.find_weights(result.name) is None:  # pragma: no cover - the registry lists every file
            raise WeightsError(result.installed, "was written but the registry does not list it")
