"""Pieces shared by the generators and the discriminator.

* :func:`clean_state_dict` normalises any checkpoint layout (BasicSR ``params_ema``/``params``,
  Lightning-style ``state_dict``, ``module.``/``_orig_mod.`` prefixes) to a flat tensor dict;
  the weights loader calls it before ``detect``/``load_state_dict``.
* Initialisation helpers: :func:`default_init_weights` (Kaiming normal, optionally scaled down,
  the ESRGAN "smaller initialisation") and :func:`icnr_` (checkerboard-free init of
  pixel-shuffle convolutions).
* :class:`PixelShuffleUpsample`: conv(F -> 4F) -> pixel-shuffle(2) -> activation.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Iterable, Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)

#: container keys tried, in this order, when unwrapping a checkpoint (BasicSR puts the EMA
#: generator under ``params_ema`` and the raw one under ``params``; prefer EMA).
_CONTAINER_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net_g", "generator")
_PREFIXES = ("module.", "_orig_mod.")


def clean_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Return the flat ``{name: tensor}`` state dict inside ``obj``.

    ``obj`` may be an ``nn.Module``, a state dict, or a checkpoint nesting one under any of
    ``params_ema``, ``params``, ``state_dict``, ``model_state_dict``, ``model``, ``net_g`` or
    ``generator`` (unwrapped repeatedly, EMA weights preferred). ``module.`` (DataParallel /
    DDP) and ``_orig_mod.`` (``torch.compile``) prefixes are stripped; non-tensor entries
    (epoch counters, optimiser hyper-parameters) are dropped.
    """
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    for _ in range(8):  # bounded: containers are at most a few levels deep
        if not isinstance(obj, Mapping):
            raise TypeError(f"expected a state dict or checkpoint mapping, got {type(obj).__name__}")
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        for key in _CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, (Mapping, nn.Module)):
                obj = inner.state_dict() if isinstance(inner, nn.Module) else inner
                break
        else:
            raise ValueError("no tensors found in checkpoint; top-level keys: " + ", ".join(map(str, list(obj)[:20])))
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = str(key)
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        out[key] = value
    return out


#: alias under the name of the original brief.
normalise_state_dict = clean_state_dict


def count_indexed(state_dict: Mapping[str, Any], prefix: str) -> int:
    """Number of consecutive ``prefix<N>.`` children (``body.0``, ``body.1``...) in a state dict."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state_dict if (m := pat.match(k))}
    n = 0
    while n in found:
        n += 1
    return n


def shape_of(state_dict: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    value = state_dict.get(key)
    return tuple(value.shape) if value is not None and hasattr(value, "shape") else None


def warn_unused(name: str, kwargs: Mapping[str, Any]) -> None:
    """Builders accept extra hyper-parameters (e.g. from weights metadata) and ignore them."""
    if kwargs:
        log.warning("%s ignores unknown hyper-parameters: %s", name, ", ".join(sorted(kwargs)))


@torch.no_grad()
def default_init_weights(
    modules: nn.Module | Iterable[nn.Module], scale: float = 1.0, bias_fill: float = 0.0, negative_slope: float = 0.2
) -> None:
    """Kaiming-normal (fan-in, leaky slope ``negative_slope``) init of every conv/linear layer
    in ``modules``, weights then multiplied by ``scale`` (ESRGAN uses 0.1 for residual branches)."""
    if isinstance(modules, nn.Module):
        modules = [modules]
    for module in modules:
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, a=negative_slope, mode="fan_in", nonlinearity="leaky_relu")
                m.weight.mul_(scale)
                if m.bias is not None:
                    m.bias.fill_(bias_fill)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


@torch.no_grad()
def icnr_(weight: torch.Tensor, upscale: int = 2, negative_slope: float = 0.2) -> torch.Tensor:
    """ICNR init (Aitken et al. 2017) of a conv weight feeding ``pixel_shuffle(upscale)``.

    The ``out/upscale²`` sub-kernels are drawn once and repeated, so right after init the
    shuffled output equals a nearest-neighbour upsampling of a normal conv: no checkerboard.
    """
    out_ch, in_ch, kh, kw = weight.shape
    r2 = upscale * upscale
    if out_ch % r2:
        raise ValueError(f"ICNR needs out channels divisible by {r2}, got {out_ch}")
    sub = torch.empty(out_ch // r2, in_ch, kh, kw, device=weight.device, dtype=weight.dtype)
    nn.init.kaiming_normal_(sub, a=negative_slope, mode="fan_in", nonlinearity="leaky_relu")
    # pixel_shuffle maps channel c*r² + i to sub-pixel i of output channel c
    weight.copy_(sub.repeat_interleave(r2, dim=0))
    return weight


class PixelShuffleUpsample(nn.Module):
    """Sub-pixel convolution ×2: conv3×3 (F -> 4F, ICNR init) -> pixel_shuffle(2) -> activation."""

    def __init__(self, num_feat: int, act: nn.Module | None = None, icnr: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(2)
        self.act = act if act is not None else nn.Identity()
        if icnr:
            icnr_(self.conv.weight, 2)
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shuffle(self.conv(x)))


__all__ = [
    "clean_state_dict",
    "normalise_state_dict",
    "default_init_weights",
    "icnr_",
    "PixelShuffleUpsample",
    "count_indexed",
    "shape_of",
    "warn_unused",
]
