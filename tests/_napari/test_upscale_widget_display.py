"""Issue 24 #5: after a run one comparable set is shown (run under xvfb-run).

A NAIP 4-band tile and an IXM 3-channel stack come back as additive channel layers; with the
source, the bicubic layers and the model layers all visible and additive, NAIP turned almost
white. The widget now hides the source, the bicubic comparison and earlier results of the same
source (the user ticks an eye to compare).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from napari_rrim_sr.io import geometry as layer_logic

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
NAIP_DIR = DATA / "satellite/opengeos_naip"
IXM = DATA / "microscopy/bioimage_notebooks/IXMtest_A02_s9.tif"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available (../shared/data)")
    return path


def _widget(viewer):
    from napari_rrim_sr._napari.upscale.widget import UpscaleWidget

    w = UpscaleWidget(viewer)
    viewer.window.add_dock_widget(w, name="Upscale (RRIM x4)")
    return w


def _run(qtbot, w, notes):
    assert w.run() is not None, w.status.value
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert not notes["error"], notes["error"]
    return list(w.last_layers)


def _visible(viewer) -> list[str]:
    return [lay.name for lay in viewer.layers if lay.visible]


def test_naip_bands_show_only_the_model_colour_composite(viewer, qtbot, notes):
    import tifffile

    tile = tifffile.imread(min(_need(NAIP_DIR).glob("*.tif")))[300:324, 400:424].copy()
    _robust_weights_for_microscopy()
    viewer.add_image(tile, name="naip", rgb=True)
    w = _widget(viewer)
    assert w.fourth_band.value == "band" and w.one_set.value and w.add_bicubic.value
    # the details line does not call the model of a NAIP tile's bands "for native microscopy"
    w.rescan_weights()
    w.model.value = "tiny-gray-real"
    assert "native" in w.model_info.value and "microscopy" not in w.model_info.value, w.model_info.value
    w.back_to_automatic()
    _run(qtbot, w, notes)
    # R, G, B of the model: one true-colour composite; NIR, bicubic and the source hidden
    assert _visible(viewer) == [f"naip [{b}] RRIM x4" for b in ("R", "G", "B")]
    assert "tick their eye" in w.status.value
    # the composite is not washed out: no more saturated pixels than the source shows
    shown = [viewer.layers[n] for n in _visible(viewer)]
    composite = sum(
        np.clip((lay.data.astype(float) - lay.contrast_limits[0]) / np.ptp(lay.contrast_limits), 0, 1) for lay in shown
    )
    assert composite.shape == (96, 96) and float(np.mean(composite >= 3.0)) < 0.05
    # a second run: the first results are hidden too, one set stays visible
    _run(qtbot, w, notes)
    assert _visible(viewer) == [f"naip [{b}] RRIM x4 [1]" for b in ("R", "G", "B")]


def _robust_weights_for_microscopy():
    import torch

    from napari_rrim_sr.registry import core as reg_module
    from napari_rrim_sr.registry.loading import save_weights

    reg = reg_module.get_registry()
    torch.manual_seed(8)
    hp = {"num_feat": 8, "num_block": 1, "scale": 4, "in_channels": 1, "out_channels": 1}
    save_weights(
        reg_module.user_weights_dir(create=True) / "tiny-gray-real.safetensors",
        reg.build("rrim", **hp),
        backbone="rrim",
        hparams=hp,
        description="RRIM x4, 1 channel, for native microscopy: test weights",
    )


def test_ixm_channels_and_gray_bicubic_hidden(viewer, qtbot, notes):
    import tifffile

    stack = tifffile.imread(_need(IXM))[:, 100:124, 200:224].copy()
    viewer.add_image(stack, name="ixm", metadata={"napari_rrim_sr_axes": "CYX"})
    other = viewer.add_image(stack[0], name="unrelated")
    w = _widget(viewer)
    w.source.value = viewer.layers["ixm"]
    layers = _run(qtbot, w, notes)
    assert [lay.metadata[layer_logic.META_KEY]["kind"] for lay in layers] == ["bicubic", "rrim"] * 3
    assert _visible(viewer) == ["unrelated"] + [f"ixm [C{i}] RRIM x4" for i in range(3)]
    assert other.visible  # a layer of another source is left alone
    # unticked: the old behaviour, everything stays visible
    w.one_set.value = False
    _run(qtbot, w, notes)
    assert len(_visible(viewer)) == 1 + 3 + 6
