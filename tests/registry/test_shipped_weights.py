"""The trained weights shipped in weights/: present, loadable, documented, and better than bicubic.

Quality checks run the real models on small crops of bundled data (seconds on CPU, fp32):
the skimage astronaut photo for the RGB models and the bundled CC0 nuclei sample for the gray
model. Full validation numbers (Kodak24, held-out microscopy) are in docs/models.md with the
commands that produced them; these tests only guard against shipping broken or swapped files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {
    "rrim-x4-rgb-psnr": 3,
    "rrim-x4-rgb-gan": 3,
    "rrim-x4-rgb-real": 3,
    "rrim-x4-gray": 1,
    "rrim-x4-gray-real": 1,
}


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A registry that sees the shipped weights (conftest hides them from other tests)."""
    from napari_rrim_sr.registry import core as registry

    empty = tmp_path / "user"
    empty.mkdir()
    monkeypatch.setenv(registry.SHIPPED_ENV, "1")
    monkeypatch.setenv(registry.WEIGHTS_DIR_ENV, str(empty))
    monkeypatch.setenv(registry.PLUGINS_ENV, "none")
    registry.reset_registry()
    yield registry.get_registry()
    registry.reset_registry()


def _git_ignored(rel: str) -> bool:
    """True when git would ignore ``rel`` (``git check-ignore``); False where git is unavailable."""
    import shutil
    import subprocess

    if not shutil.which("git") or not (ROOT / ".git").exists():
        return False
    return subprocess.run(["git", "check-ignore", "-q", rel], cwd=ROOT).returncode == 0


def _score(model_id, hr, rgb, **engine_kw):
    from napari_rrim_sr.engine.api import Upscaler, upscale_bicubic
    from napari_rrim_sr.quality.evaluate import make_lr
    from napari_rrim_sr.quality.metrics import compare

    hr_c, lr = make_lr(hr, 4)
    with Upscaler(model_id, channels=3 if rgb else 1, device="cpu", precision="fp32") as up:
        sr = up.upscale(lr, rgb=rgb, **engine_kw)
    bic = upscale_bicubic(lr, 4, rgb=rgb)
    kw = dict(data_range=float(hr.max()) - float(hr.min()), y_channel=rgb, border=4)
    return compare(sr, hr_c, **kw), compare(bic, hr_c, **kw), sr


def test_every_shipped_model_is_present_with_its_card_data(shipped):
    from napari_rrim_sr.registry.loading import read_metadata

    files = {p.stem: p for p in (ROOT / "weights").glob("*.safetensors")}
    assert set(SHIPPED) <= set(files), f"missing shipped weights: {set(SHIPPED) - set(files)}"
    for wid, ch in SHIPPED.items():
        entry = shipped.find_weights(wid)
        assert entry.source == "shipped" and entry.backbone == "rrim" and entry.scale == 4
        assert entry.in_channels == entry.out_channels == ch
        assert files[wid].stat().st_size < 16 * 2**20  # small enough for a normal clone
        meta = read_metadata(files[wid])
        assert meta["name"] == wid
        # its recipe is in the repository, and so is any file it started from (--init)
        assert (ROOT / "training" / "recipes" / f"{meta['recipe']['name']}.toml").exists()
        if meta["recipe"].get("init"):
            init = meta["recipe"]["init"]
            assert (ROOT / init).exists(), init
            # ... and a clean clone has it too: not under a git-ignored folder such as runs/
            assert not _git_ignored(init), f"{wid}: --init {init} is git-ignored, so a clone lacks it"
        assert meta["metrics"] and "convention" in meta["metrics"]
    assert "../shared/data/val" not in " ".join(read_metadata(files["rrim-x4-rgb-psnr"])["recipe"]["data"])
    assert read_metadata(files["rrim-x4-rgb-gan"])["recipe"]["stage"] == "gan"
    assert shipped.default_weights(3).id == "rrim-x4-rgb-psnr"
    assert shipped.default_weights(1).id == "rrim-x4-gray"


def test_rgb_models_beat_bicubic_on_a_photo(shipped):
    from skimage import data

    hr = data.astronaut()[40:240, 140:340]  # face, helmet, flag: edges and texture
    psnr_m, bic, sr_p = _score("rrim-x4-rgb-psnr", hr, True)
    gan_m, _, sr_g = _score("rrim-x4-rgb-gan", hr, True)
    assert psnr_m["psnr"] > bic["psnr"] + 0.5 and psnr_m["ssim"] > bic["ssim"]
    assert gan_m["psnr"] > bic["psnr"]  # the GAN stage trades PSNR for texture, but not below bicubic
    assert sr_p.dtype == np.uint8 and sr_p.shape == (200, 200, 3)  # HR 200 -> LR 50 -> x4
    # the GAN model is a different network, not a copy of the PSNR one
    assert np.abs(sr_p.astype(int) - sr_g.astype(int)).mean() > 0.5


def test_real_model_holds_up_on_aliased_input_where_the_psnr_model_does_not(shipped):
    """rrim-x4-rgb-real: LR sampled without the antialiasing filter (as decimated imagery is)
    makes the bicubic-trained PSNR model fall below bicubic; the robust model stays above it.
    On clean LR it still beats bicubic."""
    from skimage import data

    from napari_rrim_sr.engine.api import Upscaler, upscale_bicubic
    from napari_rrim_sr.engine.bicubic import imresize
    from napari_rrim_sr.quality.metrics import compare

    hr = data.astronaut()[40:240, 140:340]
    sharp = imresize(hr.transpose(2, 0, 1).astype(np.float64), 0.25, antialias=False).transpose(1, 2, 0)
    lr = np.clip(np.rint(sharp), 0, 255).astype(np.uint8)
    kw = dict(data_range=255, y_channel=True, border=4)
    scores = {}
    for wid in ("rrim-x4-rgb-psnr", "rrim-x4-rgb-real"):
        with Upscaler(wid, channels=3, device="cpu", precision="fp32") as up:
            scores[wid] = compare(up.upscale(lr, rgb=True), hr, **kw)["psnr"]
    bic = compare(upscale_bicubic(lr, 4, rgb=True), hr, **kw)["psnr"]
    assert scores["rrim-x4-rgb-psnr"] < bic < scores["rrim-x4-rgb-real"]
    real_clean, bic_clean, _ = _score("rrim-x4-rgb-real", hr, True)
    assert real_clean["psnr"] > bic_clean["psnr"] + 0.3


def test_gray_model_beats_bicubic_on_the_nuclei_sample(shipped):
    from napari_rrim_sr._napari.sample_data import microscopy_array

    hr = microscopy_array()  # crop of stardist img2d.tif: held out of the gray model's training
    assert hr.ndim == 2 and hr.dtype == np.uint16 and hr.max() < 1000  # 8-bit-range values in uint16
    m, bic, sr = _score("rrim-x4-gray", hr, False, normalization="percentile")
    assert m["psnr"] > bic["psnr"] + 0.3 and m["ssim"] > bic["ssim"]
    assert sr.dtype == hr.dtype


def test_gray_real_model_holds_up_on_shot_noise_where_the_gray_model_does_not(shipped):
    """rrim-x4-gray-real: LR with Poisson noise (50 photons at full scale) puts rrim-x4-gray
    below bicubic; the robust model is above both."""
    from napari_rrim_sr._napari.sample_data import microscopy_array
    from napari_rrim_sr.engine.api import Upscaler, upscale_bicubic
    from napari_rrim_sr.engine.bicubic import imresize
    from napari_rrim_sr.quality.metrics import compare

    hr = microscopy_array().astype(np.float64)
    hr = (hr - hr.min()) / (hr.max() - hr.min())
    lr = imresize(hr, 0.25)
    lr = (np.random.default_rng(0).poisson(np.clip(lr, 0, None) * 50) / 50).clip(0, 1).astype(np.float32)
    kw = dict(data_range=1.0, y_channel=False, border=4)
    scores = {}
    for wid in ("rrim-x4-gray", "rrim-x4-gray-real"):
        with Upscaler(wid, channels=1, device="cpu", precision="fp32") as up:
            scores[wid] = compare(np.clip(up.upscale(lr, normalization=(0.0, 1.0)), 0, 1), hr, **kw)["psnr"]
    bic = compare(np.clip(upscale_bicubic(lr, 4), 0, 1), hr, **kw)["psnr"]
    assert scores["rrim-x4-gray"] < bic < scores["rrim-x4-gray-real"]
