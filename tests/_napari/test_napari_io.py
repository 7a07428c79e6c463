"""Reader, writers and sample data: Qt-free round trips, then through a real viewer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_rrim_sr.errors import InputError, OutputError
from napari_rrim_sr.io import bundle
from napari_rrim_sr.io.geometry import META_KEY

napari = pytest.importorskip("napari")

from napari.layers import Image  # noqa: E402

from napari_rrim_sr._napari.reader import get_reader  # noqa: E402
from napari_rrim_sr._napari.writer import write_bundle, write_image_layer  # noqa: E402

PROV = {
    "kind": "rrim",
    "model_id": "tiny-rrim-x4-gray",
    "weights_sha256": "ab" * 32,
    "precision": "bf16",
    "tile": 256,
    "elapsed_s": 0.5,
    "metrics": {"model": {"psnr": 30.0}, "bicubic": {"psnr": 29.0}, "convention": "c"},
}


def _layer_tuple(data, **kw):
    return Image(data, **kw).as_layer_data_tuple()


def _assert_same_layer(data, kwargs, ref_data, ref_layer: Image):
    assert data.dtype == ref_data.dtype
    np.testing.assert_array_equal(data, ref_data)
    np.testing.assert_allclose(kwargs["scale"], ref_layer.scale)
    np.testing.assert_allclose(kwargs["translate"], ref_layer.translate)
    assert kwargs["name"] == ref_layer.name
    assert kwargs["metadata"] == ref_layer.metadata


# -- Qt-free -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,shape,rgb",
    [
        (np.uint16, (12, 10), False),
        (np.uint8, (8, 9, 3), True),
        (np.float32, (3, 6, 7), False),
    ],
)
def test_tiff_round_trip_keeps_data_dtype_scale_metadata(tmp_path, dtype, shape, rgb):
    rng = np.random.default_rng(0)
    data = (rng.random(shape) * (1 if dtype == np.float32 else np.iinfo(dtype).max)).astype(dtype)
    ndim = len(shape) - (1 if rgb else 0)
    layer = Image(
        data,
        rgb=rgb,
        name="res RRIM x4",
        scale=(0.5,) * (ndim - 2) + (0.125, 0.25),
        translate=(3.0,) * (ndim - 2) + (-0.375, 1.0),
        blending="additive",
        metadata={META_KEY: PROV, "user": {"note": "x", "n": 3}},
        **({} if rgb else {"colormap": "magma", "contrast_limits": (0.1, 0.9) if dtype == np.float32 else (5, 200)}),
    )
    d, meta, _ = layer.as_layer_data_tuple()
    (out,) = write_image_layer(str(tmp_path / "res.tif"), d, meta)
    reader = get_reader(out)
    assert reader is not None
    ((data2, kw, kind),) = reader(out)
    assert kind == "image"
    _assert_same_layer(data2, kw, data, layer)
    assert kw["rgb"] is rgb and kw["blending"] == "additive"
    if not rgb:
        assert kw["colormap"] == "magma"
        np.testing.assert_allclose(kw["contrast_limits"], layer.contrast_limits)
    assert kw["metadata"][META_KEY]["weights_sha256"] == "ab" * 32
    # reopened layer is a valid napari layer with the same world geometry
    back = Image(data2, **kw)
    np.testing.assert_allclose(back.data_to_world((0,) * ndim), layer.data_to_world((0,) * ndim))


def test_pixel_size_in_tiff_metadata(tmp_path):
    from napari_rrim_sr.io.images import read_image

    layer = Image(np.zeros((4, 4), np.uint16), scale=(0.065, 0.065), units=("um", "um"))
    d, meta, _ = layer.as_layer_data_tuple()
    (out,) = write_image_layer(str(tmp_path / "a.tiff"), d, meta)
    _, info = read_image(out)
    assert info["pixel_size"] == pytest.approx((0.065, 0.065))
    assert info["unit"] in ("µm", "um", "micrometer")


def test_cli_written_tiff_opens_with_pixel_size(tmp_path):
    from napari_rrim_sr.io.images import write_image

    path = write_image(
        tmp_path / "cli.tif",
        np.ones((8, 8), np.uint16),
        like={"pixel_size": (0.4, 0.4), "unit": "µm"},
        scale=4,
        metadata={"model_id": "m", "kind": "rrim"},
    )
    reader = get_reader(str(path))
    assert reader is not None
    ((data, kw, _),) = reader(str(path))
    assert kw["scale"] == pytest.approx((0.1, 0.1))
    assert kw["metadata"][META_KEY]["model_id"] == "m"


def test_reader_opens_16bit_rgb_and_provenance_pngs(tmp_path):
    import imagecodecs
    from PIL import Image as PILImage

    from napari_rrim_sr.io.images import write_image

    rgb48 = (np.arange(4 * 5 * 3, dtype=np.uint32).reshape(4, 5, 3) * 2311 + 3).astype(np.uint16)
    (tmp_path / "rgb48.png").write_bytes(imagecodecs.png_encode(rgb48))
    ((data, kw, kind),) = get_reader(str(tmp_path / "rgb48.png"))(str(tmp_path / "rgb48.png"))
    assert kind == "image" and kw["rgb"] and kw["name"] == "rgb48"
    np.testing.assert_array_equal(data, rgb48)  # all 16 bits (napari's builtin keeps the high byte)

    ours = write_image(tmp_path / "ours.png", np.full((6, 6, 3), 9, np.uint8), metadata={"model_id": "m"})
    ((data, kw, _),) = get_reader(str(ours))(str(ours))
    assert data.dtype == np.uint8 and kw["metadata"][META_KEY]["model_id"] == "m"

    plain16 = tmp_path / "gray16.png"  # a foreign PNG opens plainly (a remembered reader must not refuse it)
    PILImage.fromarray(np.full((4, 4), 300, np.uint16)).save(plain16)
    ((data, kw, _),) = get_reader(str(plain16))(str(plain16))
    assert data.dtype == np.uint16 and data[0, 0] == 300 and META_KEY not in kw["metadata"]


def test_reader_declines_foreign_and_broken_paths(tmp_path):
    import tifffile
    from PIL import Image as PILImage

    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((4, 4), np.uint8))
    jsondesc = tmp_path / "other.tif"
    tifffile.imwrite(jsondesc, np.zeros((4, 4), np.uint8), metadata={"someone": "else"})
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 3)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    png = tmp_path / "a.png"
    PILImage.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    fake_png = tmp_path / "fake.png"
    fake_png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    folder = tmp_path / "folder"
    folder.mkdir()
    bad_bundle = tmp_path / "bad_bundle"
    bad_bundle.mkdir()
    (bad_bundle / "bundle.json").write_text("{not json")
    other_json = tmp_path / "other_json"
    other_json.mkdir()
    (other_json / "bundle.json").write_text(json.dumps({"format": "something-else"}))
    # undecodable files and folders that are not bundles are declined (issue 19: readable foreign
    # TIFF/PNGs are no longer declined but opened plainly, see test_reader_foreign.py)
    broken = [
        corrupt,
        empty,
        fake_png,
        folder,
        bad_bundle,
        other_json,
        tmp_path / "missing.tif",
        tmp_path / "missing_dir",
    ]
    for p in broken:
        assert get_reader(str(p)) is None, p
    for p in (plain, jsondesc, png):
        ((data, kw, kind),) = get_reader(str(p))(str(p))
        assert kind == "image" and data.shape == (4, 4) and META_KEY not in kw["metadata"], p
    assert get_reader([str(plain), str(corrupt)]) is None
    assert get_reader([]) is None


def _result_layers(rng):
    hr = rng.integers(0, 4000, size=(32, 36), dtype=np.uint16)
    src = Image(hr[::4, ::4].copy(), name="cells", scale=(2.0, 2.0))
    sr = Image(
        np.clip(hr.astype(int) + rng.integers(-30, 31, size=hr.shape), 0, 4095).astype(np.uint16),
        name="cells RRIM x4",
        scale=(0.5, 0.5),
        translate=(-0.75, -0.75),
        metadata={META_KEY: PROV},
    )
    bic = Image(
        np.clip(hr.astype(int) + rng.integers(-200, 201, size=hr.shape), 0, 4095).astype(np.uint16),
        name="cells bicubic x4",
        scale=(0.5, 0.5),
        translate=(-0.75, -0.75),
        metadata={META_KEY: {"kind": "bicubic", "model_id": None}},
    )
    ref = Image(hr, name="ground truth", scale=(0.5, 0.5), translate=(-0.75, -0.75))
    return [src, sr, bic, ref]


def test_bundle_round_trip_and_metrics(tmp_path):
    layers = _result_layers(np.random.default_rng(1))
    folder = tmp_path / "cells_comparison"
    written = write_bundle(str(folder), [lay.as_layer_data_tuple() for lay in layers])
    assert written[0] == str(folder)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "bicubic.tif",
        "bundle.json",
        "metrics.json",
        "provenance.json",
        "source-ground_truth.tif",
        "source.tif",
        "sr.tif",
    ]
    manifest = json.loads((folder / "bundle.json").read_text())
    assert [e["role"] for e in manifest["layers"]] == ["source", "sr", "bicubic", "source"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["self_check"]["cells RRIM x4"]["model"]["psnr"] == 30.0
    vs = metrics["against_reference"]["cells RRIM x4 vs ground truth"]
    assert vs["model"]["psnr"] > vs["bicubic"]["psnr"]  # SR has less noise than "bicubic"
    assert "4 px border" in vs["convention"]
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["cells RRIM x4"]["model_id"] == "tiny-rrim-x4-gray"

    reader = get_reader(str(folder))
    assert reader is not None
    out = reader(str(folder))
    assert [kw["name"] for _, kw, _ in out] == [lay.name for lay in layers]
    for (data, kw, _), lay in zip(out, layers):
        assert data.dtype == lay.data.dtype
        np.testing.assert_array_equal(data, lay.data)
        np.testing.assert_allclose(kw["scale"], lay.scale)
        np.testing.assert_allclose(kw["translate"], lay.translate)
        assert kw["metadata"].get(META_KEY) == lay.metadata.get(META_KEY)
        assert "bundle_metrics" in kw["metadata"]


def test_bundle_refuses_a_non_empty_folder_and_tif_names(tmp_path):
    layers = [lay.as_layer_data_tuple() for lay in _result_layers(np.random.default_rng(2))[:2]]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):  # an output problem (OutputError since #13)
        write_bundle(str(tmp_path / "full"), layers)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(InputError, match="folder"):
        write_bundle(str(tmp_path / "x.tif"), layers)


def test_sample_data_functions():
    from napari_rrim_sr._napari import sample_data

    ((micro, mkw, kind),) = sample_data.microscopy()
    assert kind == "image" and micro.dtype == np.uint16 and micro.shape == (256, 256)
    assert "CC0" in mkw["metadata"]["license"]
    ((sat, skw, _),) = sample_data.satellite()
    assert sat.dtype == np.uint8 and sat.shape == (256, 256, 3) and skw["rgb"]
    assert skw["scale"][0] == pytest.approx(300.04, abs=0.01)
    ((photo, pkw, _),) = sample_data.photo()
    assert photo.shape == (256, 256, 3) and photo.dtype == np.uint8
    attribution = (sample_data.SAMPLES_DIR / "ATTRIBUTION.md").read_text()
    for f in (sample_data.MICROSCOPY_FILE, sample_data.SATELLITE_FILE):
        assert f.name in attribution
    total = sum(f.stat().st_size for f in sample_data.SAMPLES_DIR.iterdir())
    assert total < 400_000


# -- through a real viewer ---------------------------------------------------------------------


@pytest.mark.gui
def test_viewer_save_and_open_layer_and_bundle(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layers = _result_layers(np.random.default_rng(3))[:3]
    for lay in layers:
        viewer.add_layer(lay)
    sr = viewer.layers["cells RRIM x4"]
    before = sr.data.copy()
    path = tmp_path / "sr.tif"
    viewer.layers.selection = {sr}
    saved = viewer.layers.save(str(path), selected=True, plugin="napari-rrim-sr")
    assert saved == [str(path)]
    opened = viewer.open(str(path), plugin="napari-rrim-sr")
    (back,) = opened
    assert back.name.startswith("cells RRIM x4")  # napari de-duplicates the name
    assert back.data.dtype == np.uint16
    np.testing.assert_array_equal(back.data, before)
    np.testing.assert_allclose(back.scale, sr.scale)
    np.testing.assert_allclose(back.translate, sr.translate)
    assert back.metadata[META_KEY] == sr.metadata[META_KEY]

    folder = tmp_path / "bundle"
    viewer.layers.selection = set(layers)
    viewer.layers.save(str(folder), selected=True, plugin="napari-rrim-sr")
    assert (folder / "bundle.json").is_file()
    n = len(viewer.layers)
    opened = viewer.open(str(folder), plugin="napari-rrim-sr")
    assert len(opened) == 3 and len(viewer.layers) == n + 3
    assert [lay.data.shape for lay in opened] == [lay.data.shape for lay in layers]
    np.testing.assert_array_equal(sr.data, before)  # saving never touches the layer


@pytest.mark.gui
def test_viewer_opens_samples(make_napari_viewer):
    viewer = make_napari_viewer()
    for key, dtype, rgb in (("microscopy", np.uint16, False), ("satellite", np.uint8, True), ("photo", np.uint8, True)):
        (layer,) = viewer.open_sample("napari-rrim-sr", key)
        assert layer.data.dtype == dtype and layer.rgb is rgb


# -- issue 13, defect 9: damaged metadata opens plainly; bundles never lead out of their folder --


def _own_tiff(path, arr, layer=None, **rec):
    from napari_rrim_sr.io.images import write_image

    record = {"format": bundle.LAYER_FORMAT, "version": 1, "layer": {"name": "n"} if layer is None else layer}
    record.update(rec)
    return write_image(path, arr, metadata=record)


@pytest.mark.parametrize(
    "layer,rec,field",
    [
        ({"scale": "abc"}, {}, "scale"),
        ({"contrast_limits": [5]}, {}, "contrast_limits"),
        ({"contrast_limits": [9, 1]}, {}, "contrast_limits"),
        ({"translate": [1, "x"]}, {}, "translate"),
        ({"scale": [1.0, 2.0, 3.0]}, {}, "scale"),  # wrong length for 2-D data
        ({"rgb": "yes"}, {}, "rgb"),
        ({"rgb": True}, {}, "rgb"),  # gray data cannot be RGB
        ({"opacity": 7}, {}, "opacity"),
        ({"gamma": -1}, {}, "gamma"),
        ({"units": 3}, {}, "units"),
        ({"rotate": "left"}, {}, "rotate"),
        ({"name": ["a"]}, {}, "name"),
        ([1, 2], {}, "layer"),
        ({}, {"metadata": 5}, "metadata"),
        ({}, {"provenance": "x"}, "provenance"),
    ],
)
def test_layer_tiff_with_wrong_types_opens_plainly_with_a_warning(tmp_path, layer, rec, field):
    arr = np.arange(36, dtype=np.uint16).reshape(6, 6)
    p = _own_tiff(tmp_path / "bad.tif", arr, layer, **rec)
    reader = get_reader(str(p))
    assert reader is not None
    with pytest.warns(UserWarning, match=field):
        ((data, kwargs, kind),) = reader(str(p))
    np.testing.assert_array_equal(data, arr)
    defaults = {"rgb": False, "name": "bad", "metadata": {}}  # the plain reading of these fields
    assert kind == "image" and kwargs.get(field, defaults.get(field)) == defaults.get(field)
    Image(data, **kwargs)  # napari accepts what is left


def test_good_fields_survive_next_to_a_bad_one(tmp_path):
    arr = np.zeros((6, 6), np.uint8)
    p = _own_tiff(tmp_path / "mixed.tif", arr, {"name": "keep", "translate": [1.0, 2.0], "scale": "abc"})
    with pytest.warns(UserWarning, match="scale"):
        ((_, kwargs, _),) = get_reader(str(p))(str(p))
    assert kwargs["name"] == "keep" and kwargs["translate"] == (1.0, 2.0) and "scale" not in kwargs


def test_invalid_pixel_size_in_our_tiff_metadata_does_not_block_the_pixels(tmp_path):
    import tifffile

    from napari_rrim_sr.io.images import read_image

    p = tmp_path / "px.tif"
    tifffile.imwrite(p, np.ones((5, 5), np.uint8), metadata={"pixel_size": "abc", "unit": "µm", META_KEY: {"a": 1}})
    arr, info = read_image(p)
    assert arr.shape == (5, 5) and info["pixel_size"] is None
    assert any("pixel_size" in w for w in info["warnings"])


def _two_layer_bundle(folder):
    layers = [(np.zeros((8, 8), np.uint8), {"name": "a"}, "image"), (np.ones((8, 8), np.uint8), {"name": "b"}, "image")]
    bundle.write_bundle(folder, layers)
    return json.loads((folder / "bundle.json").read_text())


@pytest.mark.parametrize("layers", [None, "sr.tif", 5, {"file": "a.tif"}])
def test_bundle_whose_layers_is_not_a_list_is_one_clear_error(tmp_path, layers):
    folder = tmp_path / "b"
    manifest = _two_layer_bundle(folder)
    manifest["layers"] = layers
    (folder / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="'layers' is .*not a list"):
        get_reader(str(folder))(str(folder))


def test_bundle_entries_that_are_not_objects_are_skipped(tmp_path):
    folder = tmp_path / "b"
    manifest = _two_layer_bundle(folder)
    manifest["layers"] = [7, "x", manifest["layers"][1], {"file": 3}, {"no": "file"}]
    (folder / "bundle.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="skipped"):
        out = get_reader(str(folder))(str(folder))
    assert [kw["name"] for _, kw, _ in out] == ["b"]


def test_bundle_never_follows_a_link_out_of_its_folder(tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    _own_tiff(outside / "private.tif", np.full((8, 8), 99, np.uint8))
    folder = tmp_path / "b"
    manifest = _two_layer_bundle(folder)
    (folder / "source.tif").unlink()  # the first layer's file
    (folder / "source.tif").symlink_to(outside / "private.tif")
    (folder / "inside.tif").symlink_to(folder / "source-b.tif")  # a link within the bundle is fine
    manifest["layers"] += [
        {"file": "../secret/private.tif"},
        {"file": str(outside / "private.tif")},
        {"file": "inside.tif", "role": "source"},
    ]
    (folder / "bundle.json").write_text(json.dumps(manifest))
    (folder / "metrics.json").unlink()
    (folder / "metrics.json").symlink_to(outside / "private.tif")
    with pytest.warns(UserWarning, match="not followed"):
        out = get_reader(str(folder))(str(folder))
    assert [int(d.max()) for d, _, _ in out] == [1, 1]  # source-b.tif and its in-bundle link only
    assert all("bundle_metrics" not in kw["metadata"] for _, kw, _ in out)
