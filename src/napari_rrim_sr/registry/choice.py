"""Model choice in one place: which weights run on which data, and why, in plain words.

Four sources of a choice, in this order of precedence (:func:`choose_model`, the one entry):

1. **the user's choice** (``user="rrim-x4-gray"``); ``None``/``"auto"`` is the way back to
   automatic (:func:`is_auto`, :data:`AUTO`);
2. **the layer's request**: layer/file metadata ``napari_rrim_sr_weights`` naming installed
   weights (the sample data use it);
3. **a weights file's own preference**: its metadata entry ``model_choice``
   (:data:`WEIGHTS_PREFERENCE_KEY`), e.g. ``{"role": "robust", "kinds": ["microscopy"]}``: an
   installed fine-tune takes the clean or robust slot of its channel count (``"role": "any"``:
   it is used for all such data, whatever the measure);
4. **the data**: clean vs robust, measured on the representative plane (below).

Clean vs robust. The bicubic-trained models (``rrim-x4-gray``, ``rrim-x4-rgb-psnr``) were
trained on LR made by an antialiased bicubic ×1/4, which averages noise away. Data as it comes
off an instrument is not like that: shot/read noise, JPEG blocks and pixel-sharp (aliased)
sampling are turned into false detail. The ``*-real`` models were trained for that. Measured on
the luminance of one plane (a centre crop of at most 1024², aligned to the 8-pixel JPEG grid):

* **white noise** in the flattest regions: the Haar diagonal detail ``HH`` at the finest scale,
  robust σ (median/0.6745) per block, on the flattest 30 % of blocks. White noise has
  ``σ1/σ2 ≈ 2`` between the finest and the next scale, image structure ``≲ 1``; so σ counts as
  noise only where that ratio says so (``whiteness ≥ 1.4``), from 0.05 % of the 0.1–99.9 % range
  and above twice the rounding noise of integer data (``step/√12``).
* **compression blocks**: the mean |step| across the 8-pixel JPEG grid over the largest mean at
  any other of the 8 phases, the smaller of the x and y ratios (``≥ 1.06``); and any period-4 or
  -8 grid at any phase, largest phase over the second largest, both axes (``≥ 1.4``: NAIP tiles
  re-compressed on a 4-pixel grid). Comparing with the *largest* other phase, not the mean of all
  columns, keeps a few strong edges that happen to fall on the grid from counting as JPEG.
* **pixel-sharp sampling** (aliasing: tiles decimated by nearest neighbour, native camera
  pixels): the finest/next-scale ratio of the RMS diagonal detail ``≥ 1.08`` *and* the diagonal
  over the horizontal/vertical detail at the finest scale ``≥ 0.70``. A separable antialiasing
  bicubic attenuates the diagonal corner of the spectrum twice, decimation not at all, so a
  finely textured clean photo (grass, fur: ratio up to 2.3 in bsd200) is not taken for aliasing.

The thresholds were set on clean LR of every training image in ``../shared/data/train`` and of
Kodak24 (clean model kept on ≥ 98 % and 100 %) and the native microscopy/satellite images in
``../shared/data`` (robust model kept); ``docs/models.md`` has the tables and the commands
(``python -m napari_rrim_sr.training measure-choice [--train]``).

What is shown: :attr:`ModelChoice.reason` is one plain sentence as a microscopist would say it
("looks like raw camera data (noise visible) → the robust model, which also denoises"), worded
for the kind of data (single-channel microscopy, or RGB/multiband photos and satellite tiles);
:attr:`ModelChoice.details` keeps the numbers (a tooltip, the provenance).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_rrim_sr.io.geometry import (
    SUGGESTED_WEIGHTS_KEY,
    representative_plane,  # the one way to pick a plane; re-exported
    suggested_weights,
)

__all__ = [
    "AUTO",
    "CLEAN_ROBUST_PAIRS",
    "DATA_KINDS",
    "DataCondition",
    "ModelChoice",
    "SUGGESTED_WEIGHTS_KEY",
    "WEIGHTS_PREFERENCE_KEY",
    "choose_for_layer",
    "choose_model",
    "choose_weights",
    "data_kind",
    "describe_model",
    "installed_weight_ids",
    "installed_weights_metadata",
    "is_auto",
    "layer_request",
    "measure_condition",
    "model_pair",
    "representative_plane",
    "weights_preference",
]

#: what the user's "model" setting holds when the choice is automatic (also ``None`` or "")
AUTO = "auto"
#: default (clean) weights per channel count, and the robust weights that replace them.
CLEAN_ROBUST_PAIRS: dict[int, tuple[str, str]] = {
    1: ("rrim-x4-gray", "rrim-x4-gray-real"),
    3: ("rrim-x4-rgb-psnr", "rrim-x4-rgb-real"),
}
#: weights-metadata entry with the file's own preference: ``{"role": "clean"|"robust"|"any",
#: "kinds": [data kinds]}`` (kinds optional: all)
WEIGHTS_PREFERENCE_KEY = "model_choice"
#: the kinds of data the wording (and a weights preference) distinguishes
DATA_KINDS = ("microscopy", "rgb", "multiband")

WHITENESS_MIN = 1.4  #: σ1/σ2 above which flat-region detail is noise, not structure
NOISE_MIN = 0.0005  #: white-noise σ (fraction of range) above which the robust model is chosen
QUANT_FACTOR = 2.0  #: ... and above this many times the integer rounding σ (step/√12)
FINE_DETAIL_MIN = 1.08  #: finest/next-scale diagonal detail ratio of pixel-sharp (aliased) data ...
DIAGONAL_MIN = 0.70  #: ... together with this diagonal / horizontal+vertical detail ratio
BLOCKINESS_MIN = 1.06  #: JPEG 8×8 grid step over the largest other phase (both axes)
GRID_MIN = 1.4  #: any period-4/8 grid: largest phase over the second largest (both axes)
_MAX_SIDE = 1024  #: planes larger than this are measured on a centre crop (speed)


@dataclass(frozen=True)
class DataCondition:
    """What a plane looks like, as far as the model choice is concerned."""

    noise_sigma: float  #: robust σ in the flattest regions, fraction of the 0.1–99.9 % range
    whiteness: float  #: σ1/σ2 there: ≈2 for white noise, ≲1 for image structure
    blockiness: float  #: JPEG 8×8 grid step over the largest other phase (1.0: no grid)
    quantisation: float = 0.0  #: σ of integer rounding, same units as noise_sigma (0 for floats)
    fine_detail: float = 0.0  #: RMS Haar diagonal detail, finest over next scale, whole plane
    diagonal: float = 0.0  #: RMS diagonal over horizontal/vertical detail at the finest scale
    grid: float = 1.0  #: strongest period-4/8 grid at any phase (1.0: none)

    @property
    def aliased(self) -> bool:
        return self.fine_detail >= FINE_DETAIL_MIN and self.diagonal >= DIAGONAL_MIN

    @property
    def noisy(self) -> bool:
        floor = max(NOISE_MIN, QUANT_FACTOR * self.quantisation)
        return self.whiteness >= WHITENESS_MIN and self.noise_sigma >= floor

    @property
    def blocky(self) -> bool:
        return self.blockiness >= BLOCKINESS_MIN or self.grid >= GRID_MIN

    @property
    def clean(self) -> bool:
        return not (self.noisy or self.blocky or self.aliased)

    def describe(self) -> str:
        """The numbers behind the choice, one line (a tooltip, the provenance)."""
        parts = [f"noise σ ≈ {100 * self.noise_sigma:.2f} % of range (σ ratio {self.whiteness:.2f}"]
        if self.whiteness < WHITENESS_MIN:
            parts[0] += ": structure, not noise)"
        elif not self.noisy:
            parts[0] += ": white, at the quantisation level)" if self.quantisation else ": white, low)"
        else:
            parts[0] += ": white noise)"
        parts.append(
            f"JPEG grid ×{self.blockiness:.2f} (from {BLOCKINESS_MIN}), block grid ×{self.grid:.2f} (from {GRID_MIN})"
        )
        parts.append(
            f"fine detail ×{self.fine_detail:.2f} (from {FINE_DETAIL_MIN}), "
            f"diagonal ×{self.diagonal:.2f} (from {DIAGONAL_MIN})" + (": aliased" if self.aliased else "")
        )
        return "; ".join(parts)

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ModelChoice:
    """The weights chosen for a layer or file, and why (shown to the user, kept in provenance).

    ``reason`` is one plain sentence for the user; ``details`` the numbers (a tooltip);
    ``source`` which of the four sources decided ("user", "layer", "weights", "data") or
    "default" (nothing to measure, no pair installed); ``automatic`` is False only for the user's
    own choice, and then ``auto`` holds what the automatic choice would be (the way back).
    """

    weights_id: str | None
    reason: str
    condition: DataCondition | None = None
    robust: bool = False
    details: str = ""
    source: str = "data"
    kind: str = "microscopy"
    model_text: str = ""  #: what the chosen model is, worded for ``kind`` (the details line)
    auto: ModelChoice | None = None

    @property
    def automatic(self) -> bool:
        return self.source != "user"

    def as_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights_id,
            "reason": self.reason,
            "details": self.details,
            "source": self.source,
            "kind": self.kind,
            "robust": self.robust,
            "condition": self.condition.as_dict() if self.condition else None,
        }


# -- measuring -----------------------------------------------------------------------------


def _luminance(plane: np.ndarray, rgb: bool) -> np.ndarray:
    a = np.asarray(plane)
    if rgb and a.ndim == 3:
        a = a[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"measure_condition needs a 2D plane (or YXC with rgb=True), got shape {np.shape(plane)}")
    h, w = a.shape
    if max(h, w) > _MAX_SIDE:  # a centre crop that keeps the file's 8-pixel JPEG grid
        y0, x0 = max(0, (h - _MAX_SIDE) // 2) // 8 * 8, max(0, (w - _MAX_SIDE) // 2) // 8 * 8
        a = a[y0 : y0 + _MAX_SIDE, x0 : x0 + _MAX_SIDE]
    return a


def _haar(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(HH, HL, LH, LL)`` of one Haar level (diagonal, the two axial details, the average)."""
    q = q[: q.shape[0] // 2 * 2, : q.shape[1] // 2 * 2]
    a, b, c, d = q[0::2, 0::2], q[0::2, 1::2], q[1::2, 0::2], q[1::2, 1::2]
    return (a - b - c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2, (a + b + c + d) / 4


def _block_sigma(x: np.ndarray, b: int, nh: int, nw: int) -> np.ndarray:
    blocks = np.abs(x[: nh * b, : nw * b]).reshape(nh, b, nw, b).transpose(0, 2, 1, 3).reshape(nh * nw, -1)
    return np.median(blocks, axis=1) / 0.6745


def _ms(x: np.ndarray) -> float:
    return float(np.mean(x**2)) if x.size else 0.0


def _detail(q: np.ndarray, b: int = 8) -> tuple[float, float, float, float]:
    """``(noise σ, whiteness, fine detail, diagonal)`` from two Haar levels."""
    hh1, hl1, lh1, low = _haar(q)
    hh2, _, _, _ = _haar(low)
    e2 = _ms(hh2)
    fine = float(np.sqrt(_ms(hh1) / e2)) if e2 > 0 else 0.0
    axial = (_ms(hl1) + _ms(lh1)) / 2
    diagonal = float(np.sqrt(_ms(hh1) / axial)) if axial > 0 else 0.0
    nh, nw = hh2.shape[0] // b, hh2.shape[1] // b
    if nh < 1 or nw < 1:
        return 0.0, 0.0, fine, diagonal
    s1 = _block_sigma(hh1, 2 * b, nh, nw)
    s2 = _block_sigma(hh2, b, nh, nw)
    flat = np.argsort(s1)[: max(1, int(0.3 * s1.size))]
    ok = s2[flat] > 0
    whiteness = float(np.median(s1[flat][ok] / s2[flat][ok])) if ok.any() else 0.0
    return float(np.median(s1[flat])), whiteness, fine, diagonal


def _phase_means(a: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean |step| between columns (x) and rows (y) at each phase of ``period``; the step after
    pixel ``k`` has phase ``k % period`` (the JPEG boundary is phase 7)."""
    dx = np.abs(np.diff(a, axis=1))
    dy = np.abs(np.diff(a, axis=0))
    px = np.array([dx[:, k::period].mean() for k in range(period)])
    py = np.array([dy[k::period].mean() for k in range(period)])
    return px, py


def _blockiness(a: np.ndarray) -> tuple[float, float]:
    """``(JPEG grid ratio, any-grid ratio)``; 1.0 each when too small to tell."""
    if a.shape[0] < 17 or a.shape[1] < 17:
        return 1.0, 1.0

    def jpeg(p: np.ndarray) -> float:
        other = p[:7].max()
        return float(p[7] / other) if other > 0 else 1.0

    def peak(p: np.ndarray) -> float:
        s = np.sort(p)
        return float(s[-1] / s[-2]) if s[-2] > 0 else 1.0

    px, py = _phase_means(a, 8)
    grid = [min(peak(px), peak(py))]
    if a.shape[0] >= 9 and a.shape[1] >= 9:
        qx, qy = _phase_means(a, 4)
        grid.append(min(peak(qx), peak(qy)))
    return min(jpeg(px), jpeg(py)), max(grid)


def measure_condition(plane: np.ndarray, *, rgb: bool = False) -> DataCondition:
    """Measure noise, compression blocks and pixel-sharp sampling on one plane (YX, or YXC with ``rgb``)."""
    a = _luminance(plane, rgb)
    finite = a[np.isfinite(a)]
    if finite.size < 64:
        return DataCondition(0.0, 0.0, 1.0)
    lo, hi = np.percentile(finite, [0.1, 99.9])
    span = float(hi - lo)
    if not span > 0:
        return DataCondition(0.0, 0.0, 1.0)
    q = np.where(np.isfinite(a), (a - lo) / span, 0.0)
    sigma, whiteness, fine, diagonal = _detail(q)
    integer = np.issubdtype(np.asarray(plane).dtype, np.integer)
    quant = (1.0 / span) / np.sqrt(12.0) if integer else 0.0
    jpeg, grid = _blockiness(q)
    return DataCondition(sigma, whiteness, jpeg, float(quant), fine, diagonal, grid)


# -- words ---------------------------------------------------------------------------------


def data_kind(
    data: Any = None, *, rgb: bool = False, spatial_axes: tuple[int, int] | None = None, kind: str | None = None
) -> str:
    """``"rgb"`` (colour photos, RGB satellite tiles), ``"multiband"`` (a band-last stack such as a
    4-band GeoTIFF, upscaled band by band) or ``"microscopy"`` (single-channel planes, stacks).

    Only the wording depends on it (and a weights preference limited to some kinds). ``kind``
    given wins; a per-band view of a multiband layer should pass ``kind="multiband"``.
    """
    if kind:
        if kind not in DATA_KINDS:
            raise ValueError(f"data kind must be one of {', '.join(DATA_KINDS)}; got {kind!r}")
        return kind
    if rgb:
        return "rgb"
    shape = tuple(np.shape(data)) if data is not None else ()
    if len(shape) == 3 and 2 <= shape[-1] <= 16:
        sp = tuple(int(a) % 3 for a in spatial_axes) if spatial_axes is not None else None
        if sp == (0, 1):  # Y, X, bands: the GeoTIFF layout (microscopy keeps channels first)
            return "multiband"
    return "microscopy"


def _robust_words(kind: str) -> str:
    if kind == "microscopy":
        return "the robust model for raw microscopy"
    return "the robust model for native images"


def describe_model(weights_id: str | None, kind: str = "microscopy", description: str | None = None) -> str:
    """What ``weights_id`` is, in words that fit the data ``kind``.

    With a weights file's ``description``: that text, with its "for native microscopy" /
    "for native images" replaced by what fits ``kind`` (a NAIP tile is not microscopy).
    """
    robust = any(weights_id == pair[1] for pair in CLEAN_ROBUST_PAIRS.values())
    clean = any(weights_id == pair[0] for pair in CLEAN_ROBUST_PAIRS.values())
    if description:
        fit = "for native microscopy" if kind == "microscopy" else "for native images (photos, satellite tiles)"
        for phrase in ("for native microscopy", "for native images"):
            if phrase in description:
                return description.replace(phrase, fit, 1)
        return description
    if robust:
        return (
            f"{_robust_words(kind)}: trained on noisy, blurred, pixel-sharp (aliased)"
            + (" and JPEG" if weights_id == CLEAN_ROBUST_PAIRS[3][1] else "")
            + " input; it also denoises"
        )
    if clean:
        return "the standard model: sharpest on clean, smooth data (e.g. already downscaled or averaged)"
    return weights_id or "no model"


def _verdict(cond: DataCondition, kind: str) -> str:
    """What the data look like, in the words of someone who looks at them."""
    if cond.noisy:
        return "looks like raw camera data (noise visible)" if kind == "microscopy" else "shows sensor noise"
    if cond.blocky:
        return "shows compression blocks (JPEG)"
    if cond.aliased:
        if kind == "microscopy":
            return "is sharp down to single pixels, as recorded by the camera (not smoothed)"
        return "is sharp down to single pixels, as a satellite or camera records it (not smoothed)"
    return "looks clean and smooth (no visible noise or blocks)"


def _benefit(cond: DataCondition) -> str:
    if cond.noisy:
        return "which also denoises"
    if cond.blocky:
        return "which invents less false detail from them"
    return "which avoids inventing texture"


# -- the four sources ----------------------------------------------------------------------


def is_auto(value: Any) -> bool:
    """True when a model setting means "choose automatically" (``None``, ``""``, ``"auto"``, or
    a label that starts with "auto", as a combo box may show it): the way back from a pick."""
    return value is None or (isinstance(value, str) and (not value.strip() or value.strip().lower().startswith(AUTO)))


def layer_request(metadata: Mapping[str, Any] | None, available_ids: Iterable[str]) -> str | None:
    """The weights a layer/file asks for (metadata ``napari_rrim_sr_weights``), when installed."""
    return suggested_weights(metadata, available_ids)


def weights_preference(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A weights file's own preference (``{"role": ..., "kinds": [...]}``), validated; None if none."""
    pref = (metadata or {}).get(WEIGHTS_PREFERENCE_KEY)
    if not isinstance(pref, Mapping):
        return None
    role = pref.get("role")
    if role not in ("clean", "robust", "any"):
        return None
    kinds = pref.get("kinds")
    kinds = [k for k in kinds if k in DATA_KINDS] if isinstance(kinds, (list, tuple)) else list(DATA_KINDS)
    return {"role": role, "kinds": kinds}


def _in_channels(wid: str, meta: Mapping[str, Any]) -> int | None:
    ch = meta.get("in_channels")
    if ch is None and isinstance(meta.get("hparams"), Mapping):
        ch = meta["hparams"].get("in_channels")
    return int(ch) if isinstance(ch, (int, float)) else None


def model_pair(
    channels: int,
    kind: str,
    available_ids: Iterable[str],
    weights_metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[str | None, str | None, str | None, dict[str, str]]:
    """``(clean_id, robust_id, any_id, preferred_by)`` for ``channels``-channel data of ``kind``.

    Starts from :data:`CLEAN_ROBUST_PAIRS` (where installed); installed weights whose metadata
    prefers a role for this channel count and kind take that slot (the first one in
    ``weights_metadata`` order wins). ``any_id`` is a file that wants all such data;
    ``preferred_by`` maps each slot taken by a preference to its weights id.
    """
    available = list(available_ids)
    base = CLEAN_ROBUST_PAIRS.get(int(channels), (None, None))
    slots: dict[str, str | None] = {
        "clean": base[0] if base[0] in available else None,
        "robust": base[1] if base[1] in available else None,
        "any": None,
    }
    taken: dict[str, str] = {}
    for wid, meta in (weights_metadata or {}).items():
        pref = weights_preference(meta)
        if pref is None or wid not in available or kind not in pref["kinds"]:
            continue
        if _in_channels(wid, meta) not in (None, int(channels)):
            continue
        if pref["role"] not in taken:
            slots[pref["role"]] = wid
            taken[pref["role"]] = wid
    return slots["clean"], slots["robust"], slots["any"], taken


def _sentence(cond: DataCondition, wid: str, robust: bool, kind: str, preferred: bool) -> str:
    model = (_robust_words(kind) if robust else "the standard model") + f" ({wid})"
    if preferred:
        model += ", as its weights file asks"
    tail = _benefit(cond) if robust else "sharpest on clean data"
    return f"{_verdict(cond, kind)[0].upper()}{_verdict(cond, kind)[1:]} → {model}, {tail}"


def choose_model(
    data: Any = None,
    *,
    rgb: bool = False,
    spatial_axes: tuple[int, int] | None = None,
    kind: str | None = None,
    channels: int | None = None,
    available_ids: Iterable[str] | None = None,
    user: str | None = None,
    layer_metadata: Mapping[str, Any] | None = None,
    weights_metadata: Mapping[str, Mapping[str, Any]] | None = None,
    explain_auto: bool = True,
) -> ModelChoice:
    """The one model choice for a layer or a file (any nD ``data``; None: nothing to measure).

    Precedence: ``user`` (a weights id or path; ``None``/"auto" = automatic) > the layer's
    request (``layer_metadata``) > a weights file's preference (``weights_metadata``: id ->
    metadata; None reads the installed files') > clean vs robust measured on the representative
    plane > the clean default of the channel count. ``channels`` defaults to 3 for ``rgb`` data,
    else 1 (every other layer is upscaled plane by plane). ``available_ids`` defaults to the
    installed x4 weights. A user choice carries the automatic one in ``.auto`` (unless
    ``explain_auto`` is False), so a widget can show it and go back to it.
    """
    kind = data_kind(data, rgb=rgb, spatial_axes=spatial_axes, kind=kind)
    ch = int(channels) if channels is not None else (3 if rgb else 1)
    if not is_auto(user):
        auto = None
        if explain_auto:
            auto = choose_model(
                data,
                rgb=rgb,
                spatial_axes=spatial_axes,
                kind=kind,
                channels=ch,
                available_ids=available_ids,
                layer_metadata=layer_metadata,
                weights_metadata=weights_metadata,
            )
        text = describe_model(str(user), kind)
        reason = "Chosen by you"
        if auto is not None and auto.weights_id and auto.weights_id != user:
            reason += f" (automatic would be {auto.weights_id})"
        return ModelChoice(str(user), reason, source="user", kind=kind, model_text=text, auto=auto, details="")
    available = list(available_ids) if available_ids is not None else installed_weight_ids()
    asked = layer_request(layer_metadata, available)
    if asked:
        return ModelChoice(
            asked,
            f"This layer asks for {asked} (its metadata {SUGGESTED_WEIGHTS_KEY})",
            source="layer",
            kind=kind,
            robust=any(asked == p[1] for p in CLEAN_ROBUST_PAIRS.values()),
            model_text=describe_model(asked, kind),
            details=f"layer metadata {SUGGESTED_WEIGHTS_KEY}={asked!r}",
        )
    if weights_metadata is None:
        weights_metadata = installed_weights_metadata()
    clean_id, robust_id, any_id, preferred = model_pair(ch, kind, available, weights_metadata)
    if any_id:
        return ModelChoice(
            any_id,
            f"{any_id} asks to be used for all {ch}-channel {kind} data (its weights file)",
            source="weights",
            kind=kind,
            model_text=describe_model(any_id, kind),
            details=f"weights metadata {WEIGHTS_PREFERENCE_KEY}.role='any'",
        )
    if clean_id is None and robust_id is None:
        return ModelChoice(None, f"No default model for {ch}-channel data is installed", source="default", kind=kind)
    if data is None:
        wid = clean_id or robust_id
        return ModelChoice(
            wid,
            "Nothing to measure yet: the default model",
            source="default",
            kind=kind,
            robust=wid == robust_id,
            model_text=describe_model(wid, kind),
        )
    plane = representative_plane(data, spatial_axes=spatial_axes, rgb=rgb)
    if rgb:
        plane = plane[..., :3]
    cond = measure_condition(plane, rgb=rgb)
    want_robust = not cond.clean
    wid = robust_id if want_robust else clean_id
    details = cond.describe()
    if wid is None:  # the other one of the pair is installed
        wid = clean_id or robust_id
        missing = "the robust model" if want_robust else "the standard model"
        reason = (
            f"{_verdict(cond, kind)[0].upper()}{_verdict(cond, kind)[1:]}, but {missing} is not installed: using {wid}"
        )
        return ModelChoice(wid, reason, cond, wid == robust_id, details, "data", kind, describe_model(wid, kind))
    by_pref = wid in preferred.values()
    return ModelChoice(
        wid,
        _sentence(cond, wid, want_robust, kind, by_pref),
        cond,
        want_robust,
        details + (f"; {wid}: weights metadata {WEIGHTS_PREFERENCE_KEY}" if by_pref else ""),
        "weights" if by_pref else "data",
        kind,
        describe_model(wid, kind),
    )


# -- the names callers already use -----------------------------------------------------------


def choose_weights(
    plane: np.ndarray | None,
    *,
    channels: int,
    available_ids: Iterable[str],
    rgb: bool = False,
    requested: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    kind: str | None = None,
    weights_metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> ModelChoice:
    """:func:`choose_model` on one plane (YX, or YXC with ``rgb``) of ``channels``-channel data.

    ``weights_metadata`` None here means no weights preferences (the caller names the ids)."""
    return choose_model(
        plane,
        rgb=rgb,
        kind=kind,
        channels=channels,
        available_ids=available_ids,
        user=requested,
        layer_metadata=metadata,
        weights_metadata=weights_metadata or {},
        explain_auto=False,
    )


def choose_for_layer(
    data: Any,
    *,
    rgb: bool,
    available_ids: Iterable[str],
    metadata: Mapping[str, Any] | None = None,
    spatial_axes: tuple[int, int] | None = None,
    requested: str | None = None,
    kind: str | None = None,
    weights_metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> ModelChoice:
    """:func:`choose_model` for a whole layer or file (any nD shape): one call for the CLI, the
    widgets and the demo so they agree. Show ``reason``; keep ``as_dict()`` in provenance.

    ``weights_metadata`` None: the installed files' own preferences (as :func:`choose_model`)."""
    return choose_model(
        data,
        rgb=rgb,
        spatial_axes=spatial_axes,
        kind=kind,
        available_ids=available_ids,
        user=requested,
        layer_metadata=metadata,
        weights_metadata=weights_metadata,
        explain_auto=False,
    )


def installed_weight_ids(scale: int = 4) -> list[str]:
    """Ids of the installed weights of ``scale`` (what ``available_ids`` usually is)."""
    from napari_rrim_sr.registry.core import get_registry

    return [e.id for e in get_registry().weights() if e.scale == scale]


def installed_weights_metadata(scale: int = 4) -> dict[str, Mapping[str, Any]]:
    """``{id: metadata}`` of the installed weights of ``scale`` that state a preference: the
    user's own files first, then plugins', then the shipped ones (the first preference wins)."""
    from napari_rrim_sr.registry.core import get_registry

    order = {"user": 0, "shipped": 2}
    entries = [e for e in get_registry().weights() if e.scale == scale and weights_preference(e.metadata)]
    entries.sort(key=lambda e: (order.get(e.source, 1), e.id))
    return {e.id: e.metadata for e in entries}
