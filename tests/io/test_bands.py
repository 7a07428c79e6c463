"""A 4th sample is alpha only when it looks like a mask; NIR of a NAIP tile is a band."""

from pathlib import Path

import numpy as np
import pytest

from napari_rrim_sr.io.bands import classify_fourth_band

NAIP = Path(__file__).resolve().parents[3] / "shared/data/satellite/opengeos_naip/m_4709963_se_14_1_20200831.tif"


@pytest.mark.skipif(not NAIP.exists(), reason="../shared/data NAIP tile not available")
def test_naip_near_infrared_is_a_band():
    import tifffile

    tile = tifffile.imread(NAIP)
    assert tile.shape[-1] == 4
    kind, reason = classify_fourth_band(tile)
    assert kind == "band" and "not alpha" in reason


def test_binary_constant_and_soft_edged_masks_are_alpha():
    rng = np.random.default_rng(0)
    rgba = np.dstack([rng.integers(0, 255, (64, 64, 3)), np.zeros((64, 64))]).astype(np.uint8)
    rgba[16:48, 16:48, 3] = 255  # a cut-out
    assert classify_fourth_band(rgba)[0] == "alpha"
    rgba[..., 3] = 255
    kind, reason = classify_fourth_band(rgba)
    assert kind == "alpha" and "constant" in reason
    rgba[..., 3] = 0
    rgba[10:50, 10:50, 3] = 255
    rgba[10, 10:50, 3] = 128  # one antialiased edge row: 40 of 4096 pixels
    assert classify_fourth_band(rgba)[0] == "alpha"
    # a smooth 4th channel (a band stored as 'alpha') is not a mask
    rgba[..., 3] = np.linspace(0, 255, 64).astype(np.uint8)[None, :]
    assert classify_fourth_band(rgba)[0] == "band"
    # stacks: the middle plane is looked at
    assert classify_fourth_band(np.stack([rgba] * 3))[0] == "band"
    with pytest.raises(ValueError):
        classify_fourth_band(rgba[..., :3])
