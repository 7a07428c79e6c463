"""The inference backend choice (issue 25): torch always, OpenVINO on the CPU when installed.

OpenVINO tests use the tiny test weights (a conversion costs ~1 s) and one conversion cache per
module; the fallback tests simulate a missing ``openvino`` package (``sys.modules`` entry None),
so they run with and without the extra installed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_rrim_sr.engine import backends, devices
from napari_rrim_sr.engine.options import UpscaleOptions
from napari_rrim_sr.engine.upscaler import Upscaler
from napari_rrim_sr.errors import InputError

needs_ov = pytest.mark.skipif(not backends.openvino_available(), reason="openvino not installed")
KODAK = Path(__file__).resolve().parents[3] / "shared" / "data" / "val" / "Kodak24" / "kodim23.png"


def _kodak_crop(h=40, w=52) -> np.ndarray:
    if not KODAK.exists():
        pytest.skip(f"{KODAK} not found")
    from PIL import Image

    img = np.asarray(Image.open(KODAK))
    return np.ascontiguousarray(img[200 : 200 + h, 300 : 300 + w])


def _psnr(a, b) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory):
    """One conversion cache for the module (converted tiny models are reused across tests)."""
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("ov-cache")
    mp.setenv(backends.CACHE_ENV, str(d))
    mp.delenv(backends.BACKEND_ENV, raising=False)
    yield d / "openvino"
    mp.undo()


@pytest.fixture
def no_openvino(monkeypatch):
    """Simulate an environment without the openvino extra (import raises ImportError)."""
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    backends.clear_caches()
    yield
    backends.clear_caches()


def test_backend_option_is_checked_and_listed_once():
    assert UpscaleOptions(backend="OpenVINO").backend == "openvino"
    assert UpscaleOptions().backend == "auto"
    with pytest.raises(InputError, match="backend must be one of"):
        UpscaleOptions(backend="onnx")
    assert devices.BACKENDS == ("auto", "torch", "openvino")
    assert devices.PRECISIONS == ("auto",) + devices.COMPUTE_PRECISIONS


def test_without_openvino_auto_runs_torch_and_says_why(no_openvino, tiny_registry):
    assert not backends.openvino_available()
    up = Upscaler("tiny-rrim-x4-gray", device="cpu")
    img = (np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 50).astype(np.uint16)
    out = up.upscale(img)
    assert up.backend == "torch" and "not installed" in up.backend_reason
    assert up.last_run["backend"] == "torch" and up.last_run["backend_reason"] == up.backend_reason
    assert out.shape == (96, 80) and out.dtype == np.uint16
    ref = Upscaler("tiny-rrim-x4-gray", device="cpu", backend="torch").upscale(img)
    np.testing.assert_array_equal(out, ref)


def test_without_openvino_an_explicit_request_is_one_clear_error(no_openvino, tiny_registry):
    with pytest.raises(InputError, match="OpenVINO is not installed.*pip install"):
        Upscaler("tiny-rrim-x4-gray", device="cpu", backend="openvino")


def test_torch_backend_never_touches_openvino(tiny_registry, monkeypatch):
    monkeypatch.setattr(backends, "convert", lambda *a, **k: pytest.fail("converted"))
    up = Upscaler("tiny-rrim-x4-gray", device="cpu", backend="torch")
    up.upscale(np.zeros((16, 16), np.uint8))
    assert up.backend == "torch" and up.backend_reason == "torch backend requested"


def test_in_memory_modules_stay_on_torch_under_auto(monkeypatch):
    import torch

    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.PixelShuffle(4))
    module.in_channels = module.out_channels = 1
    module.scale = 4
    up = Upscaler(module, device="cpu")
    up.upscale(np.ones((8, 8), np.float32))
    assert up.backend == "torch"
    assert ("in-memory" if backends.openvino_available() else "not installed") in up.backend_reason


@needs_ov
def test_openvino_equals_torch_fp32_on_a_real_photo(ov_cache, tiny_registry):
    img = _kodak_crop().astype(np.float32) / 255.0  # float in, float out: PSNR of the raw values
    ref = Upscaler("tiny-rrim-x4-rgb", device="cpu", precision="fp32", backend="torch").upscale(img, tile=0)
    up = Upscaler("tiny-rrim-x4-rgb", device="cpu", precision="fp32", backend="openvino")
    got = up.upscale(img, tile=0)
    assert up.backend == "openvino" and up.last_run["backend"] == "openvino"
    assert got.shape == ref.shape == (160, 208, 3)
    assert _psnr(got, ref) >= 80.0
    assert float(np.abs(got).max()) > 0.01  # not a trivially equal (blank) output


@needs_ov
@pytest.mark.skipif(not devices.cpu_bf16_native(), reason="bf16 accuracy is checked where the CPU runs bf16 natively")
def test_openvino_bf16_within_50_db_where_native(ov_cache, tiny_registry):
    img = _kodak_crop().astype(np.float32) / 255.0
    ref = Upscaler("tiny-rrim-x4-rgb", device="cpu", precision="fp32", backend="torch").upscale(img, tile=0)
    got = Upscaler("tiny-rrim-x4-rgb", device="cpu", precision="bf16", backend="openvino").upscale(img, tile=0)
    assert _psnr(got, ref) >= 50.0


@needs_ov
def test_openvino_tiled_equals_untiled_and_compiles_once_per_shape(ov_cache, tiny_registry, monkeypatch):
    img = _kodak_crop(64, 72)
    up = Upscaler("tiny-rrim-x4-rgb", device="cpu", precision="fp32", backend="openvino")
    whole = up.upscale(img, tile=0)
    calls = []
    real = backends._compile
    monkeypatch.setattr(backends, "_compile", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    tiled = up.upscale(img, tile=32, overlap=8)
    assert up.last_run["tile"] == 32
    assert len(calls) == 1, calls  # all tiles (edge tiles padded) share one compiled shape
    up.upscale(img, tile=32, overlap=8)
    Upscaler("tiny-rrim-x4-rgb", device="cpu", precision="fp32", backend="openvino").upscale(img, tile=32, overlap=8)
    assert len(calls) == 1  # a second run and a second Upscaler reuse it
    # the same as torch, tiled and untiled (the tiled-vs-untiled seam is the model's own,
    # bounded in test_engine.py; a random tiny model has a wider receptive field than 8 px)
    ref_tiled = Upscaler("tiny-rrim-x4-rgb", device="cpu", precision="fp32", backend="torch")
    assert np.abs(tiled.astype(int) - ref_tiled.upscale(img, tile=32, overlap=8).astype(int)).max() <= 1
    assert np.abs(whole.astype(int) - ref_tiled.upscale(img, tile=0).astype(int)).max() <= 1


@needs_ov
def test_openvino_self_ensemble_and_per_channel_match_torch(ov_cache, tiny_registry):
    img = _kodak_crop(24, 20)
    for model, kw in (("tiny-rrim-x4-gray", {}), ("tiny-rrim-x4-rgb", {"self_ensemble": True})):
        a = Upscaler(model, device="cpu", precision="fp32", backend="torch", **kw).upscale(img)
        b = Upscaler(model, device="cpu", precision="fp32", backend="openvino", **kw).upscale(img)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, model


@needs_ov
def test_disk_cache_is_reused_and_a_corrupt_one_rebuilt(ov_cache, tiny_registry, monkeypatch, caplog):
    img = _kodak_crop(16, 16)
    Upscaler("tiny-rrim-x4-gray", device="cpu", precision="fp32", backend="openvino").upscale(img)
    assert list(ov_cache.glob("*.xml")) and list(ov_cache.glob("*.json"))
    backends.clear_caches()  # a new process: only the disk cache is left
    converts = []
    real = backends._convert_now
    monkeypatch.setattr(backends, "_convert_now", lambda m: converts.append(1) or real(m))
    good = Upscaler("tiny-rrim-x4-gray", device="cpu", precision="fp32", backend="openvino").upscale(img)
    assert converts == []
    # corrupt every cached file: the converted IR and OpenVINO's compiled blobs
    for p in ov_cache.rglob("*"):
        if p.is_file():
            p.write_bytes(b"\x00garbage" * 8)
    backends.clear_caches()
    with caplog.at_level(logging.WARNING, logger="napari_rrim_sr.engine.backends"):
        up = Upscaler("tiny-rrim-x4-gray", device="cpu", precision="fp32", backend="openvino")
        again = up.upscale(img)
    assert up.backend == "openvino"
    assert converts == [1]  # rebuilt, not trusted
    assert "corrupt" in caplog.text or "unusable" in caplog.text
    np.testing.assert_array_equal(again, good)


@needs_ov
def test_a_model_that_does_not_convert_falls_back_with_one_line(ov_cache, monkeypatch):
    import torch

    from napari_rrim_sr.registry.loading import LoadedModel

    class Odd(torch.nn.Module):  # size-dependent Python control flow: traced as a constant
        scale = 4
        in_channels = out_channels = 1

        def forward(self, x):
            y = torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")
            return y + 1.0 if x.shape[-1] > 40 else y

    loaded = LoadedModel.from_module(Odd(), "odd")
    loaded.sha256 = "0" * 64  # pretend it came from a file
    up = Upscaler(loaded, device="cpu", precision="fp32", backend="openvino")
    out = up.upscale(np.full((12, 12), 0.2, np.float32))
    assert up.backend == "torch" and "\n" not in up.backend_reason
    assert "differs from torch" in up.backend_reason or "could not convert" in up.backend_reason
    np.testing.assert_allclose(out, 0.2, atol=1e-6)


@needs_ov
def test_auto_skips_the_compile_for_tiny_runs_and_uses_openvino_for_big_ones(ov_cache, tiny_registry, monkeypatch):
    up = Upscaler("tiny-rrim-x4-gray", device="cpu", precision="fp32")
    up.upscale(np.zeros((16, 16), np.uint8))
    assert up.backend == "torch" and "small run" in up.backend_reason
    monkeypatch.setattr(backends, "AUTO_MIN_FLOPS", 0.0)
    up.upscale(np.zeros((16, 16), np.uint8))
    assert up.backend == "openvino" and "auto" in up.backend_reason


def _bench_quick(tmp_path, capsys) -> dict:
    import json

    from napari_rrim_sr.cli.main import main

    js = tmp_path / "b.json"
    assert main(["bench", "--backends", "--quick", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "| model | case |" in out and "engine default chose:" in out
    return json.loads(js.read_text())["backends"]


def test_bench_backends_quick_without_openvino(no_openvino, tmp_path, capsys):
    res = _bench_quick(tmp_path, capsys)
    cases = {r["case"]: r for r in res["rows"]}
    assert set(cases) == {"today's default", "engine default", "torch fp32", "torch bf16"}
    assert cases["today's default"]["ratio_to_today"] == 1.0
    assert all(r["mp_s"] > 0 and r["backend"] == "torch" for r in res["rows"])
    assert "not installed" in cases["engine default"]["reason"]


@needs_ov
def test_bench_backends_quick(tmp_path, capsys):
    res = _bench_quick(tmp_path, capsys)
    cases = {r["case"]: r for r in res["rows"]}
    assert set(cases) == {
        "today's default",
        "engine default",
        "torch fp32",
        "torch bf16",
        "openvino fp32",
        "openvino bf16",
    }
    assert cases["openvino fp32"]["backend"] == "openvino" and cases["openvino fp32"]["convert_s"] > 0
    assert cases["openvino bf16"]["convert_s"] == 0  # converted once per model, compiled per precision
    assert all(r["mp_s"] > 0 for r in res["rows"])


CONFORMANCE = Path(__file__).resolve().parents[3] / "shared" / "conformance"
CASES = sorted(p.stem for p in CONFORMANCE.glob("*.pth")) if CONFORMANCE.is_dir() else []


@needs_ov
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_every_public_architecture_converts_or_says_why(ov_cache, case):
    """Each public checkpoint runs on OpenVINO equal to torch, or falls back with one line."""
    from napari_rrim_sr.registry.loading import load_model

    loaded = load_model(CONFORMANCE / f"{case}.pth")
    x = np.load(CONFORMANCE / f"{case}.input.npy")[0]  # (C, H, W) float32 in 0..1
    img = np.ascontiguousarray(np.moveaxis(x, 0, -1)) if x.shape[0] == 3 else x[0]
    up = Upscaler(loaded, device="cpu", precision="fp32", backend="openvino")
    got = up.upscale(img, normalization=(0.0, 1.0), tile=0)
    if up.backend != "openvino":
        assert up.backend_reason and "\n" not in up.backend_reason
        pytest.skip(f"{case}: {up.backend_reason}")
    ref = Upscaler(loaded, device="cpu", precision="fp32", backend="torch").upscale(
        img, normalization=(0.0, 1.0), tile=0
    )
    span = max(float(np.abs(ref).max()), 1.0)
    assert float(np.abs(got - ref).max()) <= 1e-4 * span
