"""``upscale --model auto`` (the default): per-input choice, its reason, provenance; 4-band TIFFs; channel stacks."""

from pathlib import Path

import numpy as np
import pytest

from napari_rrim_sr.cli.main import main
from napari_rrim_sr.io.images import read_image, write_image

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """The shipped weights visible (conftest hides them), nothing else."""
    from napari_rrim_sr.engine import api as engine
    from napari_rrim_sr.registry import core as registry

    empty = tmp_path / "user"
    empty.mkdir()
    monkeypatch.setenv(registry.SHIPPED_ENV, "1")
    monkeypatch.setenv(registry.WEIGHTS_DIR_ENV, str(empty))
    monkeypatch.setenv(registry.PLUGINS_ENV, "none")
    registry.reset_registry()
    engine.clear_cache()
    yield registry.get_registry()
    registry.reset_registry()
    engine.clear_cache()


def _smooth(n):
    y, x = np.mgrid[0:n, 0:n] / n
    return 0.5 + 0.4 * np.sin(6 * x) * np.cos(4 * y)


def test_auto_chooses_per_input_prints_the_reason_and_records_it(tmp_path, shipped, capsys):
    from napari_rrim_sr.engine.bicubic import bicubic_downscale

    rng = np.random.default_rng(0)
    noisy = rng.poisson(_smooth(64) * 60 + 10).astype(np.uint16) * 16  # shot noise, 12-bit-ish
    clean = (bicubic_downscale(_smooth(96), 4) * 60000).astype(np.uint16)
    srcs = [write_image(tmp_path / "in" / "noisy.tif", noisy), write_image(tmp_path / "in" / "clean.tif", clean)]
    assert main(["upscale", *map(str, srcs), "-o", str(tmp_path / "out"), "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "noisy.tif: model rrim-x4-gray-real: Looks like raw camera data" in out and "which also denoises" in out
    assert "clean.tif: model rrim-x4-gray: Looks clean" in out and "sharpest on clean data" in out
    prov = read_image(tmp_path / "out" / "noisy.tif")[1]["provenance"]
    assert prov["model_choice"]["weights"] == "rrim-x4-gray-real" and prov["model_choice"]["robust"]
    assert prov["model"]["model_id"] == "rrim-x4-gray-real"
    assert prov["model_choice"]["condition"]["noise_sigma"] > 0 and "noise σ" in prov["model_choice"]["details"]
    assert read_image(tmp_path / "out" / "clean.tif")[1]["provenance"]["model"]["model_id"] == "rrim-x4-gray"
    # an explicit id is used as before: no choice recorded
    assert (
        main(
            [
                "upscale",
                str(srcs[0]),
                "-o",
                str(tmp_path / "o2"),
                "--quiet",
                "--device",
                "cpu",
                "--model",
                "rrim-x4-gray",
            ]
        )
        == 0
    )
    prov = read_image(tmp_path / "o2" / "noisy.tif")[1]["provenance"]
    assert prov["model"]["model_id"] == "rrim-x4-gray" and prov["model_choice"]["reason"] == "chosen by the user"


def test_help_explains_auto(capsys):
    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "auto (default)" in text and "rrim-x4-gray-real" in text and "model_choice" in text


def test_four_band_tiff_keeps_its_fourth_band_as_a_band(tmp_path, shipped, capsys):
    import tifffile

    naip = DATA / "satellite/opengeos_naip/m_4709963_se_14_1_20200831.tif"
    if naip.exists():  # real RGB + NIR, written as a plain (non-Geo) RGBA TIFF as many tools do
        bands = tifffile.imread(naip)[300:320, 400:424]
    else:
        bands = np.random.default_rng(1).integers(0, 255, (20, 24, 4)).astype(np.uint8)
    src = tmp_path / "rgbn.tif"
    tifffile.imwrite(src, bands, photometric="rgb", extrasamples=["unassalpha"])
    assert read_image(src)[1]["rgb"]  # the reader alone would take it as RGBA
    assert main(["upscale", str(src), "-o", str(tmp_path / "out"), "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "rgbn.tif: 4th sample varies" in out and "a band" in out
    res, info = read_image(tmp_path / "out" / "rgbn.tif")
    assert res.shape == (80, 96, 4) and not info["rgb"] and info["axes"] == "YXC"
    assert info["provenance"]["engine"]["channel_mode"] == "per_channel"
    # the 4th band went through the model, not bicubic-as-alpha: it is not flat where the source is not
    assert res[..., 3].std() > 0

    # a real alpha mask stays alpha (colour model on RGB, bicubic on the mask)
    rgba = np.dstack([bands[..., :3], np.where(np.arange(24) < 12, 255, 0)[None, :].repeat(20, 0)]).astype(np.uint8)
    src2 = tmp_path / "rgba.tif"
    tifffile.imwrite(src2, rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert main(["upscale", str(src2), "-o", str(tmp_path / "out"), "--quiet", "--device", "cpu"]) == 0
    assert "a band" not in capsys.readouterr().out
    res2, info2 = read_image(tmp_path / "out" / "rgba.tif")
    assert info2["rgb"] and res2.shape == (80, 96, 4)
    assert info2["provenance"]["engine"]["channel_mode"] == "rgb"


IXM = DATA / "microscopy/bioimage_notebooks/IXMtest_A02_s9.tif"


@pytest.mark.skipif(not IXM.exists(), reason="../shared/data IXMtest not available")
def test_channel_stack_keeps_all_channels(tmp_path, shipped):
    import tifffile

    crop = tifffile.imread(IXM)[:, 100:124, 200:230]  # (3, 24, 30) CYX
    src = tmp_path / "ixm.tif"
    tifffile.imwrite(src, crop, imagej=True, metadata={"axes": "CYX"})
    assert main(["upscale", str(src), "-o", str(tmp_path / "out"), "--quiet", "--device", "cpu"]) == 0
    res, info = read_image(tmp_path / "out" / "ixm.tif")
    assert res.shape == (3, 96, 120) and info["axes"] == "CYX" and res.dtype == np.uint16
    for c in range(3):  # each channel stays its own channel (no mixing, no channel dropped)
        lr_mean, sr_mean = crop[c].mean(), res[c].mean()
        assert abs(sr_mean - lr_mean) < 0.1 * lr_mean + 20
    # --axes CYX on the same file says the same
    assert main(["upscale", str(src), "-o", str(tmp_path / "o2"), "--axes", "CYX", "--quiet", "--device", "cpu"]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "o2" / "ixm.tif")[0], res)
