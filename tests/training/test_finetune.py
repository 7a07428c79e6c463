"""Fine-tuning on the user's own data (issue 18): held-out split, measured degradations, budget,
best-checkpoint cancel, registration with metadata and model card, paired LR/HR registration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_rrim_sr.errors import InputError
from napari_rrim_sr.training import finetune as ft
from napari_rrim_sr.training.pairs import register_pair

ROOT = Path(__file__).resolve().parents[2]
NUCLEI = ROOT / "src" / "napari_rrim_sr" / "_napari" / "samples" / "nuclei_dsb2018_crop.tif"  # CC0, shipped
EMBRYO = ROOT.parent / "shared" / "data" / "microscopy" / "morpholibj_samples" / "arabidopsis-embryo.tif"


def _stack() -> np.ndarray:
    """A small real stack: 8 planes of the arabidopsis embryo (or, without shared data, crops of
    the shipped nuclei image) as uint8/uint16 (N, H, W)."""
    import tifffile

    if EMBRYO.is_file():
        a = tifffile.imread(EMBRYO)
        return np.ascontiguousarray(a[45:53, :96, :96])
    a = tifffile.imread(NUCLEI)
    return np.stack([a[i * 16 : i * 16 + 96, i * 16 : i * 16 + 96] for i in range(8)])


def _settings(tmp_path, **kw) -> ft.FinetuneSettings:
    base = {
        "data": [_stack()],
        "init": "tiny-rrim-x4-gray",
        "minutes": 0.5,
        "out": str(tmp_path / "ft"),
        "name": "my-ft",
        "max_steps": 6,
        "evals": 3,
        "heldout_crops": 2,
        "heldout_side": 64,
        "lr": 1e-3,
        "batch_size": 2,
        "patch_size": 32,
    }
    base.update(kw)
    return ft.FinetuneSettings(**base)


# -- split, statistics, degradations ---------------------------------------------------------------


def test_stack_holds_out_whole_planes_never_trained_on():
    planes = [np.full((40, 40, 1), i, np.float32) for i in range(10)]
    sp = ft.split_heldout(planes, patch_size=32, scale=4)
    train_ids = {int(p[0, 0, 0]) for p in sp.train}
    held_ids = {int(p[0, 0, 0]) for p in sp.heldout}
    assert held_ids == {8, 9} and train_ids == set(range(7)), sp.how  # plane 7 is the gap


def test_single_image_holds_out_a_region_never_trained_on():
    img = np.arange(200 * 240, dtype=np.float32).reshape(200, 240, 1)
    sp = ft.split_heldout([img], patch_size=32, scale=4)
    (train,), (held,) = sp.train, sp.heldout
    assert train.max() < held.min() or not np.intersect1d(train.ravel(), held.ravel()).size
    cols_train = {int(v) % 240 for v in train[0, :, 0]}
    cols_held = {int(v) % 240 for v in held[0, :, 0]}
    assert not cols_train & cols_held and min(cols_held) - max(cols_train) > 1  # a gap between them


def test_measured_shot_noise_sets_the_photon_level():
    """Poisson noise at a known photon count: the estimate is within a factor 2, and the chosen
    LR degradations include shot noise around it; a clean image gets no noise."""
    import tifffile
    from scipy import ndimage

    clean = ndimage.gaussian_filter(ft.load_planes([tifffile.imread(NUCLEI)]).planes[0][..., 0], 1.0)
    rng = np.random.default_rng(0)
    noisy = (rng.poisson(clean * 100.0) / 100.0).astype(np.float32)
    st = ft.measure_statistics([noisy[..., None]])
    assert st.noisy and 50 < st.photons < 200, st.describe()
    deg, why = ft.choose_degradations(st)
    assert deg.poisson_peak[0] < 100 < deg.poisson_peak[1] * 1.5, why
    deg_c, why_c = ft.choose_degradations(ft.measure_statistics([clean[..., None]]))
    assert why_c.startswith("clean") and deg_c.noise_sigma[1] == 0 and deg_c.poisson_peak[1] == 0


def test_preview_is_a_synthetic_lr_patch_next_to_real_data():
    deg, _ = ft.choose_degradations(
        ft.measure_statistics([np.zeros((64, 64, 1), np.float32)]), kind="read", read_sigma=0.05
    )
    plane = np.full((256, 256), 0.5, np.float32)
    real, syn = ft.degradation_preview(plane, deg, 4, size=48)
    assert real.shape == syn.shape == (48, 48)
    assert real.std() == 0 and 0.03 < syn.std() < 0.09  # the synthetic patch carries the chosen noise


# -- the unpaired run -------------------------------------------------------------------------------


def test_unpaired_finetune_registers_weights_card_and_scores(tiny_registry, tmp_path):
    points = []
    res = ft.finetune(_settings(tmp_path), on_point=points.append, registry=tiny_registry)
    assert res.status == "completed" and res.steps == 6
    # the curve: step 0 (the base model) then periodic held-out points, given to the callback live
    assert [p["step"] for p in points] == [p["step"] for p in res.curve]
    assert points[0]["step"] == 0 and points[0]["psnr"] == pytest.approx(res.scores["base"]["psnr"])
    assert len(points) >= 3 and points[-1]["step"] == 6
    assert set(res.scores) == {"model", "base", "bicubic"}
    entry = tiny_registry.find_weights("my-ft")  # registered: the upscale widget / CLI list it
    assert entry.path == res.installed and entry.in_channels == 1
    meta = entry.metadata
    assert meta["beats_base"] == res.beats_base
    assert meta["finetune"]["heldout"]["how"].startswith("planes")
    assert meta["metrics"]["base"]["psnr"] == pytest.approx(res.scores["base"]["psnr"])
    assert meta["recipe"]["init"] == "tiny-rrim-x4-gray" and meta["recipe"]["steps_done"] == 6
    assert "statistics" in meta["finetune"]["data"]
    card = res.installed.with_suffix(".md")
    assert card.is_file() and res.card.is_file()
    text = card.read_text()
    assert "my-ft" in text and "held-out" in text and f"{res.scores['bicubic']['psnr']:.2f} dB" in text


def test_cancel_keeps_the_best_checkpoint(tiny_registry, tmp_path):
    """Cancelled after a few points: the written weights are the best held-out state seen, which
    (lr 3e-2 makes the curve jump around) need not be the last one."""
    import threading

    from napari_rrim_sr.registry.loading import load_model

    stop = threading.Event()
    points = []

    def on_point(p):
        points.append(p)
        if len(points) >= 4:
            stop.set()

    s = _settings(tmp_path, max_steps=40, evals=20, lr=3e-2)
    res = ft.finetune(s, on_point=on_point, cancel=stop, registry=tiny_registry)
    assert res.status == "cancelled" and res.steps < 40
    trained = [p for p in res.curve if p["step"] > 0]
    best = max(trained, key=lambda p: p["psnr"])
    assert res.best_step == best["step"]
    # the file holds that state: scoring it on the same held-out crops gives the best point's PSNR
    planes = ft.load_planes(s.data).planes
    deg, _ = ft.choose_degradations(ft.measure_statistics(planes))
    split = ft.split_heldout(planes, patch_size=32, scale=4)
    held = ft.make_heldout(split.heldout, deg, 4, crops=s.heldout_crops, side=s.heldout_side, bits=8)
    lm = load_model(res.weights, registry=tiny_registry)
    assert ft.score_model(lm.module, held, 4, 1)["psnr"] == pytest.approx(best["psnr"], abs=1e-4)


def test_a_model_that_does_not_beat_its_base_says_so(tiny_registry, tmp_path):
    res = ft.finetune(_settings(tmp_path, lr=0.5, max_steps=4, evals=2), registry=tiny_registry)
    assert not res.beats_base
    meta = tiny_registry.find_weights("my-ft").metadata
    assert meta["beats_base"] is False and meta["recommended"] is False
    assert "does not beat its base model" in res.card.read_text()


def test_finetune_refuses_an_existing_name(tiny_registry, tmp_path):
    ft.finetune(_settings(tmp_path, max_steps=2, evals=1), registry=tiny_registry)
    with pytest.raises(Exception, match="exists"):
        ft.finetune(_settings(tmp_path, max_steps=2, evals=1, out=str(tmp_path / "other")), registry=tiny_registry)


def test_cli_finetune_prints_held_out_scores_and_registers(tiny_registry, tmp_path, capsys):
    import tifffile

    from napari_rrim_sr.training.cli import main

    f = tmp_path / "stack.tif"
    tifffile.imwrite(f, _stack())
    rc = main(
        [
            "finetune",
            "--data",
            str(f),
            "--init",
            "tiny-rrim-x4-gray",
            "--minutes",
            "0.1",
            "--out",
            str(tmp_path / "cli"),
            "--name",
            "cli-ft",
            "--max-steps",
            "3",
            "--batch-size",
            "2",
            "--patch-size",
            "32",
            "--heldout-crops",
            "2",
            "--heldout-side",
            "64",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    for row in ("model", "base", "bicubic"):
        assert any(line.startswith(row) and "." in line for line in out.splitlines()), out
    assert "registered as 'cli-ft'" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["steps"] == 3 and set(doc["scores"]) >= {"model", "base", "bicubic"}
    assert tiny_registry.find_weights("cli-ft")


# -- paired data -----------------------------------------------------------------------------------


def _pair(shift=(2.3, -1.7)):
    """An HR image displaced by a known sub-pixel shift and the LR of the undisplaced one."""
    import tifffile
    from scipy import ndimage

    from napari_rrim_sr.engine.bicubic import bicubic_downscale

    big = tifffile.imread(NUCLEI).astype(np.float64)
    hr = ndimage.shift(big, shift, order=5, mode="reflect")[32:224, 32:224]
    lr = bicubic_downscale(big[32:224, 32:224], 4)
    return lr, hr


@pytest.mark.parametrize("shift", [(2.3, -1.7), (-5.6, 0.45), (0.0, 0.0)])
def test_registration_recovers_a_known_sub_pixel_shift(shift):
    lr, hr = _pair(shift)
    p = register_pair(lr, hr, 4)
    assert p.shift == pytest.approx(shift, abs=0.1)
    assert p.residual < 0.1
    assert p.hr.shape == (4 * p.lr.shape[0], 4 * p.lr.shape[1])


def test_unrelated_pair_is_refused_with_its_residual():
    lr, hr = _pair()
    with pytest.raises(InputError, match=r"residual 0\.[5-9]|residual 1\.") as exc:
        register_pair(np.rot90(lr).copy(), hr, 4)
    assert "does not align" in str(exc.value)


def test_size_ratio_other_than_the_scale_is_refused():
    from napari_rrim_sr.engine.bicubic import imresize

    _, hr = _pair()
    lr3 = imresize(hr, 1 / 3)  # a x3 pair for a x4 model
    with pytest.raises(InputError, match="ratio is 3.000 x 3.000.*scale 4"):
        register_pair(lr3, hr, 4)
    with pytest.raises(InputError, match="ratio is 4.000 x 3.000"):
        register_pair(lr3[:48], hr, 4)


def test_paired_finetune_scores_on_real_lr(tiny_registry, tmp_path):
    lr, hr = _pair()
    res = ft.finetune(
        _settings(
            tmp_path, data=[], pairs=[(lr.astype(np.float32), hr.astype(np.float32))], heldout_side=32, max_steps=3
        ),
        registry=tiny_registry,
    )
    meta = tiny_registry.find_weights("my-ft").metadata
    assert meta["finetune"]["data"]["kind"] == "paired"
    assert meta["finetune"]["data"]["pairs"][0]["shift_hr_px"] == pytest.approx([2.3, -1.7], abs=0.1)
    assert meta["finetune"]["heldout"]["lr"] == "real LR" and res.steps == 3


def test_cli_finetune_on_pair_folders(tiny_registry, tmp_path, capsys):
    import tifffile

    from napari_rrim_sr.training.cli import main

    lr, hr = _pair()
    for folder, img in (("lr", lr), ("hr", hr)):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "field1.tif", img.astype(np.float32))
    rc = main(
        [
            "finetune",
            "--pairs",
            str(tmp_path / "lr"),
            str(tmp_path / "hr"),
            "--init",
            "tiny-rrim-x4-gray",
            "--minutes",
            "0.1",
            "--out",
            str(tmp_path / "cli"),
            "--name",
            "cli-pair",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--patch-size",
            "32",
            "--heldout-crops",
            "1",
            "--heldout-side",
            "32",
        ]
    )
    out = capsys.readouterr().out
    import re

    assert rc == 0, out
    assert re.search(r"pair 0: HR shifted by \(2\.[23]\d, -1\.[67]\d\) px, residual 0\.0", out), out
    assert tiny_registry.find_weights("cli-pair").metadata["finetune"]["data"]["kind"] == "paired"


def test_time_budget_replans_to_the_measured_speed(tiny_registry, tmp_path):
    """No step cap: the steps come from the timed probe, then are fitted to the speed seen in the
    run; the run ends within its budget (plus the scoring around it)."""
    import time

    t0 = time.perf_counter()
    res = ft.finetune(
        _settings(tmp_path, minutes=0.1, max_steps=0, batch_size=0, patch_size=0, evals=4), registry=tiny_registry
    )
    wall = time.perf_counter() - t0
    r = res.recipe
    assert r["steps_planned"] >= 10 and r["batch_size"] >= 2 and r["patch_size"] <= 64
    assert [q["at_step"] for q in r["replans"]][:1] == [max(5, r["steps_planned"] // 10)]
    assert len(r["replans"]) == 2 and r["replans"][1]["at_step"] == r["replans"][0]["steps"] // 2
    assert res.steps <= 2 * r["steps_planned"]
    assert res.curve[-1]["elapsed_s"] <= 6.0 + 3.0  # the trainer's deadline (0.1 min) holds
    assert wall < 60
