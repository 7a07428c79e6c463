"""Issue 24 #4: File ▸ Save Layers with napari's defaults keeps a result layer's geometry and
provenance. A result made by the Upscale widget is saved the way napari saves (the save dialog's
preselected file type; ``viewer.layers.save`` without a plugin), reopened, and compared."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from napari_rrim_sr.io.geometry import META_KEY  # noqa: E402

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


@pytest.fixture
def result_layer(make_napari_viewer, tiny_registry, qtbot):
    """A viewer with a uint16 source (pixel size 0.5, offset) and its RRIM result, made by the widget."""
    from napari_rrim_sr._napari.widgets import UpscaleWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    src = viewer.add_image(
        rng.integers(0, 60000, size=(24, 20), dtype=np.uint16), name="cells", scale=(0.5, 0.5), translate=(3.0, -2.0)
    )
    w = UpscaleWidget(viewer)
    viewer.window.add_dock_widget(w, name="Upscale (RRIM x4)")
    w.source.value = src
    w.add_bicubic.value = False
    worker = w.run()
    assert worker is not None, w.status.value
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    (sr,) = [lay for lay in w.last_layers if (lay.metadata.get(META_KEY) or {}).get("kind") == "rrim"]
    assert sr.scale[-1] == pytest.approx(0.125)
    return viewer, sr


def _check_reopened(viewer, path, sr) -> None:
    opened = viewer.open(str(path), plugin="napari-rrim-sr")
    (back,) = opened
    assert back.data.dtype == sr.data.dtype
    np.testing.assert_array_equal(np.asarray(back.data), np.asarray(sr.data))
    np.testing.assert_allclose(back.scale, sr.scale)
    np.testing.assert_allclose(back.translate, sr.translate)
    # it still overlays its source: the same world corner
    np.testing.assert_allclose(back.data_to_world((0, 0)), sr.data_to_world((0, 0)))
    prov = back.metadata.get(META_KEY) or {}
    assert prov.get("kind") == "rrim" and prov.get("model_id") == sr.metadata[META_KEY].get("model_id")


def test_save_dialog_preselects_our_writer_for_a_result(result_layer, tmp_path):
    """The save dialog's first file type (what it preselects) is ours, and saving through it keeps
    scale, translate and provenance (the dialog path of ``_save_layers_dialog``)."""
    from napari.plugins import _npe2

    viewer, sr = result_layer
    ext_str, writers = _npe2.file_extensions_string_for_layers([sr])
    first = ext_str.split(";;")[0]
    assert writers[0].plugin_name == "napari-rrim-sr", first
    assert "*.tif" in first
    viewer.layers.selection = {sr}
    path = tmp_path / "result.tif"
    saved = viewer.layers.save(str(path), selected=True, _writer=writers[0])
    assert saved == [str(path)]
    _check_reopened(viewer, path, sr)
    # twice in a row: the same dialog choice again replaces the file the user confirmed
    saved = viewer.layers.save(str(path), selected=True, _writer=writers[0])
    assert saved == [str(path)]
    _check_reopened(viewer, path, sr)


def test_save_with_default_plugin_keeps_geometry_and_provenance(result_layer, tmp_path):
    """``viewer.layers.save`` / ``napari.save_layers`` without naming a plugin."""
    import napari

    viewer, sr = result_layer
    viewer.layers.selection = {sr}
    path = tmp_path / "result.tif"
    saved = viewer.layers.save(str(path), selected=True)
    assert saved == [str(path)]
    _check_reopened(viewer, path, sr)
    other = tmp_path / "again.tiff"
    assert napari.save_layers(str(other), [sr]) == [str(other)]
    _check_reopened(viewer, other, sr)
    # no suffix typed: a .tif with the same content
    bare = tmp_path / "bare"
    (written,) = viewer.layers.save(str(bare), selected=True)
    assert written.endswith(".tif")
    _check_reopened(viewer, written, sr)


def test_other_formats_still_go_to_napari(result_layer, tmp_path):
    """A PNG asked for (even with our file type selected in the dialog) is written as a PNG."""
    from napari.plugins import _npe2

    viewer, _sr = result_layer
    src = viewer.layers["cells"]
    viewer.layers.selection = {src}
    _, writers = _npe2.file_extensions_string_for_layers([src])
    png = tmp_path / "plain.png"
    assert viewer.layers.save(str(png), selected=True, _writer=writers[0]) == [str(png)]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
