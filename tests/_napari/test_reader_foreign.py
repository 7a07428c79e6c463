"""Issue 19 (#3): a remembered choice of our reader for .tif never breaks opening other TIFFs.

napari offers readers by filename pattern only, so with this plugin installed a .tif has two
compatible readers; once the user remembers ours, napari hands it every .tif. It must open them.
"""

from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_rrim_sr._napari.reader import get_reader  # noqa: E402
from napari_rrim_sr.io.geometry import META_KEY  # noqa: E402

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
IMG2D = DATA / "microscopy/stardist_samples/img2d.tif"
IXM = DATA / "microscopy/bioimage_notebooks/IXMtest_A02_s9.tif"
NAIP = DATA / "satellite/opengeos_naip/m_4709963_se_14_1_20200831.tif"
LANDSAT = DATA / "satellite/rasterio_testdata/RGB.byte.tif"


def test_foreign_tiffs_open_with_their_metadata(tmp_path):
    import tifffile

    p = tmp_path / "spaced.tif"
    tifffile.imwrite(
        p,
        np.arange(48, dtype=np.uint16).reshape(2, 4, 6),
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={"axes": "ZYX", "unit": "um"},
    )
    ((data, kw, _),) = get_reader(str(p))(str(p))
    assert data.shape == (2, 4, 6) and kw["name"] == "spaced" and not kw["rgb"]
    np.testing.assert_allclose(kw["scale"], (1.0, 0.5, 0.5))
    if IXM.exists():  # ImageJ composite: one layer per channel with the file's LUT colours and ranges
        ((data, kw, _),) = get_reader(str(IXM))(str(IXM))
        assert kw["channel_axis"] == 0 and kw["colormap"] == ["red", "green", "blue"]
        assert kw["contrast_limits"][2] == [124.0, 4095.0] and kw["blending"] == ["additive"] * 3
    if NAIP.exists():  # RGB + NIR: true colour from three layers, NIR a (hidden) band, never opacity
        ((data, kw, _),) = get_reader(str(NAIP))(str(NAIP))
        assert kw["channel_axis"] == 2 and kw["colormap"] == ["red", "green", "blue", "gray"]
        assert kw["visible"] == [True, True, True, False]


@pytest.mark.gui
def test_remembered_reader_opens_foreign_and_own_tiffs_in_a_real_viewer(make_napari_viewer, tmp_path, monkeypatch):
    from napari.errors import MultipleReaderError
    from napari.settings import get_settings

    from napari_rrim_sr.io.images import write_image

    if not IMG2D.exists():
        pytest.skip("../shared/data not available")
    viewer = make_napari_viewer()
    settings = get_settings().plugins
    # no preference: napari asks (two readers match *.tif by pattern) whether or not get_reader declines
    monkeypatch.setattr(settings, "extension2reader", {})
    with pytest.raises(MultipleReaderError):
        viewer.open(str(IMG2D), plugin=None)  # None: what File > Open and drag-and-drop pass
    monkeypatch.setattr(settings, "extension2reader", {"*.tif": "napari-rrim-sr"})
    (layer,) = viewer.open(str(IMG2D), plugin=None)
    assert layer.data.shape == (512, 512) and layer.name == "img2d"
    for rgb_tif in (LANDSAT, NAIP):
        if rgb_tif.exists():
            opened = viewer.open(str(rgb_tif), plugin=None)
            assert opened and all(lay.data.shape[:2] == opened[0].data.shape[:2] for lay in opened)
    if LANDSAT.exists():
        (rgb,) = [lay for lay in viewer.layers if lay.name == "RGB.byte"]
        assert rgb.rgb and rgb.data.shape == (718, 791, 3)
    if IXM.exists():
        chans = viewer.open(str(IXM), plugin=None)
        assert len(chans) == 3 and [lay.colormap.name for lay in chans] == ["red", "green", "blue"]
    ours = write_image(tmp_path / "ours.tif", np.full((8, 8), 5, np.uint16), metadata={"model_id": "m"})
    (own,) = viewer.open(str(ours), plugin=None)
    assert own.metadata[META_KEY]["model_id"] == "m"
