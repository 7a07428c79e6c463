"""evaluate(): the standard protocol (MATLAB bicubic LR, Y channel, border = scale)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_rrim_sr.engine.bicubic import bicubic_downscale, imresize_torch, to_uint8
from napari_rrim_sr.errors import InputError
from napari_rrim_sr.quality.evaluate import evaluate, evaluate_folder, make_lr
from napari_rrim_sr.registry.core import Registry
from napari_rrim_sr.registry.loading import LoadedModel

DATA = Path(__file__).parents[3] / "shared" / "data"
KODAK = DATA / "val" / "Kodak24"


class BicubicNet(nn.Module):
    """A "model" that is MATLAB bicubic x4: its scores must equal the bicubic baseline's."""

    in_channels = out_channels = 3
    scale = 4

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return imresize_torch(x, 4.0) * self.w


def bicubic_model(channels=3):
    m = BicubicNet()
    m.in_channels = m.out_channels = channels
    return LoadedModel.from_module(m, "bicubic-net", {"scale": 4, "in_channels": channels, "out_channels": channels})


@pytest.fixture(scope="module")
def kodak_crop():
    if not KODAK.exists():
        pytest.skip("shared data not available")
    from PIL import Image

    with Image.open(KODAK / "kodim05.png") as im:
        return np.asarray(im.convert("RGB"))[100:199, 150:253]  # 99 x 103: not multiples of 4


def test_make_lr_is_matlab_bicubic_of_the_mod_crop(kodak_crop):
    hr_c, lr = make_lr(kodak_crop, 4)
    assert hr_c.shape == (96, 100, 3) and lr.shape == (24, 25, 3) and lr.dtype == np.uint8
    np.testing.assert_array_equal(lr, to_uint8(bicubic_downscale(kodak_crop, 4, channel_axis=-1)))


def test_a_bicubic_model_scores_like_bicubic(kodak_crop):
    res = evaluate(kodak_crop, bicubic_model(), precision="fp32", tile=0)
    m, b = res["model"], res["bicubic"]
    # identical up to the engine's reflect-padded borders (shaved) and float32 rounding
    assert m["psnr"] == pytest.approx(b["psnr"], abs=0.05)
    assert m["ssim"] == pytest.approx(b["ssim"], abs=2e-3)
    assert 18 < b["psnr"] < 40 and 0 < b["ssim"] < 1 and 0 < b["fsim"] <= 1
    assert "Y channel" in res["convention"] and "4 px border" in res["convention"]
    assert "MATLAB bicubic x1/4" in res["convention"]
    assert res["shape"] == (96, 100, 3)


def test_random_model_is_worse_than_bicubic_and_gray_uses_no_y(kodak_crop):
    torch.manual_seed(0)
    hp = dict(num_feat=8, num_block=1, in_channels=1, out_channels=1, scale=4)
    rnd = LoadedModel.from_module(Registry(discover=False).build("rrim", **hp), "rrim", hp)
    gray = kodak_crop.mean(-1).astype(np.uint8)
    res = evaluate(gray, rnd, precision="fp32")
    assert res["model"]["psnr"] < res["bicubic"]["psnr"]  # an untrained net must not beat bicubic
    assert "Y channel" not in res["convention"]
    res_rgb = evaluate(kodak_crop, bicubic_model(), y_channel=False, border=0, tile=0)
    assert "fsimc" in res_rgb["model"] and "0 px border" in res_rgb["convention"]


def test_float_hr_needs_a_data_range(kodak_crop):
    f = kodak_crop.astype(np.float32) / 255
    with pytest.raises(InputError, match="data_range"):
        evaluate(f, bicubic_model(), tile=0)
    res = evaluate(f, bicubic_model(), data_range=1.0, tile=0)
    assert res["bicubic"]["psnr"] > 18


def test_bad_hr_images():
    with pytest.raises(InputError, match="gray"):
        evaluate(np.zeros((10, 10, 4), np.uint8), bicubic_model())
    with pytest.raises(InputError, match="too small"):
        evaluate(np.zeros((5, 40, 3), np.uint8), bicubic_model())


def test_evaluate_folder_rows_and_means(tmp_path, kodak_crop):
    from napari_rrim_sr.io.images import write_image

    a = write_image(tmp_path / "a.png", kodak_crop)
    b = write_image(tmp_path / "b.png", np.ascontiguousarray(kodak_crop[::-1]))
    res = evaluate_folder([a, b], bicubic_model(), tile=0)
    assert [Path(r["image"]).name for r in res["rows"]] == ["a.png", "b.png"]
    for which in ("model", "bicubic"):
        for k in ("psnr", "ssim", "fsim", "rmse"):
            assert res["mean"][which][k] == pytest.approx(np.mean([r[which][k] for r in res["rows"]]))
    assert res["model_id"] == "bicubic-net (in memory)"
    by_folder = evaluate_folder([tmp_path], bicubic_model(), tile=0)
    assert len(by_folder["rows"]) == 2
    with pytest.raises(InputError, match="no images"):
        evaluate_folder([], bicubic_model())
