"""Choose the model from the data: the clean model for clean input, the robust one otherwise.

The bicubic-trained models (``rrim-x4-gray``, ``rrim-x4-rgb-psnr``) were trained on LR made by an
antialiased bicubic ×1/4, which averages noise away. Data as it comes off an instrument is not
like that: shot/read noise, JPEG blocks and sensor saturation are turned into false detail
(streaks in nuclei, worms in the background, holes in clouds). The ``*-real`` models were trained
for that. This module measures three things on a representative plane and picks:

* **white noise** in the flattest regions: the Haar diagonal detail ``HH`` at the finest scale,
  robust σ (median/0.6745) per block, on the flattest 30 % of blocks. White noise has
  ``σ1/σ2 ≈ 2`` between the finest and the next scale (averaging 2×2 halves it), image structure
  ``≲ 1``; so σ counts as noise only where that ratio says so (``whiteness ≥ 1.4``). σ is a
  fraction of the robust range (0.1–99.9th percentile).
* **JPEG blockiness**: mean |difference| across 8-pixel block boundaries over the mean elsewhere.
* **fine detail**: RMS of ``HH`` at the finest scale over the next one, over the whole plane. An
  antialiased bicubic ×1/4 attenuates the band next to Nyquist, so clean LR stays ≤ 1.01 (Kodak24);
  aliased native sampling (satellite tiles resampled by nearest neighbour) and noisy frames reach
  1.1–1.9. Above ``FINE_DETAIL_MIN`` the data are not clean.

Noise counts from 0.05 % of the range, and only above twice the rounding noise of integer data
(``step/√12``): the median-based σ of uniformly quantised flat regions is at most about that.
Structure-dominated native images whose fine detail sits inside Kodak's range (EM, some Landsat
and NAIP tiles, confocal stacks) still get the clean model; the robust one is better on them by
the overshoot measure too (``docs/models.md``), so a layer may ask for its model through metadata
(``napari_rrim_sr_weights``) and the user can always override.

The thresholds were set on Kodak24 clean LR (all 24 must pick the clean model) and the native
microscopy/satellite images in ``../shared/data``; ``docs/models.md`` has the measured table and
the command (``python -m napari_rrim_sr.training measure-choice``) that makes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .layers import representative_plane  # the one way to pick a plane; re-exported

__all__ = [
    "CLEAN_ROBUST_PAIRS",
    "DataCondition",
    "ModelChoice",
    "choose_for_layer",
    "choose_weights",
    "installed_weight_ids",
    "measure_condition",
    "representative_plane",
]

#: default (clean) weights per channel count, and the robust weights that replace them.
CLEAN_ROBUST_PAIRS: dict[int, tuple[str, str]] = {
    1: ("rrim-x4-gray", "rrim-x4-gray-real"),
    3: ("rrim-x4-rgb-psnr", "rrim-x4-rgb-real"),
}

WHITENESS_MIN = 1.4  #: σ1/σ2 above which flat-region detail is noise, not structure
NOISE_MIN = 0.0005  #: white-noise σ (fraction of range) above which the robust model is chosen
QUANT_FACTOR = 2.0  #: ... and above this many times the integer rounding σ (step/√12)
FINE_DETAIL_MIN = 1.08  #: finest/next-scale detail ratio above which the data are aliased (native sampling)
BLOCKINESS_MIN = 1.10  #: 8×8 boundary/interior gradient ratio of JPEG-compressed data
_MAX_SIDE = 1024  #: planes larger than this are measured on a centre crop (speed)


@dataclass(frozen=True)
class DataCondition:
    """What a plane looks like, as far as the model choice is concerned."""

    noise_sigma: float  #: robust σ in the flattest regions, fraction of the 0.1–99.9 % range
    whiteness: float  #: σ1/σ2 there: ≈2 for white noise, ≲1 for image structure
    blockiness: float  #: JPEG 8×8 grid ratio (1.0: no grid)
    quantisation: float = 0.0  #: σ of integer rounding, same units as noise_sigma (0 for floats)
    fine_detail: float = 0.0  #: RMS Haar diagonal detail, finest over next scale, whole plane

    @property
    def aliased(self) -> bool:
        return self.fine_detail >= FINE_DETAIL_MIN

    @property
    def noisy(self) -> bool:
        floor = max(NOISE_MIN, QUANT_FACTOR * self.quantisation)
        return self.whiteness >= WHITENESS_MIN and self.noise_sigma >= floor

    @property
    def blocky(self) -> bool:
        return self.blockiness >= BLOCKINESS_MIN

    @property
    def clean(self) -> bool:
        return not (self.noisy or self.blocky or self.aliased)

    def describe(self) -> str:
        """One line for the widget and the report: the numbers behind the choice."""
        parts = [f"noise σ ≈ {100 * self.noise_sigma:.1f} % of range"]
        if self.whiteness < WHITENESS_MIN:
            parts[0] += " (structure, not noise)"
        elif not self.noisy:
            parts[0] += " (white, at the quantisation level)" if self.quantisation else " (white, low)"
        if self.blocky:
            parts.append(f"JPEG blocks ×{self.blockiness:.2f}")
        if self.aliased:
            parts.append(f"fine detail ×{self.fine_detail:.2f} (aliased / native sampling)")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ModelChoice:
    """The weights chosen for a layer or file, and why (shown to the user, kept in provenance)."""

    weights_id: str | None
    reason: str
    condition: DataCondition | None = None
    robust: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights_id,
            "reason": self.reason,
            "robust": self.robust,
            "condition": self.condition.as_dict() if self.condition else None,
        }


def _luminance(plane: np.ndarray, rgb: bool) -> np.ndarray:
    a = np.asarray(plane)
    if rgb and a.ndim == 3:
        a = a[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"measure_condition needs a 2D plane (or YXC with rgb=True), got shape {np.shape(plane)}")
    h, w = a.shape
    if max(h, w) > _MAX_SIDE:
        y0, x0 = max(0, (h - _MAX_SIDE) // 2), max(0, (w - _MAX_SIDE) // 2)
        a = a[y0 : y0 + _MAX_SIDE, x0 : x0 + _MAX_SIDE]
    return a


def _haar(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = q[: q.shape[0] // 2 * 2, : q.shape[1] // 2 * 2]
    a, b, c, d = q[0::2, 0::2], q[0::2, 1::2], q[1::2, 0::2], q[1::2, 1::2]
    return (a - b - c + d) / 2, (a + b + c + d) / 4


def _block_sigma(x: np.ndarray, b: int, nh: int, nw: int) -> np.ndarray:
    blocks = np.abs(x[: nh * b, : nw * b]).reshape(nh, b, nw, b).transpose(0, 2, 1, 3).reshape(nh * nw, -1)
    return np.median(blocks, axis=1) / 0.6745


def _noise(q: np.ndarray, b: int = 8) -> tuple[float, float, float]:
    hh1, low = _haar(q)
    hh2, _ = _haar(low)
    e2 = float(np.mean(hh2**2)) if hh2.size else 0.0
    fine = float(np.sqrt(np.mean(hh1**2) / e2)) if e2 > 0 else 0.0
    nh, nw = hh2.shape[0] // b, hh2.shape[1] // b
    if nh < 1 or nw < 1:
        return 0.0, 0.0, fine
    s1 = _block_sigma(hh1, 2 * b, nh, nw)
    s2 = _block_sigma(hh2, b, nh, nw)
    flat = np.argsort(s1)[: max(1, int(0.3 * s1.size))]
    ok = s2[flat] > 0
    whiteness = float(np.median(s1[flat][ok] / s2[flat][ok])) if ok.any() else 0.0
    return float(np.median(s1[flat])), whiteness, fine


def _blockiness(a: np.ndarray) -> float:
    dx = np.abs(np.diff(a, axis=1))
    dy = np.abs(np.diff(a, axis=0))
    if dx.shape[1] < 16 or dy.shape[0] < 16:
        return 1.0
    on_x, on_y = (np.arange(dx.shape[1]) % 8) == 7, (np.arange(dy.shape[0]) % 8) == 7
    on = dx[:, on_x].mean() + dy[on_y].mean()
    off = dx[:, ~on_x].mean() + dy[~on_y].mean()
    return float(on / off) if off > 0 else 1.0


def measure_condition(plane: np.ndarray, *, rgb: bool = False) -> DataCondition:
    """Measure noise, JPEG blocks and saturation on one plane (YX, or YXC with ``rgb``)."""
    a = _luminance(plane, rgb)
    finite = a[np.isfinite(a)]
    if finite.size < 64:
        return DataCondition(0.0, 0.0, 1.0)
    lo, hi = np.percentile(finite, [0.1, 99.9])
    span = float(hi - lo)
    if not span > 0:
        return DataCondition(0.0, 0.0, 1.0)
    q = np.where(np.isfinite(a), (a - lo) / span, 0.0)
    sigma, whiteness, fine = _noise(q)
    integer = np.issubdtype(np.asarray(plane).dtype, np.integer)
    quant = (1.0 / span) / np.sqrt(12.0) if integer else 0.0
    return DataCondition(sigma, whiteness, _blockiness(q), float(quant), fine)


def choose_weights(
    plane: np.ndarray | None,
    *,
    channels: int,
    available_ids: Iterable[str],
    rgb: bool = False,
    requested: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> ModelChoice:
    """Pick the weights for data with ``channels`` channels, from what ``plane`` looks like.

    Precedence: an explicit ``requested`` id (not ``"auto"``) > the layer's own request
    (metadata ``napari_rrim_sr_weights``, when installed) > the measured choice between the
    clean and robust model of that channel count > any installed weights of that count.
    """
    available = list(available_ids)
    if requested and requested != "auto":
        return ModelChoice(requested, "chosen by the user")
    asked = (metadata or {}).get("napari_rrim_sr_weights")
    if isinstance(asked, str) and asked in available:
        return ModelChoice(asked, "requested by the layer's metadata (napari_rrim_sr_weights)")
    pair = CLEAN_ROBUST_PAIRS.get(int(channels))
    if pair is None or not (pair[0] in available or pair[1] in available):
        return ModelChoice(None, f"no default weights for {channels}-channel data")
    clean_id, robust_id = pair
    if plane is None:
        wid = clean_id if clean_id in available else robust_id
        return ModelChoice(wid, "no data to measure: the default model")
    cond = measure_condition(plane, rgb=rgb)
    want_robust = not cond.clean
    wid = robust_id if want_robust else clean_id
    if wid not in available:  # the other one of the pair is installed
        wid = clean_id if want_robust else robust_id
        return ModelChoice(wid, f"{cond.describe()}; {pair[want_robust]} is not installed", cond, wid == robust_id)
    verdict = "not clean" if want_robust else "clean"
    return ModelChoice(wid, f"{cond.describe()}: {verdict} → {wid}", cond, want_robust)


def choose_for_layer(
    data: Any,
    *,
    rgb: bool,
    available_ids: Iterable[str],
    metadata: Mapping[str, Any] | None = None,
    spatial_axes: tuple[int, int] | None = None,
    requested: str | None = None,
) -> ModelChoice:
    """The automatic choice for a whole layer or file (any nD shape): measure its representative plane.

    One call for the CLI, the widgets and the demo so they agree. ``rgb`` data (trailing axis of
    3 or 4 samples, the 4th being alpha) uses the colour pair; everything else is upscaled plane by
    plane (Z, T, channels, bands) and uses the gray pair. Returns :class:`ModelChoice`; show
    ``reason`` to the user and keep ``as_dict()`` in provenance.
    """
    channels = 3 if rgb else 1
    available = list(available_ids)
    if requested and requested != "auto":
        return choose_weights(None, channels=channels, available_ids=available, requested=requested)
    plane = representative_plane(data, spatial_axes=spatial_axes, rgb=rgb)
    if rgb:
        plane = plane[..., :3]
    return choose_weights(plane, channels=channels, rgb=rgb, available_ids=available, metadata=metadata)


def installed_weight_ids(scale: int = 4) -> list[str]:
    """Ids of the installed weights of ``scale`` (what ``available_ids`` usually is)."""
    from .registry import get_registry

    return [e.id for e in get_registry().weights() if e.scale == scale]
