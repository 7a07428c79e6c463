"""Channel stacks: every channel upscaled with the gray model, with the source's LUT colours."""

from pathlib import Path

import numpy as np
import pytest

from napari_rrim_sr.channels import (
    ChannelDisplay,
    channel_axis_from_axes,
    layer_data,
    read_channel_displays,
    upscale_channels,
)

IXM = Path(__file__).resolve().parents[2] / "shared/data/microscopy/bioimage_notebooks/IXMtest_A02_s9.tif"


def test_channel_axis_letters():
    assert channel_axis_from_axes("CYX") == 0 and channel_axis_from_axes("TCZYX") == 1
    assert channel_axis_from_axes("ZYX") is None and channel_axis_from_axes(None) is None


@pytest.mark.skipif(not IXM.exists(), reason="../shared/data IXMtest not available")
def test_imagej_hyperstack_displays_are_read():
    shown = read_channel_displays(IXM, 3)
    assert [d.colormap for d in shown] == ["red", "green", "blue"]
    assert shown[0].contrast_limits == (124.0, 1875.0) and shown[2].contrast_limits == (124.0, 4095.0)
    assert all(d.blending == "additive" for d in shown)


def test_imagej_and_ome_written_displays(tmp_path):
    import tifffile

    a = np.zeros((2, 16, 16), np.uint16)
    lut = np.zeros((3, 256), np.uint8)
    lut[1] = np.arange(256)  # green ramp
    odd = np.zeros((3, 256), np.uint8)
    odd[0], odd[2] = np.arange(256), np.arange(256) // 2  # purple-ish: not a named ramp
    tifffile.imwrite(
        tmp_path / "ij.tif", a, imagej=True, metadata={"axes": "CYX", "LUTs": [lut, odd], "Labels": ["dapi", "gfp"]}
    )
    shown = read_channel_displays(tmp_path / "ij.tif", 2)
    assert shown[0].colormap == "green" and shown[0].name == "dapi"
    assert isinstance(shown[1].colormap, np.ndarray) and shown[1].colormap.shape == (256, 3)
    tifffile.imwrite(tmp_path / "plain.tif", a)  # no metadata: napari-like defaults
    assert [d.colormap for d in read_channel_displays(tmp_path / "plain.tif", 2)] == ["magenta", "green"]


def test_every_channel_is_upscaled_with_its_own_choice_and_display(tiny_registry):
    rng = np.random.default_rng(0)
    stack = np.stack([rng.integers(0, 4000, (12, 10)), np.full((12, 10), 7)]).astype(np.uint16)
    shown = [ChannelDisplay("dapi", "blue", (0.0, 4000.0)), ChannelDisplay("gfp", "green")]
    res = upscale_channels(stack, channel_axis=0, model="tiny-rrim-x4-gray", displays=shown, tile=0)
    assert [r.data.shape for r in res] == [(48, 40), (48, 40)]
    assert res[0].data.dtype == np.uint16 and res[0].choice.weights_id == "tiny-rrim-x4-gray"
    lds = layer_data(res, name="cells", scale=(0.25, 0.25))
    assert [kw["name"] for _, kw, _ in lds] == ["cells [dapi]", "cells [gfp]"]
    assert lds[0][1]["colormap"] == "blue" and lds[0][1]["contrast_limits"] == [0.0, 4000.0]
    assert lds[1][1]["metadata"]["napari_rrim_sr_model_choice"]["weights"] == "tiny-rrim-x4-gray"
    # a trailing channel axis (YXC) and a mismatched display list
    res2 = upscale_channels(np.moveaxis(stack, 0, -1), channel_axis=-1, model="tiny-rrim-x4-gray", tile=0)
    np.testing.assert_array_equal(res2[0].data, res[0].data)
    with pytest.raises(Exception, match="2 channels"):
        upscale_channels(stack, channel_axis=0, model="tiny-rrim-x4-gray", displays=shown[:1])
    with pytest.raises(Exception, match="spatial"):
        upscale_channels(stack, channel_axis=1, spatial_axes=(1, 2), model="tiny-rrim-x4-gray")
