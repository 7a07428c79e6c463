"""Issue 24 #1: every Upscale widget flow run TWICE in one viewer (run under xvfb-run).

The second run of a flow adds layers that napari renames ``"… RRIM x4 [1]"``; the widget must
report them, finish (status, progress, self-check table) and leave the viewer usable. Tiny
images (24x24) and the tiny test RRIMs of ``conftest.tiny_registry`` keep each test short.
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


def _widget(viewer):
    from napari_rrim_sr._napari.upscale.widget import UpscaleWidget

    w = UpscaleWidget(viewer)
    viewer.window.add_dock_widget(w, name="Upscale (RRIM x4)")
    return w


def _run(qtbot, w, notes, **settings):
    for key, value in settings.items():
        getattr(w, key).value = value
    worker = w.run()
    assert worker is not None, w.status.value
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert not notes["error"], notes["error"]
    assert w.status.value.startswith("Added"), w.status.value  # not frozen at "bicubic comparison…"
    assert not w.progress_bar.native.isVisible() and w.run_button.enabled and not w.cancel_button.enabled
    return list(w.last_layers)


def _gray(shape=(24, 24), seed=0, hi=4000):
    return np.random.default_rng(seed).integers(100, hi, size=shape, dtype=np.uint16)


def _kinds(layers) -> list[str]:
    return [lay.metadata[layer_logic.META_KEY]["kind"] for lay in layers]


def test_gray_with_bicubic_twice(viewer, qtbot, notes):
    src = viewer.add_image(_gray(), name="cells")
    w = _widget(viewer)
    first = _run(qtbot, w, notes, add_bicubic=True)
    second = _run(qtbot, w, notes, add_bicubic=True)
    assert [lay.name for lay in first] == ["cells bicubic x4", "cells RRIM x4"]
    assert [lay.name for lay in second] == ["cells bicubic x4 [1]", "cells RRIM x4 [1]"]
    assert _kinds(second) == ["bicubic", "rrim"]
    assert "cells RRIM x4 [1]" in w.status.value and "cells bicubic x4 [1]" in w.status.value
    np.testing.assert_array_equal(first[1].data, second[1].data)  # the same run gives the same result
    # the bicubic comparison keeps the source's mean (the tiny test model is untrained)
    assert abs(float(second[0].data.mean()) - float(src.data.mean())) < 0.05 * float(src.data.mean())
    assert viewer.layers.selection.active is second[-1]


def test_bicubic_off_self_check_on_twice(viewer, qtbot, notes):
    from napari_rrim_sr._napari.metrics_widget import MetricsWidget

    viewer.add_image(_gray(seed=1), name="cells")
    w = _widget(viewer)
    for i in range(2):
        metrics = [d for d in viewer.window.dock_widgets.values() if isinstance(d, MetricsWidget)]
        for m in metrics:  # forget the first table: the second run must fill it again
            m.table.value = {"data": [], "index": [], "columns": []}
        layers = _run(qtbot, w, notes, add_bicubic=False, compute_metrics=True)
        assert _kinds(layers) == ["rrim"]
        assert layers[0].name == ("cells RRIM x4" if i == 0 else "cells RRIM x4 [1]")
        assert "Self-check PSNR" in w.status.value
        (m,) = [d for d in viewer.window.dock_widgets.values() if isinstance(d, MetricsWidget)]
        assert "PSNR (dB)" in m.table.value["index"], m.table.value  # the table is filled again
        assert tuple(m.table.value["columns"])[:2] == ("RRIM", "bicubic")


def test_time_lapse_whole_stack_twice(viewer, qtbot, notes):
    viewer.add_image(_gray((3, 24, 24), seed=2), name="movie")
    w = _widget(viewer)
    for suffix in ("", " [1]"):
        layers = _run(qtbot, w, notes, current_slice=False, add_bicubic=True)
        assert [lay.name for lay in layers] == [f"movie bicubic x4{suffix}", f"movie RRIM x4{suffix}"]
        assert layers[-1].data.shape == (3, 96, 96)


def test_rgb_twice(viewer, qtbot, notes):
    rng = np.random.default_rng(3)
    viewer.add_image(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8), name="photo", rgb=True)
    w = _widget(viewer)
    _run(qtbot, w, notes, add_bicubic=True)
    layers = _run(qtbot, w, notes, add_bicubic=True)
    assert [lay.name for lay in layers] == ["photo bicubic x4 [1]", "photo RRIM x4 [1]"]
    assert layers[-1].data.shape == (96, 96, 3)


def test_channel_stack_twice(viewer, qtbot, notes):
    viewer.add_image(_gray((2, 24, 24), seed=4), name="ixm", metadata={"napari_rrim_sr_axes": "CYX"})
    w = _widget(viewer)
    assert w.channels.value
    _run(qtbot, w, notes, add_bicubic=True)
    layers = _run(qtbot, w, notes, add_bicubic=True)
    assert _kinds(layers) == ["bicubic", "rrim"] * 2
    assert [lay.name for lay in layers if "RRIM" in lay.name] == ["ixm [C0] RRIM x4 [1]", "ixm [C1] RRIM x4 [1]"]
    assert "2 upscaled layers" in w.status.value


# -- two public x2 models, one after the other -----------------------------------------------

X2_IDS = ("tiny-a-x2-gray", "tiny-b-x2-gray")


@pytest.fixture
def x2_viewer(make_napari_viewer, tiny_registry):
    import torch

    from napari_rrim_sr.registry import core as reg_module
    from napari_rrim_sr.registry.loading import save_weights

    folder = Path(reg_module.user_weights_dir(create=True))
    for i, wid in enumerate(X2_IDS):
        torch.manual_seed(7 + i)
        hp = {"num_feat": 8, "num_block": 1, "scale": 2, "in_channels": 1, "out_channels": 1}
        save_weights(folder / f"{wid}.safetensors", tiny_registry.build("rrim", **hp), backbone="rrim", hparams=hp)
    tiny_registry.weights(refresh=True)
    return make_napari_viewer()


def test_second_x2_model_after_another(x2_viewer, qtbot, notes):
    viewer = x2_viewer
    viewer.add_image(_gray(seed=5), name="cells")
    w = _widget(viewer)
    w.model.value = X2_IDS[0]
    first = _run(qtbot, w, notes, add_bicubic=True)
    w.model.value = X2_IDS[1]
    second = _run(qtbot, w, notes, add_bicubic=True)
    assert [lay.name for lay in first] == ["cells bicubic x2", "cells RRIM x2"]
    assert [lay.name for lay in second] == ["cells bicubic x2 [1]", "cells RRIM x2 [1]"]
    assert second[-1].metadata[layer_logic.META_KEY]["model_id"] == X2_IDS[1]
    assert second[-1].data.shape == (48, 48)
    assert not np.array_equal(first[-1].data, second[-1].data)  # really the other model
