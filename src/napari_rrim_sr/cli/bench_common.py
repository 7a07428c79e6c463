"""What the benchmark commands share: a real photo of a given size, best-of timing, interleaved
cases, device sync, the CPU's name, MACs of a loaded model and random models of real sizes."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------
# helpers


def _data_dir() -> Path | None:
    env = os.environ.get("NAPARI_RRIM_SR_DATA")
    cands = [Path(env)] if env else []
    here = Path(__file__).resolve()
    cands += [here.parents[3].parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in cands:
        if c.is_dir():
            return c
    return None


def photo(size: int, channels: int = 3) -> tuple[np.ndarray, str]:
    """A real photograph (centre crop, tiled by reflection if small), or smooth noise."""
    d = _data_dir()
    src = None
    if d is not None:
        for p in (
            sorted((d / "train" / "SunHays80").glob("*.jpg"))[:1] + sorted((d / "val" / "Kodak24").glob("*.png"))[:1]
        ):
            src = p
            break
    if src is not None:
        from PIL import Image

        with Image.open(src) as im:
            a = np.asarray(im.convert("RGB"))
        reps = (int(np.ceil(size / a.shape[0])), int(np.ceil(size / a.shape[1])))
        if reps != (1, 1):
            a = np.pad(a, ((0, max(0, size - a.shape[0])), (0, max(0, size - a.shape[1])), (0, 0)), mode="symmetric")
        y0, x0 = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
        a = a[y0 : y0 + size, x0 : x0 + size]
        name = src.name
    else:
        from scipy.ndimage import gaussian_filter

        rng = np.random.default_rng(0)
        a = gaussian_filter(rng.random((size, size, 3)), (2, 2, 0))
        a = ((a - a.min()) / np.ptp(a) * 255).astype(np.uint8)
        name = "synthetic smooth noise"
    if channels == 1:
        a = a.mean(-1).astype(np.uint8)
    return np.ascontiguousarray(a), name


def _best(fn, repeat: int) -> float:
    """Best-of-``repeat`` seconds after one warm-up run."""
    fn()  # warm-up: kernel selection, weight re-layout
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _sync(device) -> None:
    from napari_rrim_sr.engine.devices import sync  # the one sync (also the training benchmark's)

    sync(device)


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except Exception:
        pass
    return platform.processor() or platform.machine()


def _macs(loaded, channels: int) -> float:
    import torch

    from napari_rrim_sr.models.complexity import count_macs_per_pixel
    from napari_rrim_sr.registry.core import get_registry

    try:
        with torch.device("meta"):
            m = get_registry().build(loaded.backbone, **loaded.hparams)
        return count_macs_per_pixel(m, channels, size=64)
    except Exception:
        return count_macs_per_pixel(loaded.module, channels, size=32)


def random_model(backbone: str = "rrim", **hp):
    """A seeded, randomly initialised model (a ``LoadedModel``) for speed and memory figures:
    timings do not depend on the weights, so benchmarks need no trained file."""
    import torch

    from napari_rrim_sr.registry.core import get_registry
    from napari_rrim_sr.registry.loading import LoadedModel

    torch.manual_seed(0)
    spec = get_registry().backbone(backbone)
    hp = spec.resolve_hparams(**hp)
    module = spec.build(**hp)
    desc = ", ".join(f"{k}={v}" for k, v in hp.items() if k not in ("in_channels", "out_channels", "scale"))
    return LoadedModel.from_module(module, backbone, hp, id=f"{backbone} ({desc}; random init)")


def _interleaved(cases: dict, repeat: int) -> dict:
    """Best-of-``repeat`` seconds per case, the cases taking turns (one warm-up run each first):
    on a shared machine, load spikes then hit every case alike instead of one of them."""
    for f in cases.values():
        f()
    best = {k: float("inf") for k in cases}
    for _ in range(repeat):
        for k, f in cases.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best
