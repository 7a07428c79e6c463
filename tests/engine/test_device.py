"""Device-parametrised engine tests: the CUDA code paths, run with ``--device cuda`` (or
``RRIM_TEST_DEVICE=cuda``) on a GPU machine; on CPU-only machines they run on the CPU, and the
CUDA-only ones (memory fraction, memory_allocated) skip.

    RRIM_TEST_DEVICE=cuda python -m pytest -q tests/engine/test_device.py   # training/gpu/run.sh does this

The model is the shipped ``rrim-x4-rgb-psnr`` (real weights: random ones would hide precision
problems), the images are crops of real photographs.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_rrim_sr.engine import api as engine
from napari_rrim_sr.errors import Cancelled, RRIMError

ROOT = Path(__file__).parents[2]
WEIGHTS = ROOT / "weights" / "rrim-x4-rgb-psnr.safetensors"
DATA = ROOT.parent / "shared" / "data"
PHOTO = DATA / "train" / "SunHays80" / "abbey_sun_asztnlqhlrvirneh.jpg"


def _photo_path():
    if PHOTO.exists():
        return PHOTO
    # the GPU run carries its images in .gpu-carry/; the first validation image then stands in
    import os

    alt = os.environ.get("RRIM_TEST_PHOTO")
    return Path(alt) if alt and Path(alt).exists() else None


@pytest.fixture(scope="module")
def photo():
    p = _photo_path()
    if p is None:
        pytest.skip("no real photograph available (../shared/data or $RRIM_TEST_PHOTO)")
    from PIL import Image

    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def model():
    from napari_rrim_sr.registry.loading import load_model

    return load_model(str(WEIGHTS))


def _psnr(a, b):
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(1.0 / mse)


#: minimum PSNR (dB, 0..1 data) of each precision on the device against fp32 on the CPU
AGREEMENT_DB = {"fp32": 45.0, "fp16": 38.0, "bf16": 32.0}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_precision_agrees_with_cpu_fp32(test_device, photo, model, precision):
    if precision == "fp16" and test_device == "cpu":
        pytest.skip("fp16 is a GPU precision")
    img = photo[200:296, 300:396].astype(np.float32) / 255.0  # 96 x 96, real texture
    ref = engine.upscale(img, model, device="cpu", precision="fp32", tile=0)
    out = engine.upscale(img, model, device=test_device, precision=precision, tile=0)
    assert out.shape == ref.shape == (384, 384, 3)
    assert np.isfinite(out).all()
    assert _psnr(out, ref) >= AGREEMENT_DB[precision], f"{precision} on {test_device}: {_psnr(out, ref):.1f} dB"


def test_tiled_equals_untiled_on_device(test_device, photo, model):
    img = photo[100:228, 200:344].astype(np.float32) / 255.0  # 128 x 144: 2 x 3 tiles of 64 (with overlap)
    whole = engine.upscale(img, model, device=test_device, precision="fp32", tile=0)
    tiled = engine.upscale(img, model, device=test_device, precision="fp32", tile=64)
    assert np.abs(whole - tiled).max() <= 2e-3  # TF32 convolutions on CUDA add ~1e-4


def test_cancel_on_device_returns_nothing(test_device, photo, model):
    seen = []

    def progress(p):
        seen.append(p.tiles_done)

    img = photo[:128, :128]
    with pytest.raises(Cancelled):
        engine.upscale(
            img, model, device=test_device, tile=32, overlap=8, progress=progress, cancel=lambda: len(seen) >= 3
        )
    assert max(seen) < 16  # stopped between tiles, long before the 16th


def _cuda_only(dev):
    if not str(dev).startswith("cuda"):
        pytest.skip("CUDA memory accounting")


def test_memory_is_released_after_runs_and_after_errors(test_device, photo, model):
    _cuda_only(test_device)
    engine.clear_cache()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(test_device)
    up = engine.Upscaler(model, device=test_device, precision="bf16")
    up.upscale(photo[:256, :256], tile=128)
    up.close()
    del up
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated(test_device) <= base + 1024, "memory kept after a run"

    class Broken(torch.nn.Module):
        in_channels = out_channels = 3
        scale = 4

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 48, 3, padding=1)

        def forward(self, x):
            self.conv(x)
            raise RuntimeError("planted failure after an allocation")

    from napari_rrim_sr.registry.loading import LoadedModel

    bad = LoadedModel.from_module(Broken(), "broken", {"scale": 4, "in_channels": 3, "out_channels": 3})
    with pytest.raises(RuntimeError, match="planted"):
        engine.upscale(photo[:64, :64], bad, device=test_device, precision="fp32")
    import gc

    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated(test_device) <= base + 1024, "memory kept after an error"
    with pytest.raises(Cancelled):
        engine.upscale(photo[:128, :128], model, device=test_device, tile=32, cancel=lambda: True)
    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated(test_device) <= base + 1024, "memory kept after a cancel"


def test_out_of_memory_backs_off_to_smaller_tiles(test_device, photo, model):
    """A 1024 px tile cannot fit a 1.5 GiB cap (the x4 features alone need ~4 GiB): the engine halves
    the tile until it fits, and the result equals an ordinary small-tile run."""
    _cuda_only(test_device)
    engine.clear_cache()
    img = np.ascontiguousarray(np.tile(photo, (2, 2, 1))[:1024, :1024])
    dev = torch.device(test_device)
    total = torch.cuda.get_device_properties(dev).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, 1.5 * 2**30 / total), dev)
    try:
        up = engine.Upscaler(model, device=test_device, precision="fp32")
        out = up.upscale(img, tile=1024)
        used_tile = up.last_run["tile"]
        up.close()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
        torch.cuda.empty_cache()
    assert used_tile < 1024, "no out-of-memory back-off happened"
    ref = engine.upscale(img[:256, :256], model, device=test_device, precision="fp32", tile=used_tile)
    # away from the crop's own right/bottom border (reflect padding there), uint8 outputs agree to 2 levels
    assert np.abs(out[:768, :768].astype(int) - ref[:768, :768].astype(int)).max() <= 2


def test_refuses_a_tile_that_never_fits(test_device, model):
    _cuda_only(test_device)
    engine.clear_cache()
    dev = torch.device(test_device)
    total = torch.cuda.get_device_properties(dev).total_memory
    up = engine.Upscaler(model, device=test_device, precision="fp32")  # the weights fit ...
    torch.cuda.empty_cache()
    cap = torch.cuda.memory_allocated(dev) + 2**20  # ... and 1 MiB more: no tile does
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), dev)
    try:
        with pytest.raises(RRIMError, match="out of memory"):
            up.upscale(np.zeros((256, 256, 3), np.uint8), tile=256)
    finally:
        up.close()
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
        torch.cuda.empty_cache()
