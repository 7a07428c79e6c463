"""The Upscale widget's controller without Qt (issue 22 #4): plan, run, results, progress text.

Layers are plain objects with the attributes of a napari Image layer; no viewer, no Qt (the
module checks that importing the controller pulls in neither).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_rrim_sr.engine.progress import Progress, drain
from napari_rrim_sr.io import geometry as layer_logic


class FakeLayer:
    """What the controller reads from a napari Image layer."""

    multiscale = False

    def __init__(self, data, name="img", *, rgb=False, scale=None, metadata=None):
        self.data = data
        self.name = name
        self.rgb = rgb
        self.ndim = data.ndim - int(rgb)
        self.scale = tuple(scale or (1.0,) * self.ndim)
        self.translate = (0.0,) * self.ndim
        self.metadata = dict(metadata or {})
        self.visible = True

    def world_to_data(self, world):
        return tuple(float(w) / s for w, s in zip(world, self.scale))


def _controller(registry):
    from napari_rrim_sr._napari.upscale.controller import UpscaleController

    return UpscaleController(registry_fn=lambda: registry)


def _gray(shape=(24, 24), seed=0):
    return np.random.default_rng(seed).integers(100, 4000, size=shape, dtype=np.uint16)


def test_controller_imports_no_qt_and_no_napari():
    code = (
        "import sys, napari_rrim_sr._napari.upscale.controller, napari_rrim_sr._napari.upscale.progress_text\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide6', 'napari')]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_plan_run_results_twice_without_qt(tiny_registry):
    from napari_rrim_sr._napari.upscale.controller import FormValues, ItemProgress

    c = _controller(tiny_registry)
    layer = FakeLayer(_gray(), "cells")
    form = FormValues(weights_id="tiny-rrim-x4-gray", bicubic=True)
    present = [layer]
    names = []
    for _ in range(2):
        items = c.plan_items(c.items_for([layer], form, current=layer))
        assert len(items) == 1 and items[0].plan.model.id == "tiny-rrim-x4-gray"  # planned: auto resolved
        events = []
        results = drain(c.run_iter(items), progress=events.append)
        assert all(isinstance(e, ItemProgress) for e in events) and events[0].message == "starting"
        specs, dropped = c.result_layers(items, results, present)
        assert [s.kind for s in specs] == ["bicubic", "rrim"] and not dropped
        sr = specs[1]
        assert sr.data.shape == (96, 96) and sr.data.dtype == np.uint16
        np.testing.assert_allclose(sr.kwargs["scale"], (0.25, 0.25))
        rec = sr.kwargs["metadata"][layer_logic.META_KEY]
        assert rec["model_id"] == "tiny-rrim-x4-gray" and rec["kind"] == "rrim"
        # the bicubic comparison keeps the mean of the input
        assert abs(specs[0].data.mean() - layer.data.mean()) < 0.05 * layer.data.mean()
        names.append(sr.kwargs["name"])
    assert names == ["cells RRIM x4", "cells RRIM x4"]  # napari adds the " [1]"; the summary uses its names
    text = c.summary(["cells RRIM x4 [1]"], ["cells bicubic x4 [1]"], results)
    assert text.startswith("Added 'cells RRIM x4 [1]' and 'cells bicubic x4 [1]'")
    # a deleted source: nothing to add, its label reported
    assert c.result_layers(items, results, []) == ([], ["cells"])


def test_user_pick_and_back_to_automatic(tiny_registry):
    from napari_rrim_sr._napari.upscale.controller import FormValues

    c = _controller(tiny_registry)
    layer = FakeLayer(_gray(seed=1))
    ids = [e.id for e in tiny_registry.weights()]
    choice = c.auto_choice(layer, FormValues(), ids)
    assert choice.weights_id == "tiny-rrim-x4-gray"
    text, tip = c.choice_text(choice, "tiny-rrim-x4-gray")
    assert text.startswith("Automatic:") and tip
    c.model_touched = True
    text, _ = c.choice_text(choice, "tiny-rrim-x4-rgb")
    assert text.startswith("Chosen by you (tiny-rrim-x4-rgb)") and "Automatic would be tiny-rrim-x4-gray" in text
    # an automatic run asks the planner to choose; a hand pick is passed as such
    auto = c.items_for([layer], FormValues(weights_id="tiny-rrim-x4-gray"), current=layer)[0]
    pick = c.items_for([layer], FormValues(weights_id="tiny-rrim-x4-gray", user_model=True), current=layer)[0]
    assert auto.request.model == "auto" and pick.request.model == "tiny-rrim-x4-gray"


def test_plain_choice_sentence_and_numbers_in_the_tooltip():
    from napari_rrim_sr._napari.upscale.controller import plain_choice
    from napari_rrim_sr.registry.choice import ModelChoice, measure_condition

    cond = measure_condition(_gray((64, 64), seed=2).astype(float))
    jargon = ModelChoice("rrim-x4-gray-real", "noise σ 12 (raw) → rrim-x4-gray-real", cond, robust=True)
    text, tip = plain_choice(jargon)
    if hasattr(jargon, "details"):  # the choice engineer's plain reason: shown as is
        assert text == jargon.reason
    else:
        assert "σ" not in text and "raw data" in text and tip == jargon.reason


def test_backend_travels_in_the_request(tiny_registry):
    from napari_rrim_sr._napari.upscale.controller import FormValues

    c = _controller(tiny_registry)
    layer = FakeLayer(_gray(seed=3))
    item = c.items_for([layer], FormValues(weights_id="tiny-rrim-x4-gray", backend="openvino"), current=layer)[0]
    assert item.request.backend == "openvino"


def test_fine_tuned_percentile_model_is_run_with_percentiles(tiny_registry, tmp_path):
    """Issue 24 #6 / 22: the planner honours the weights' own normalisation; the widget's
    default "auto" lets it."""
    from napari_rrim_sr._napari.upscale.controller import FormValues

    path = _fine_tuned(tiny_registry, tmp_path)
    c = _controller(tiny_registry)
    data = _gray((24, 24), seed=4)
    data[0, 0] = 60000  # a hot pixel: percentiles and min..max differ
    layer = FakeLayer(data)
    form = FormValues(weights_id=str(path.stem), user_model=True, bicubic=False)
    (item,) = c.plan_items(c.items_for([layer], form, current=layer))
    assert item.plan.parts[0].normalization.mode == "percentile"
    results = drain(c.run_iter([item]))
    rec = c.result_layers([item], results, [layer])[0][0].kwargs["metadata"][layer_logic.META_KEY]
    assert rec["normalization"]["mode"] == "percentile"


def _fine_tuned(registry, tmp_path):
    import torch

    from napari_rrim_sr.registry import core as reg_module
    from napari_rrim_sr.registry.loading import save_weights

    folder = reg_module.user_weights_dir(create=True)
    torch.manual_seed(5)
    hp = {"num_feat": 8, "num_block": 1, "scale": 4, "in_channels": 1, "out_channels": 1}
    path = save_weights(
        folder / "tiny-finetuned.safetensors",
        registry.build("rrim", **hp),
        backbone="rrim",
        hparams=hp,
        normalization="8-bit data: dtype range (/255); other data: 0.1-99.9 percentiles per file",
    )
    registry.weights(refresh=True)
    return path


def test_store_run_progress_cancel_resume_replace(tiny_registry, tmp_path):
    """Issue 24 #3, headless: a lazy layer to a store with progress by chunk, cancel (the
    finished chunks kept), resume, replace."""
    da = pytest.importorskip("dask.array")
    pytest.importorskip("zarr")
    from napari_rrim_sr._napari.upscale.controller import FormValues
    from napari_rrim_sr.errors import Cancelled

    c = _controller(tiny_registry)
    c.memory_budget = 1000
    data = _gray((48, 40), seed=6)
    layer = FakeLayer(da.from_array(data, chunks=(24, 20)), "lazy")
    form = FormValues(weights_id="tiny-rrim-x4-gray", bicubic=True)
    assert c.output_plan(layer, form)[0] == "store"
    store = tmp_path / "lazy.ome.zarr"
    item = c.store_item(layer, form, store, "new")
    assert item.request.bicubic is False and item.request.output.kind == "store"
    events = []
    with pytest.raises(Cancelled):  # cancel after the first chunk
        drain(c.run_iter([item]), progress=events.append, cancel=lambda: any(e.tiles_done >= 1 for e in events))
    assert c.store_exists(store)
    item = c.store_item(layer, form, store, "resume")
    events = []
    results = drain(c.run_iter([item]), progress=events.append)
    chunk_events = [e for e in events if e.tiles_total]
    assert chunk_events and chunk_events[0].tiles_done >= 1  # finished chunks were kept
    spec = c.result_layers([item], results, [layer])[0][0]
    assert type(spec.data).__module__.startswith("dask") and spec.data.shape == (192, 160)
    first = np.asarray(spec.data)
    results = drain(c.run_iter([c.store_item(layer, form, store, "replace")]))
    np.testing.assert_array_equal(np.asarray(results[0].data), first)
    assert "choose Replace" in c.gui_message("exists; refusing (use --overwrite to start over)")


def test_progress_text_agrees_with_itself():
    """Issue 24: the counter ran one ahead ("tile 2/5, slice 1/5"); 5 slices of one tile each."""
    from napari_rrim_sr._napari.upscale.progress_text import ProgressText

    pt = ProgressText()
    events = [Progress(0, 5, 0, 5, "starting")]
    for k in range(5):
        events.append(Progress(k + 1, 5, k, 5, f"plane {k + 1}/5, tile 1/1"))
        events.append(Progress(k + 1, 5, k + 1, 5, f"plane {k + 1}/5 done"))
    texts = [pt.update(p)[0] for p in events]
    assert texts[0] == "tile 1/5, slice 1/5"
    assert texts[1] == "tile 1/5, slice 1/5"  # the first tile is done, in the first slice
    assert texts[3] == "tile 2/5, slice 2/5"
    assert texts[-1] == "tile 5/5, slice 5/5"
    assert pt.fraction == 1.0


def test_layers_to_hide_keeps_one_set():
    from napari_rrim_sr._napari.upscale.controller import UpscaleController

    src = FakeLayer(_gray(), "cells")
    other = FakeLayer(_gray(), "other")

    def result(name, kind, source):
        lay = FakeLayer(_gray((96, 96)), name)
        lay.metadata = {layer_logic.META_KEY: {"kind": kind, "source_layer": source}}
        return lay

    old = result("cells RRIM x4", "rrim", "cells")
    bic = result("cells bicubic x4 [1]", "bicubic", "cells")
    new = result("cells RRIM x4 [1]", "rrim", "cells")
    chan = result("cells [C0] RRIM x4", "rrim", "cells [C0]")
    foreign = result("other RRIM x4", "rrim", "other")
    hide = UpscaleController.layers_to_hide([src, other, old, bic, new, chan, foreign], [src], [new])
    assert hide == [src, old, bic, chan]


def test_details_line_does_not_call_a_naip_model_for_microscopy():
    from types import SimpleNamespace

    from napari_rrim_sr._napari.upscale.controller import UpscaleController

    desc = "RRIM x4, 1 channel, for native microscopy: fine-tuned on noisy LR"
    entry = SimpleNamespace(id="rrim-x4-gray-real", description=desc)
    line = f"rrim · x4 · 1→1 channels · 16.70 M parameters · shipped: x.safetensors — {desc}"
    naip = UpscaleController.details_text(line, entry, None, kind="multiband")
    assert "microscopy" not in naip and "satellite" in naip
    assert UpscaleController.details_text(line, entry, None) == line  # gray microscopy: as written
    worded = SimpleNamespace(weights_id="rrim-x4-gray-real", model_text="for native satellite tiles")
    assert UpscaleController.details_text(line, entry, worded).endswith("— for native satellite tiles")
