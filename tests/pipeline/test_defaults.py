"""Every entry point with DEFAULT options on a uint16 stack, an RGB photo and an OME-Zarr, twice in
a row, with the shipped weights; each result checked against its input (issue 22 item 6, issue 23
"silently wrong" 1-3)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_rrim_sr.cli.main import main
from napari_rrim_sr.io.images import read_image

from .conftest import assert_keeps_mean, dim_uint16, rgb_photo

zarr = pytest.importorskip("zarr")
pytest.importorskip("ome_zarr")


def _cli_twice(args, capsys):
    for _ in range(2):
        rc = main([*args, "--quiet", "--overwrite"])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
    return captured


def test_cli_default_keeps_a_dim_uint16_stack_as_bright_as_it_was(tmp_path, shipped, capsys):
    """img2d-like uint16 (values 0..235) came back at half its mean with the old dtype default."""
    import tifffile

    a = np.stack([dim_uint16(24), dim_uint16(24)[::-1]])
    tifffile.imwrite(tmp_path / "nuc.tif", a, metadata={"axes": "ZYX"})
    cap = _cli_twice(["upscale", str(tmp_path / "nuc.tif"), "-o", str(tmp_path / "out")], capsys)
    out, info = read_image(tmp_path / "out" / "nuc.tif")
    assert out.shape == (2, 96, 96) and out.dtype == np.uint16
    assert_keeps_mean(a, out)
    prov = info["provenance"]
    assert prov["normalization"]["mode"] == "range" and prov["normalization"]["hi"] == float(a.max())
    assert prov["check"]["psnr"] > 20 and abs(prov["check"]["shift_of_mean"]) < 0.05 and not prov["warnings"]
    assert "check: mean" in cap.out and "warning" not in cap.err


def test_cli_default_rgb_photo(tmp_path, shipped, capsys):
    from PIL import Image

    a = rgb_photo(24)
    Image.fromarray(a).save(tmp_path / "photo.png")
    _cli_twice(["upscale", str(tmp_path / "photo.png"), "-o", str(tmp_path / "out")], capsys)
    out, info = read_image(tmp_path / "out" / "photo.png")
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8
    assert_keeps_mean(a, out, rgb=True)
    assert info["provenance"]["normalization"]["mode"] == "dtype" and info["provenance"]["check"]["psnr"] > 20


def test_cli_default_ome_zarr(tmp_path, shipped, capsys):
    from ome_zarr.writer import write_image

    a = np.stack([dim_uint16(24), dim_uint16(24).T])
    g = zarr.open_group(str(tmp_path / "vol.ome.zarr"), mode="w")
    write_image(a, g, axes="zyx", storage_options=dict(chunks=(1, 16, 16)))
    _cli_twice(["upscale", str(tmp_path / "vol.ome.zarr"), "-o", str(tmp_path / "out")], capsys)
    res = tmp_path / "out" / "vol.ome.zarr"
    out = np.asarray(zarr.open_array(str(res / "0"), mode="r"))
    assert out.shape == (2, 96, 96)
    assert_keeps_mean(a, out)
    prov = dict(zarr.open_group(str(res), mode="r").attrs)["napari_rrim_sr"]
    assert prov["normalization"]["mode"] == "range" and prov["check"]["psnr"] > 20
    assert prov["model_choice"]["weights"] == prov["model_id"]  # chosen from the data, not the word "auto"


def test_a_wrong_normalisation_is_a_visible_warning(tmp_path, shipped, capsys):
    """Silently wrong 3: the check catches the old default (dtype scaling of dim 16-bit data)."""
    import tifffile

    tifffile.imwrite(tmp_path / "nuc.tif", dim_uint16(24))
    args = ["upscale", str(tmp_path / "nuc.tif"), "-o", str(tmp_path / "o"), "--normalize", "dtype"]
    assert main([*args, "--model", "rrim-x4-gray-real", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "mean intensity moved" in err and "likely cause: dtype normalisation" in err
    prov = read_image(tmp_path / "o" / "nuc.tif")[1]["provenance"]
    assert prov["warnings"] and prov["check"]["shift_of_mean"] < -0.05


def test_pipeline_layer_flow_twice_on_a_stack(shipped):
    """The widget's path (a layer, in memory): same result twice, checked against the input."""
    from napari_rrim_sr.io.geometry import source_from_data
    from napari_rrim_sr.pipeline import Source, UpscaleRequest, plan, run

    a = dim_uint16(24)[None]
    layer = source_from_data(a, {"name": "nuc"})
    outs = []
    for _ in range(2):
        res = run(plan(UpscaleRequest(Source(a, name="nuc", layer=layer), bicubic=True)))
        assert_keeps_mean(a, res.data)
        assert res.precision == "auto" or res.precision in ("fp32", "bf16")
        kw = res.layer_kwargs("rrim")
        assert kw["name"] == "nuc RRIM x4" and kw["metadata"]["napari_rrim_sr"]["check"] == res.check
        outs.append(res.data)
    np.testing.assert_array_equal(outs[0], outs[1])
