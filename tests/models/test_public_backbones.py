"""Public architectures (ESRGAN original layout, Real-ESRGAN Compact, SPAN, SwinIR) against a peer.

The fixtures in ``../shared/conformance`` are seeded random networks in the public key layouts
with the outputs spandrel 0.4.2 computes for them (see its README). Every case must load by
detection alone through the normal loading path, match the reference output, and run through
the engine (untiled and tiled) like RRIM does. Other configurations than the fixtures' (the real
checkpoints' sizes) are built here with random weights and must detect to the same hparams.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_rrim_sr.engine import api as engine
from napari_rrim_sr.errors import WeightsError
from napari_rrim_sr.registry.core import Registry
from napari_rrim_sr.registry.loading import detect_backbone, load_model, load_state_dict

CONF = Path(__file__).resolve().parents[3] / "shared" / "conformance"
CASES = json.loads((CONF / "cases.json").read_text())["cases"] if (CONF / "cases.json").exists() else {}
needs_conf = pytest.mark.skipif(not CASES, reason=f"conformance fixtures not found at {CONF}")
ARCH_ID = {"ESRGAN": "esrgan", "Compact": "compact", "SPAN": "span", "SwinIR": "swinir"}
PUBLIC = tuple(ARCH_ID.values())
WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


@pytest.fixture(scope="module")
def reg():
    return Registry(discover=False)


def _case_ids():
    return sorted(CASES) or ["none"]


def _expected_hparams(case: dict) -> dict:
    """The fixture's build config in this project's hparam names."""
    cfg, arch = case["config"], case["architecture"]
    if arch == "ESRGAN":
        return {"num_feat": cfg["num_filters"], "num_block": cfg["num_blocks"]}
    if arch == "Compact":
        return {"num_feat": cfg["num_feat"], "num_conv": cfg["num_conv"]}
    if arch == "SPAN":
        return {"num_feat": cfg["feature_channels"]}
    return {
        k: cfg[k]
        for k in (
            "embed_dim",
            "depths",
            "num_heads",
            "window_size",
            "mlp_ratio",
            "upsampler",
            "resi_connection",
            "img_range",
            "img_size",
        )
    }


def _hwc(chw: np.ndarray) -> np.ndarray:
    return np.moveaxis(chw, 0, -1) if chw.shape[0] == 3 else chw[0]


# ------------------------------------------------------------------ the fixtures, by detection alone


@needs_conf
@pytest.mark.parametrize("name", _case_ids())
def test_fixture_loads_by_detection_and_matches_reference(name, reg):
    case = CASES[name]
    loaded = load_model(CONF / f"{name}.pth", registry=reg)  # no backbone named: detection only
    assert loaded.backbone == ARCH_ID[case["architecture"]]
    assert (loaded.scale, loaded.in_channels, loaded.out_channels) == (
        case["scale"],
        case["in_channels"],
        case["out_channels"],
    )
    for key, val in _expected_hparams(case).items():
        assert loaded.hparams[key] == val, key
    assert sum(p.numel() for p in loaded.module.parameters()) <= case["n_params"]
    x = torch.from_numpy(np.load(CONF / f"{name}.input.npy"))
    ref = np.load(CONF / f"{name}.output.npy")
    with torch.inference_mode():
        y = loaded.module(x).float().numpy()
    assert y.shape == tuple(case["output_shape"]) == ref.shape
    assert np.abs(y - ref).max() <= 1e-4 * case["max_abs_output"]


@needs_conf
@pytest.mark.parametrize("name", _case_ids())
def test_only_the_right_detector_claims_a_fixture(name, reg):
    sd, _ = load_state_dict(CONF / f"{name}.pth")
    claims = [bid for bid, spec in reg.backbones().items() if spec.detect and spec.detect(sd)]
    assert claims == [ARCH_ID[CASES[name]["architecture"]]]


@pytest.mark.parametrize("path", sorted(WEIGHTS.glob("*.safetensors")), ids=lambda p: p.name)
def test_public_detectors_do_not_claim_shipped_weights(path, reg):
    sd, _ = load_state_dict(path)
    for bid in PUBLIC:
        assert reg.backbone(bid).detect(sd) is None, bid
    assert detect_backbone(sd, reg)[0] == "rrim"


@pytest.mark.parametrize("backbone", ["rrim", "srresnet", "rrdbnet"])
@pytest.mark.parametrize("scale", [2, 4])
def test_public_detectors_do_not_claim_builtin_layouts(backbone, scale, reg):
    with torch.device("meta"):
        sd = reg.build(backbone, scale=scale, in_channels=3, out_channels=3).state_dict()
    assert [b for b, s in reg.backbones().items() if s.detect and s.detect(sd)] == [backbone]


# ------------------------------------------------------------------ through the engine


def _smooth(h: int, w: int, channels: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] / 40.0
    planes = [0.5 + 0.4 * np.sin(yy * 1.3 + xx * 0.7 + k) for k in range(channels)]
    img = np.stack(planes, -1) if channels == 3 else planes[0]
    return img.astype(np.float32)


@needs_conf
@pytest.mark.parametrize("name", _case_ids())
def test_engine_untiled_equals_bare_module_and_tiled_equals_untiled(name, reg):
    case = CASES[name]
    loaded = load_model(CONF / f"{name}.pth", registry=reg)
    tol = 1e-4 * max(1.0, case["max_abs_output"])
    x = np.load(CONF / f"{name}.input.npy")
    with torch.inference_mode():
        bare = _hwc(loaded.module(torch.from_numpy(x)).numpy()[0])
    # floats are not clipped and (0, 1) normalisation is the identity; overlap 0 = no border margin
    whole = engine.upscale(_hwc(x[0]), loaded, tile=0, overlap=0, normalization=(0.0, 1.0), precision="fp32")
    assert whole.shape == bare.shape
    assert np.abs(whole - bare).max() <= tol
    # a larger smooth image: 2x3 tiles of 64 px with the default overlap vs one tile
    img = _smooth(112, 136, case["in_channels"])
    one = engine.upscale(img, loaded, tile=0, normalization=(0.0, 1.0), precision="fp32")
    tiled = engine.upscale(img, loaded, tile=64, normalization=(0.0, 1.0), precision="fp32")
    s = case["scale"]
    assert one.shape[:2] == (112 * s, 136 * s)
    # as RRIM's (tests/engine/test_engine.py): 1e-3 on 0..1 data, relative to the random net's output size
    assert np.abs(one - tiled).max() <= 1e-3 * max(1.0, case["max_abs_output"])


@needs_conf
def test_engine_honours_swinir_window_as_size_multiple(reg):
    loaded = load_model(CONF / "swinir_classical_small_x2_rgb.pth", registry=reg)
    up = engine.Upscaler(loaded, device="cpu", precision="fp32")
    assert up.size_multiple == 8
    assert reg.backbone("swinir").half_precisions == frozenset({"bf16"})
    out = up.upscale(_smooth(13, 21, 3), normalization=(0.0, 1.0))  # smaller than a window, odd sizes
    assert out.shape == (26, 42, 3)
    # the bare module pads to the window and crops back, too
    with torch.inference_mode():
        assert loaded.module(torch.rand(1, 3, 13, 21)).shape == (1, 3, 26, 42)


@needs_conf
@pytest.mark.parametrize("name", ["span_x2_rgb_ch32", "esrgan_old_x1_rgb_nf32", "compact_x2_gray_small"])
def test_bicubic_reference_and_metrics_use_the_models_scale(name, reg):
    from napari_rrim_sr.quality.evaluate import evaluate

    case = CASES[name]
    loaded = load_model(CONF / f"{name}.pth", registry=reg)
    s = case["scale"]
    img = (_smooth(40, 48, case["in_channels"]) * 255).astype(np.uint8)
    assert engine.upscale_bicubic(img, s).shape[:2] == (40 * s, 48 * s)
    res = evaluate(img, loaded, tile=0)
    assert np.isfinite(res["model"]["psnr"])
    # x1: the LR is the HR and bicubic x1 the identity, so the reference is exact
    assert np.isfinite(res["bicubic"]["psnr"]) == (s != 1)


# ------------------------------------------------------------------ other configurations


def _meta_state_dict(reg, backbone: str, hp: dict) -> dict:
    with torch.device("meta"):
        return reg.build(backbone, **hp).state_dict()


OTHER = [
    # the real checkpoints' sizes
    ("esrgan", dict(scale=4, num_feat=64, num_block=23, num_grow_ch=32)),  # 4x-UltraSharp, RRDB_ESRGAN_x4
    ("esrgan", dict(scale=8, num_feat=64, num_block=23, num_grow_ch=32)),  # 8x community models
    ("esrgan", dict(scale=2, num_feat=48, num_block=6, num_grow_ch=16, in_channels=1, out_channels=1)),
    ("esrgan", dict(scale=2, unshuffle=2, num_feat=64, num_block=4)),  # Real-ESRGAN x2 in the old layout
    ("esrgan", dict(scale=1, num_feat=64, num_block=5, in_channels=4, out_channels=4)),  # any channel count
    ("compact", dict(scale=4, num_feat=64, num_conv=32)),  # realesr-general-x4v3
    ("compact", dict(scale=4, num_feat=64, num_conv=16)),  # realesr-animevideov3
    ("compact", dict(scale=1, num_feat=24, num_conv=4, in_channels=1, out_channels=1)),
    ("compact", dict(scale=3, num_feat=16, num_conv=2)),
    ("span", dict(scale=4, num_feat=48)),  # spanx4_ch48
    ("span", dict(scale=2, num_feat=48)),  # spanx2_ch48
    ("span", dict(scale=1, num_feat=52, in_channels=1, out_channels=1, norm=False)),
    ("span", dict(scale=3, num_feat=16)),
    # 001_classicalSR_DF2K_s64w8_SwinIR-M_x2
    (
        "swinir",
        dict(
            scale=2,
            embed_dim=180,
            depths=[6] * 6,
            num_heads=[6] * 6,
            window_size=8,
            mlp_ratio=2.0,
            upsampler="pixelshuffle",
            resi_connection="1conv",
            img_size=64,
        ),
    ),
    # 001_classicalSR_DIV2K_s48w8_SwinIR-M_x3 (s48: img_size 48) and x8
    (
        "swinir",
        dict(
            scale=3,
            embed_dim=180,
            depths=[6] * 6,
            num_heads=[6] * 6,
            window_size=8,
            upsampler="pixelshuffle",
            img_size=48,
        ),
    ),
    (
        "swinir",
        dict(
            scale=8,
            embed_dim=180,
            depths=[6] * 6,
            num_heads=[6] * 6,
            window_size=8,
            upsampler="pixelshuffle",
            img_size=48,
        ),
    ),
    # 002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4
    (
        "swinir",
        dict(
            scale=4,
            embed_dim=60,
            depths=[6] * 4,
            num_heads=[6] * 4,
            window_size=8,
            upsampler="pixelshuffledirect",
            img_size=64,
        ),
    ),
    # 003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN: large, 3conv
    (
        "swinir",
        dict(
            scale=4,
            embed_dim=240,
            depths=[6] * 9,
            num_heads=[8] * 9,
            window_size=8,
            upsampler="nearest+conv",
            resi_connection="3conv",
            img_size=64,
        ),
    ),
    (
        "swinir",
        dict(
            scale=2,
            embed_dim=96,
            depths=[2, 4],
            num_heads=[4, 8],
            window_size=12,
            mlp_ratio=4.0,
            upsampler="nearest+conv",
            img_size=48,
        ),
    ),
    # 004_grayDN_DFWB_s128w8_SwinIR-M_noise15: no upsampler, 1 channel, window 8, 128 px training
    (
        "swinir",
        dict(
            scale=1,
            in_channels=1,
            out_channels=1,
            embed_dim=180,
            depths=[6] * 6,
            num_heads=[6] * 6,
            window_size=8,
            upsampler="",
            img_size=128,
        ),
    ),
]


@pytest.mark.parametrize("backbone,hp", OTHER, ids=[f"{b}-{i}" for i, (b, _) in enumerate(OTHER)])
def test_other_configurations_detect_their_hparams(backbone, hp, reg):
    spec = reg.backbone(backbone)
    sd = _meta_state_dict(reg, backbone, hp)
    assert [b for b, s in reg.backbones().items() if s.detect and s.detect(sd)] == [backbone]
    found = spec.detect(sd)
    expected = spec.resolve_hparams(**hp)
    for key, val in expected.items():
        assert found.get(key, val) == val, (key, found.get(key), val)
    assert set(expected) <= set(found) | {"unshuffle"}


@pytest.mark.parametrize(
    "backbone,hp",
    [
        ("esrgan", dict(scale=2, num_feat=16, num_block=2, num_grow_ch=8, in_channels=1, out_channels=1)),
        ("compact", dict(scale=3, num_feat=8, num_conv=3)),
        ("span", dict(scale=3, num_feat=12)),
        (
            "swinir",
            dict(
                scale=3, embed_dim=24, depths=[2], num_heads=[3], window_size=4, upsampler="pixelshuffle", img_size=16
            ),
        ),
    ],
)
def test_saved_pth_round_trip_through_the_loader(backbone, hp, reg, tmp_path):
    """A random net saved as a plain .pth (with a BasicSR-style wrapper) loads by detection and
    runs identically (the full file path, not just the detector)."""
    torch.manual_seed(0)
    net = reg.build(backbone, **hp).eval()
    path = tmp_path / "net.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    loaded = load_model(path, registry=reg)
    assert loaded.backbone == backbone and loaded.scale == hp["scale"]
    x = torch.rand(1, net.in_channels, 12, 16)
    with torch.inference_mode():
        assert torch.allclose(loaded.module(x), net(x))


# ------------------------------------------------------------------ errors and installing


def test_unknown_architecture_lists_the_supported_ones(reg, tmp_path):
    path = tmp_path / "mystery.pth"
    torch.save({"encoder.weight": torch.zeros(4, 3, 3, 3)}, path)
    with pytest.raises(WeightsError) as exc:
        load_model(path, registry=reg)
    for bid in ("rrim", "rrdbnet", *PUBLIC):
        assert bid in str(exc.value)


@needs_conf
def test_partial_state_dict_names_the_missing_tensors(reg, tmp_path):
    sd, _ = load_state_dict(CONF / "span_x4_rgb_ch48.pth")
    del sd["block_3.c2_r.eval_conv.weight"]
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"missing tensors .*block_3\.c2_r\.eval_conv\.weight"):
        load_model(path, registry=reg)


@needs_conf
def test_add_user_weights_validates_and_installs_a_listed_copy(tmp_path, monkeypatch):
    from napari_rrim_sr.registry.user_files import add_user_weights

    monkeypatch.setenv("NAPARI_RRIM_SR_WEIGHTS_DIR", str(tmp_path / "user"))
    monkeypatch.setenv("NAPARI_RRIM_SR_PLUGINS", "none")
    reg = Registry(discover=False)
    src = CONF / "swinir_classical_small_x2_rgb.pth"
    entry = add_user_weights(src, registry=reg)
    assert entry.source == "user" and entry.backbone == "swinir" and entry.scale == 2
    assert entry.path.parent == tmp_path / "user" and entry.path.suffix == ".safetensors"
    assert [e.id for e in reg.weights()] == [entry.id]
    a, b = load_model(entry, registry=reg), load_model(src, registry=reg)
    x = torch.rand(1, 3, 16, 24)
    with torch.inference_mode():
        assert torch.equal(a.module(x), b.module(x))
    assert add_user_weights(src, registry=reg).path == entry.path  # the same file again: fine
    other = tmp_path / f"{src.stem}.pth"
    other.write_bytes((CONF / "span_x2_rgb_ch32.pth").read_bytes())
    with pytest.raises(WeightsError, match="different weights file"):
        add_user_weights(other, registry=reg)
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError):
        add_user_weights(bad, registry=reg)
    assert not (tmp_path / "user" / "broken.safetensors").exists()


@needs_conf
def test_plain_safetensors_without_metadata_loads_by_detection(reg, tmp_path):
    from safetensors.torch import save_file

    sd, _ = load_state_dict(CONF / "compact_x4_rgb_general_v3.pth")
    path = tmp_path / "realesr-general-x4v3.safetensors"
    # (a ``module.`` prefix is stripped for .pth only: weights_io's safetensors branch skips clean_state_dict)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    loaded = load_model(path, registry=reg)
    assert (loaded.backbone, loaded.scale, loaded.hparams["num_conv"]) == ("compact", 4, 32)
