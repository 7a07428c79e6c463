"""Channel stacks: every channel upscaled with the gray model, with the source's LUT colours."""

from pathlib import Path

import numpy as np
import pytest

from napari_rrim_sr.io.channels import (
    channel_axis_from_axes,
    read_channel_displays,
)

IXM = Path(__file__).resolve().parents[3] / "shared/data/microscopy/bioimage_notebooks/IXMtest_A02_s9.tif"


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
