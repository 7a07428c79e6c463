"""The automatic model choice: clean LR keeps the clean model, native noisy data gets the robust one."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_rrim_sr.model_choice import choose_weights, measure_condition

IDS = ["rrim-x4-gray", "rrim-x4-gray-real", "rrim-x4-rgb-psnr", "rrim-x4-rgb-real"]
KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "val" / "Kodak24"
NUCLEI = Path(__file__).resolve().parents[1] / "src/napari_rrim_sr/_napari/samples/nuclei_dsb2018_crop.tif"


def _smooth(n=256, seed=0):
    from skimage import data, transform

    return transform.resize(data.camera().astype(np.float64), (n, n), anti_aliasing=True)


def test_shot_noise_picks_the_robust_model_and_says_why():
    rng = np.random.default_rng(0)
    img = _smooth() / 255 * 200 + 20  # photons
    noisy = rng.poisson(img).astype(np.uint16) * 10
    c = choose_weights(noisy, channels=1, available_ids=IDS)
    assert c.weights_id == "rrim-x4-gray-real" and c.robust
    assert "noise σ ≈" in c.reason and "rrim-x4-gray-real" in c.reason
    assert c.condition.whiteness > 1.4


def test_clean_downscaled_image_keeps_the_clean_model():
    from napari_rrim_sr.bicubic import bicubic_downscale

    lr = bicubic_downscale(_smooth(512) / 255, 4)
    c = choose_weights((lr * 65535).clip(0, 65535).astype(np.uint16), channels=1, available_ids=IDS)
    assert c.weights_id == "rrim-x4-gray" and not c.robust


def test_jpeg_blocks_pick_the_robust_rgb_model():
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="JPEG", quality=30)
    jpg = np.asarray(Image.open(buf))
    cond = measure_condition(jpg, rgb=True)
    assert cond.blocky
    assert choose_weights(jpg, channels=3, rgb=True, available_ids=IDS).weights_id == "rrim-x4-rgb-real"


def test_precedence_user_then_layer_metadata_then_measurement():
    noisy = np.random.default_rng(1).poisson(50, (128, 128)).astype(np.uint16)
    assert choose_weights(noisy, channels=1, available_ids=IDS, requested="rrim-x4-gray").weights_id == "rrim-x4-gray"
    meta = {"napari_rrim_sr_weights": "rrim-x4-gray"}
    assert choose_weights(noisy, channels=1, available_ids=IDS, metadata=meta).weights_id == "rrim-x4-gray"
    # the robust model is missing: fall back to the installed one, and say so
    c = choose_weights(noisy, channels=1, available_ids=["rrim-x4-gray"])
    assert c.weights_id == "rrim-x4-gray" and "not installed" in c.reason
    assert choose_weights(noisy, channels=2, available_ids=IDS).weights_id is None


def test_bundled_nuclei_sample_is_measured_noisy():
    import tifffile

    c = choose_weights(tifffile.imread(NUCLEI), channels=1, available_ids=IDS)
    assert c.weights_id == "rrim-x4-gray-real"


@pytest.mark.skipif(not KODAK.is_dir(), reason="../shared/data/val/Kodak24 not available")
def test_every_kodak24_clean_lr_keeps_the_clean_rgb_model():
    from napari_rrim_sr.evaluate import make_lr

    picked = []
    for f in sorted(KODAK.glob("*.png")):
        _, lr = make_lr(np.asarray(Image.open(f).convert("RGB")), 4)
        picked.append(choose_weights(lr, channels=3, rgb=True, available_ids=IDS).weights_id)
    assert len(picked) == 24 and set(picked) == {"rrim-x4-rgb-psnr"}


def test_aliased_sampling_picks_the_robust_model_and_antialiased_lr_does_not():
    from skimage import data

    from napari_rrim_sr.bicubic import bicubic_downscale

    hr = data.astronaut().astype(np.float64)
    aliased = hr[::4, ::4].astype(np.uint8)  # nearest-neighbour sampling, as many satellite tiles
    c = measure_condition(aliased, rgb=True)
    assert c.aliased and not c.clean and "fine detail" in c.describe()
    smooth = np.clip(bicubic_downscale(hr, 4, channel_axis=-1) + 0.5, 0, 255).astype(np.uint8)
    assert not measure_condition(smooth, rgb=True).aliased
    assert choose_weights(aliased, channels=3, rgb=True, available_ids=IDS).weights_id == "rrim-x4-rgb-real"


def test_layer_choice_measures_the_middle_plane_of_a_stack():
    from napari_rrim_sr.model_choice import choose_for_layer, representative_plane

    rng = np.random.default_rng(2)
    clean = (_smooth(128) * 200).astype(np.uint16)
    noisy = rng.poisson(clean.astype(float) / 4 + 20).astype(np.uint16) * 4
    stack = np.stack([clean, clean, noisy, clean, clean])  # (Z, Y, X): the middle one is noisy
    np.testing.assert_array_equal(representative_plane(stack), noisy)
    assert choose_for_layer(stack, rgb=False, available_ids=IDS).weights_id == "rrim-x4-gray-real"
    assert choose_for_layer(stack[[0, 1, 0]], rgb=False, available_ids=IDS).weights_id == "rrim-x4-gray"
    # (Y, Z, X) with spatial_axes, and a (T, Y, X, 3) RGB movie
    yzx = np.moveaxis(stack, 0, 1)
    np.testing.assert_array_equal(representative_plane(yzx, spatial_axes=(0, 2)), noisy)
    movie = np.stack([np.dstack([p] * 3) for p in stack]).astype(np.uint8)
    assert representative_plane(movie, rgb=True).shape == (128, 128, 3)
    c = choose_for_layer(stack, rgb=False, available_ids=IDS, requested="rrim-x4-gray")
    assert c.weights_id == "rrim-x4-gray" and c.reason == "chosen by the user"
