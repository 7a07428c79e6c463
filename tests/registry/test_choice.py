"""The automatic model choice: clean LR keeps the clean model, native noisy data gets the robust one."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_rrim_sr.registry.choice import choose_weights, measure_condition

IDS = ["rrim-x4-gray", "rrim-x4-gray-real", "rrim-x4-rgb-psnr", "rrim-x4-rgb-real"]
KODAK = Path(__file__).resolve().parents[3] / "shared" / "data" / "val" / "Kodak24"
NUCLEI = Path(__file__).resolve().parents[2] / "src/napari_rrim_sr/_napari/samples/nuclei_dsb2018_crop.tif"


def _smooth(n=256, seed=0):
    from skimage import data, transform

    return transform.resize(data.camera().astype(np.float64), (n, n), anti_aliasing=True)


def test_shot_noise_picks_the_robust_model_and_says_why():
    rng = np.random.default_rng(0)
    img = _smooth() / 255 * 200 + 20  # photons
    noisy = rng.poisson(img).astype(np.uint16) * 10
    c = choose_weights(noisy, channels=1, available_ids=IDS)
    assert c.weights_id == "rrim-x4-gray-real" and c.robust
    assert "raw camera data" in c.reason and "rrim-x4-gray-real" in c.reason and "denoises" in c.reason
    assert "noise σ ≈" in c.details and "σ" not in c.reason  # the numbers go to the tooltip
    assert c.condition.whiteness > 1.4


def test_clean_downscaled_image_keeps_the_clean_model():
    from napari_rrim_sr.engine.bicubic import bicubic_downscale

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
    assert c.weights_id == "rrim-x4-gray" and "not installed" in c.reason and not c.robust
    assert choose_weights(noisy, channels=2, available_ids=IDS).weights_id is None


def test_bundled_nuclei_sample_is_measured_noisy():
    import tifffile

    c = choose_weights(tifffile.imread(NUCLEI), channels=1, available_ids=IDS)
    assert c.weights_id == "rrim-x4-gray-real"


@pytest.mark.skipif(not KODAK.is_dir(), reason="../shared/data/val/Kodak24 not available")
def test_every_kodak24_clean_lr_keeps_the_clean_rgb_model():
    from napari_rrim_sr.quality.evaluate import make_lr

    picked = []
    for f in sorted(KODAK.glob("*.png")):
        _, lr = make_lr(np.asarray(Image.open(f).convert("RGB")), 4)
        picked.append(choose_weights(lr, channels=3, rgb=True, available_ids=IDS).weights_id)
    assert len(picked) == 24 and set(picked) == {"rrim-x4-rgb-psnr"}


def test_aliased_sampling_picks_the_robust_model_and_antialiased_lr_does_not():
    from skimage import data

    from napari_rrim_sr.engine.bicubic import bicubic_downscale

    hr = data.coffee().astype(np.float64)
    aliased = hr[::4, ::4].astype(np.uint8)  # nearest-neighbour sampling, as many satellite tiles
    c = measure_condition(aliased, rgb=True)
    assert c.aliased and not c.clean and "fine detail" in c.describe() and ": aliased" in c.describe()
    smooth = np.clip(bicubic_downscale(hr, 4, channel_axis=-1) + 0.5, 0, 255).astype(np.uint8)
    assert not measure_condition(smooth, rgb=True).aliased
    assert choose_weights(aliased, channels=3, rgb=True, available_ids=IDS).weights_id == "rrim-x4-rgb-real"


def test_layer_choice_measures_the_middle_plane_of_a_stack():
    from napari_rrim_sr.registry.choice import choose_for_layer, representative_plane

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
    assert c.weights_id == "rrim-x4-gray" and c.source == "user" and not c.automatic


# -- issue 22: clean LR of the training images keeps the clean model -------------------------

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
#: training images whose clean LR the old measures sent to the robust model: JPEG grid
#: (bsd200 147021, 55067; yang91 t34: ×1.17–1.31) and "fine detail" (bsd200 164074, 134008:
#: ×1.16, ×1.31), all below the old thresholds' Kodak margin but clean bicubic LR
TRAIN_MISFIRES = ["bsd200/147021.png", "bsd200/55067.png", "yang91/t34.png", "bsd200/164074.png", "bsd200/134008.png"]


@pytest.mark.skipif(not (DATA / "train").is_dir(), reason="../shared/data/train not available")
@pytest.mark.parametrize("name", TRAIN_MISFIRES)
def test_clean_lr_of_jpeg_born_training_images_keeps_the_clean_model(name):
    from napari_rrim_sr.quality.evaluate import make_lr

    _, lr = make_lr(np.asarray(Image.open(DATA / "train" / name).convert("RGB")), 4)
    c = choose_weights(lr, channels=3, rgb=True, available_ids=IDS)
    assert c.weights_id == "rrim-x4-rgb-psnr" and not c.robust, c.details
    assert c.reason.startswith("Looks clean") and "standard model" in c.reason


@pytest.mark.skipif(not (DATA / "satellite").is_dir(), reason="../shared/data/satellite not available")
def test_decimated_satellite_tile_gets_the_robust_model_in_satellite_words():
    from napari_rrim_sr.io.images import read_image
    from napari_rrim_sr.registry.choice import choose_for_layer

    arr, info = read_image(DATA / "satellite/rasterio_testdata/rgb1.tif")
    c = choose_for_layer(arr, rgb=True, spatial_axes=info.get("spatial_axes"), available_ids=IDS)
    assert c.weights_id == "rrim-x4-rgb-real" and c.robust and c.condition.aliased and not c.condition.noisy
    assert c.kind == "rgb" and "microscopy" not in c.reason + c.model_text
    assert "single pixels" in c.reason and "diagonal" in c.details


@pytest.mark.skipif(not (DATA / "satellite").is_dir(), reason="../shared/data/satellite not available")
def test_naip_four_band_tile_is_multiband_and_its_model_is_not_called_microscopy():
    """The NAIP tile is upscaled band by band with the gray pair: the words must still fit it."""
    from napari_rrim_sr.io.images import read_image
    from napari_rrim_sr.registry.choice import choose_for_layer, describe_model

    arr, info = read_image(DATA / "satellite/opengeos_naip/m_4709963_se_14_1_20100629.tif")
    assert arr.ndim == 3 and arr.shape[-1] == 4
    c = choose_for_layer(arr, rgb=False, spatial_axes=(0, 1), available_ids=IDS)
    assert c.kind == "multiband" and c.weights_id == "rrim-x4-gray-real"  # a 4-pixel block grid
    assert c.condition.grid >= 1.4 and "blocks" in c.reason
    shipped = "RRIM x4, 1 channel, for native microscopy: rrim-x4-gray fine-tuned (L1) on LR with noise"
    assert "microscopy" not in describe_model(c.weights_id, c.kind, shipped) + c.reason + c.model_text
    assert "for native microscopy" in describe_model(c.weights_id, "microscopy", shipped)


# -- the four sources and the way back ----------------------------------------------------

FT = "my-finetune"  # a user's fine-tune, installed beside the shipped pair


def _noisy(seed=3):
    img = _smooth(128) / 255 * 200 + 20
    return np.random.default_rng(seed).poisson(img).astype(np.uint16) * 10


def _clean():
    from napari_rrim_sr.engine.bicubic import bicubic_downscale

    return (bicubic_downscale(_smooth(512) / 255, 4) * 65535).clip(0, 65535).astype(np.uint16)


def test_precedence_user_over_layer_over_weights_file_over_data():
    from napari_rrim_sr.registry.choice import choose_model

    ids = [*IDS, FT]
    pref = {FT: {"in_channels": 1, "model_choice": {"role": "any"}}}
    layer = {"napari_rrim_sr_weights": "rrim-x4-gray"}
    noisy = _noisy()
    kw = dict(available_ids=ids, weights_metadata=pref)
    # data alone (no preference): the robust model
    data = choose_model(noisy, available_ids=ids, weights_metadata={})
    assert (data.weights_id, data.source) == ("rrim-x4-gray-real", "data")
    # a weights file that asks for all 1-channel data beats the measure
    c = choose_model(noisy, **kw)
    assert (c.weights_id, c.source) == (FT, "weights") and FT in c.reason
    # the layer's request beats the weights file
    c = choose_model(noisy, layer_metadata=layer, **kw)
    assert (c.weights_id, c.source) == ("rrim-x4-gray", "layer") and "asks for" in c.reason
    # the user beats everything, and is told what automatic would be
    c = choose_model(noisy, user="rrim-x4-gray-real", layer_metadata=layer, **kw)
    assert (c.weights_id, c.source, c.automatic) == ("rrim-x4-gray-real", "user", False)
    assert c.auto is not None and c.auto.weights_id == "rrim-x4-gray" and "automatic would be rrim-x4-gray" in c.reason
    # a layer request for weights that are not installed is ignored
    c = choose_model(noisy, layer_metadata={"napari_rrim_sr_weights": "gone"}, available_ids=IDS, weights_metadata={})
    assert c.weights_id == "rrim-x4-gray-real" and c.source == "data"


@pytest.mark.parametrize("back", [None, "auto", "", "Auto (from the data)"])
def test_the_way_back_to_automatic(back):
    from napari_rrim_sr.registry.choice import choose_model, is_auto

    assert is_auto(back) and not is_auto("rrim-x4-gray")
    picked = choose_model(_noisy(), user="rrim-x4-gray", available_ids=IDS, weights_metadata={})
    assert picked.weights_id == "rrim-x4-gray" and not picked.automatic
    again = choose_model(_noisy(), user=back, available_ids=IDS, weights_metadata={})
    assert again.automatic and again.weights_id == picked.auto.weights_id == "rrim-x4-gray-real"


def test_weights_file_preference_takes_the_robust_slot_only_for_its_channels_and_kinds():
    from napari_rrim_sr.registry.choice import choose_model, weights_preference

    ids = [*IDS, FT]
    robust_ft = {FT: {"in_channels": 1, "model_choice": {"role": "robust", "kinds": ["microscopy"]}}}
    c = choose_model(_noisy(), available_ids=ids, weights_metadata=robust_ft)
    assert (c.weights_id, c.source, c.robust) == (FT, "weights", True) and "its weights file" in c.reason
    c = choose_model(_clean(), available_ids=ids, weights_metadata=robust_ft)  # clean data: the clean slot
    assert (c.weights_id, c.source) == ("rrim-x4-gray", "data")
    # not for other kinds, not for other channel counts, not when it is not installed
    c = choose_model(_noisy(), kind="multiband", available_ids=ids, weights_metadata=robust_ft)
    assert c.weights_id == "rrim-x4-gray-real"
    rgb = np.dstack([_noisy()] * 3).astype(np.uint8)
    assert choose_model(rgb, rgb=True, available_ids=ids, weights_metadata=robust_ft).weights_id != FT
    assert choose_model(_noisy(), available_ids=IDS, weights_metadata=robust_ft).weights_id == "rrim-x4-gray-real"
    # a malformed preference is no preference
    assert weights_preference({"model_choice": {"role": "best"}}) is None
    assert weights_preference({"model_choice": "robust"}) is None


def test_a_user_weights_file_with_a_preference_is_chosen_from_the_registry(isolated_registry):
    """A fine-tune saved with ``model_choice`` metadata into the user folder takes the robust slot."""
    import os

    import torch

    from napari_rrim_sr.registry import core as registry
    from napari_rrim_sr.registry.choice import choose_for_layer, installed_weight_ids, installed_weights_metadata
    from napari_rrim_sr.registry.loading import save_weights

    hp = {"num_feat": 8, "num_block": 1, "scale": 4, "in_channels": 1, "out_channels": 1}
    torch.manual_seed(0)
    folder = Path(os.environ[registry.WEIGHTS_DIR_ENV])
    for wid, extra in (("rrim-x4-gray", None), (FT, {"model_choice": {"role": "robust", "kinds": ["microscopy"]}})):
        save_weights(
            folder / f"{wid}.safetensors",
            isolated_registry.build("rrim", **hp),
            backbone="rrim",
            hparams=hp,
            name=wid,
            extra=extra,
        )
    registry.reset_registry()
    assert set(installed_weights_metadata()) == {FT}
    ids = installed_weight_ids()
    c = choose_for_layer(_noisy(), rgb=False, available_ids=ids)
    assert (c.weights_id, c.source, c.robust) == (FT, "weights", True)
    assert choose_for_layer(_clean(), rgb=False, available_ids=ids).weights_id == "rrim-x4-gray"
    # the user's pick still wins over the file's preference
    assert (
        choose_for_layer(_noisy(), rgb=False, available_ids=ids, requested="rrim-x4-gray").weights_id == "rrim-x4-gray"
    )


def test_measure_train_counts_the_clean_keep_rate(tmp_path):
    from skimage import data

    from napari_rrim_sr.training.measure.choice import measure_train, train_table

    (tmp_path / "train" / "set").mkdir(parents=True)
    Image.fromarray(data.astronaut()[:256, :256]).save(tmp_path / "train" / "set" / "a.png")
    noisy = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)  # white noise
    Image.fromarray(noisy).save(tmp_path / "train" / "set" / "b.png")
    cache = tmp_path / "cache"
    r = measure_train(tmp_path, cache, log=lambda s: None)
    assert (r["n"], r["clean"]) == (2, 1) and r["robust"][0]["file"] == "set/b.png"
    assert sorted(p.name for p in cache.iterdir()) == ["set__a.npy", "set__b.npy"]
    assert measure_train(tmp_path, cache, log=lambda s: None)["clean"] == 1  # from the cache
    assert "| set | 2 | 1 | 50.0 % |" in train_table(r)
