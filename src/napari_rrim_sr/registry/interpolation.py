"""Network interpolation (ESRGAN, Wang et al. 2018): the one function that blends two state dicts.

Both the widget's PSNR <-> GAN slider (:func:`napari_rrim_sr.pipeline.plan.load_model_for` with a pair) and
``python -m napari_rrim_sr.training interpolate`` (which made the shipped ``rrim-x4-rgb-gan``
file at alpha 0.5) use it, so a slider position and an exported file hold the same tensors.

The formula is ``torch.lerp(A.float(), B.float(), alpha)``: the one the shipped file was made
with. ``(1 - alpha) * A + alpha * B`` is the same number in exact arithmetic but rounds
differently in float32 (one ulp on about a quarter of the values at alpha 0.3; identical at
alpha 0.5 for the shipped fp16 weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from napari_rrim_sr.errors import InputError

__all__ = ["interpolation_pair", "lerp_state_dicts"]


def lerp_state_dicts(
    a: Mapping[str, Any], b: Mapping[str, Any], alpha: float, *, names: tuple[str, str] = ("A", "B")
) -> dict:
    """``(1 - alpha) * a + alpha * b`` for every floating tensor, in float32 (alpha 0 = ``a``,
    1 = ``b``); other tensors (counters such as BN ``num_batches_tracked``) are ``a``'s.
    Both must have the same tensor names and shapes (an :class:`InputError` naming the first
    difference otherwise, with ``names`` for the two sides)."""
    import torch

    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise InputError(f"alpha must be a number in 0..1, got {alpha!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in 0..1 (0 = {names[0]}, 1 = {names[1]}), got {alpha}")
    if set(a) != set(b):
        diff = sorted(set(a) ^ set(b))[:3]
        raise InputError(f"{names[0]} and {names[1]} weights have different tensors (e.g. {', '.join(diff)})")
    out = {}
    for k, ta in a.items():
        tb = b[k]
        if tuple(ta.shape) != tuple(tb.shape):
            raise InputError(
                f"{names[0]} and {names[1]} weights differ in the shape of {k}: {tuple(ta.shape)} vs {tuple(tb.shape)}"
            )
        out[k] = torch.lerp(ta.float(), tb.float(), alpha) if ta.is_floating_point() else ta.clone()
    return out


def interpolation_pair(weights_id: str | None, available_ids: Iterable[str]) -> tuple[str, str] | None:
    """``(psnr_id, gan_id)`` when ``weights_id`` ends in ``-psnr``/``-gan`` and its partner is
    available (the PSNR <-> GAN slider is shown then); None otherwise."""
    for suffix in ("-psnr", "-gan"):
        if weights_id and weights_id.endswith(suffix):
            stem = weights_id[: -len(suffix)]
            pair = (f"{stem}-psnr", f"{stem}-gan")
            ids = set(available_ids)
            return pair if pair[0] in ids and pair[1] in ids else None
    return None
