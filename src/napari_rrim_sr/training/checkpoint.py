"""Training checkpoints: write, read (never unpickling code), find, and the RNG states in them.

Its own module so that both the trainer and :mod:`.export` (which turns a run's checkpoint into
weights) import it, and neither imports the other. A checkpoint is written through
:func:`napari_rrim_sr.safe_write.atomic_write`: a temporary in the same folder, then one rename,
so a kill never leaves a truncated ``last.pt`` (and a killed write's temporary is cleaned by the
next one).
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from napari_rrim_sr.errors import RRIMError
from napari_rrim_sr.safe_write import atomic_write

log = logging.getLogger(__name__)

CKPT_FORMAT = 1

__all__ = [
    "CKPT_FORMAT",
    "TrainingError",
    "adapt_channels",
    "find_checkpoint",
    "load_checkpoint",
    "plain",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]


class TrainingError(RRIMError):
    """Training cannot go on (diverged, bad checkpoint...)."""


def rng_state() -> dict:
    """All RNG states as tensors and plain values (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_state[0]), "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except Exception as exc:  # different GPU count: not fatal
            log.warning("could not restore CUDA RNG states: %s", exc)


def plain(obj):
    """Round-trip through JSON: only dict/list/str/int/float/bool/None remain."""
    return json.loads(json.dumps(obj, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def save_checkpoint(state: dict, path: Path) -> Path:
    """Write ``state`` atomically (replacing an older checkpoint of that name)."""
    return atomic_write(Path(path), lambda tmp: torch.save(state, tmp), overwrite=True)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``weights_only=True`` (no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT or "model" not in ckpt:
        raise TrainingError(f"{path} is not a napari-rrim-sr training checkpoint")
    return ckpt


def find_checkpoint(run_dir: Path) -> Path | None:
    """The run's last checkpoint (``checkpoints/last.pt``), or None."""
    p = run_dir / "checkpoints" / "last.pt"
    return p if p.is_file() else None


def adapt_channels(src: dict, dst: dict) -> dict:
    """``src`` weights reshaped to ``dst``'s channel count (RGB <-> gray) so the new model computes
    exactly what the old one did on replicated gray input averaged back (the engine's rule for a
    3-channel model on 1-channel data): input convs sum their RGB kernels, output convs average
    their RGB filters; the reverse direction splits/replicates. Other tensors must match."""
    out = {}
    for key, w in src.items():
        target = dst.get(key)
        if target is None or tuple(w.shape) == tuple(target.shape):
            out[key] = w
            continue
        ws, ts = tuple(w.shape), tuple(target.shape)
        if w.dim() >= 2 and ws[0] == ts[0] and ws[2:] == ts[2:] and {ws[1], ts[1]} == {1, 3}:
            out[key] = w.sum(1, keepdim=True) if ts[1] == 1 else w.repeat(1, 3, *([1] * (w.dim() - 2))) / 3
        elif ws[1:] == ts[1:] and {ws[0], ts[0]} == {1, 3}:
            out[key] = w.mean(0, keepdim=True) if ts[0] == 1 else w.repeat(3, *([1] * (w.dim() - 1)))
        else:
            from napari_rrim_sr.training.config import ConfigError

            raise ConfigError(f"--init tensor {key} has shape {ws}, the model needs {ts}")
    return out
