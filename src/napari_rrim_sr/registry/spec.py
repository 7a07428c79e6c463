"""What the registry knows about an architecture (:class:`BackboneSpec`) and a weights file
(:class:`WeightsEntry`): plain descriptions, no discovery and no loading.

Kept apart so that the built-in plugin, third-party plugins, the registry and the loader can all
import these two classes without importing each other. ``napari_rrim_sr.registry.core`` re-exports
both (the public import path plugins use).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_rrim_sr.errors import RegistryError
from napari_rrim_sr.registry.file_format import file_sha256

__all__ = ["BackboneSpec", "WeightsEntry"]


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the engine, the trainer and the GUI need to know about an architecture.

    ``builder(**hparams)`` returns a ``torch.nn.Module``; ``hparams`` are ``defaults`` updated
    with the caller's values, always including ``in_channels``, ``out_channels`` and ``scale``
    for generators. A generator maps ``(N, C_in, H, W)`` floats in 0..1 to
    ``(N, C_out, scale*H, scale*W)``. The loader builds it once on ``torch.device("meta")`` to
    compare parameter shapes with a file's before building it for real, so a builder should
    only create tensors through torch factory functions (no ``.item()``, no numpy).
    """

    id: str
    builder: Callable[..., Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    scales: tuple[int, ...] = (4,)
    #: channel counts the architecture builds with; ``None``: any count (e.g. ESRGAN checkpoints).
    channels: tuple[int, ...] | None = (1, 3)
    #: ``detect(state_dict) -> dict | None``: the hparams that make ``state_dict`` load, or None.
    detect: Callable[[Mapping[str, Any]], dict | None] | None = None
    #: reduced precisions the architecture runs correctly in (fp32 always works).
    half_precisions: frozenset[str] = frozenset({"bf16", "fp16"})
    #: input height and width must be a multiple of this (the engine pads to it).
    size_multiple: int = 1
    #: smallest input height/width the architecture accepts (the engine pads smaller tiles up).
    min_size: int = 1
    description: str = ""
    kind: str = "generator"  # or "discriminator"
    #: filled in by the registry: the plugin that registered it.
    source: str = ""

    def resolve_hparams(self, **overrides: Any) -> dict:
        """``defaults`` updated with ``overrides`` (None values ignored), scale and channels checked."""
        hp = dict(self.defaults)
        hp.update({k: v for k, v in overrides.items() if v is not None})
        if self.kind == "generator":
            scale = _int(hp.get("scale", self.scales[-1]), "scale", self.id)
            if scale not in self.scales:
                raise RegistryError(f"backbone {self.id!r} supports scales {list(self.scales)}, not {scale}")
            for key in ("in_channels", "out_channels"):
                ch = _int(hp.get(key, 3), key, self.id)
                if (self.channels is not None and ch not in self.channels) or ch < 1:
                    allowed = list(self.channels) if self.channels is not None else "a positive number of"
                    raise RegistryError(f"backbone {self.id!r} supports {allowed} channels, not {key}={ch}")
        return hp

    def build(self, **hparams: Any):
        """Build a freshly initialised module with ``defaults`` updated by ``hparams``."""
        return self.builder(**self.resolve_hparams(**hparams))


def _int(value: Any, key: str, backbone: str) -> int:
    if isinstance(value, bool):
        raise RegistryError(f"backbone {backbone!r}: {key} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RegistryError(f"backbone {backbone!r}: {key} must be an integer, got {value!r}") from None


@dataclass(frozen=True)
class WeightsEntry:
    """A weights file known to the registry (its metadata read, its tensors not loaded)."""

    id: str
    backbone: str
    scale: int
    in_channels: int
    out_channels: int
    path: Path
    source: str  # "shipped", "user" or the contributing plugin's name
    description: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return file_sha256(self.path)

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "backbone": self.backbone,
            "scale": self.scale,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "path": str(self.path),
            "sha256": self.sha256,
            "source": self.source,
            "description": self.description,
        }


@dataclass(frozen=True)
class BrokenWeights:
    """A weights file the registry found but could not list: where, and the one-line problem."""

    path: Path
    problem: str
    source: str  # "shipped", "user" or the contributing plugin's name

    def as_dict(self) -> dict:
        return {"path": str(self.path), "problem": self.problem, "source": self.source}


__all__ += ["BrokenWeights"]
