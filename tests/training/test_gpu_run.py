"""The prepared GPU run (training/gpu/run.sh): its CPU dry run end to end, the lossless pack, the
GPU batch sampler and the 64 MiB limit of what travels. No GPU is needed (or used) here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_rrim_sr.errors import InputError
from napari_rrim_sr.training import gpu_pack
from napari_rrim_sr.training.gpu_data import GpuPatchSampler

ROOT = Path(__file__).parents[2]
DATA = ROOT.parent / "shared" / "data"
JPG = sorted((DATA / "train" / "SunHays80").glob("*.jpg"))
PNG = sorted((DATA / "train" / "yang91").glob("*.png"))
KODAK = sorted((DATA / "val" / "Kodak24").glob("*.png"))

needs_data = pytest.mark.skipif(not (JPG and PNG and KODAK), reason="shared data not available")


@pytest.fixture(scope="module")
def tiny_carry(tmp_path_factory):
    """Packs of 2 training JPEGs and 2 Kodak24 images: the dry run's carry folder."""
    carry = tmp_path_factory.mktemp("carry")
    gpu_pack.pack_images(JPG[:2], carry / gpu_pack.TRAIN_TAR, budget=8 << 20, min_side=88, role="training", root=DATA)
    gpu_pack.pack_images(KODAK[:2], carry / gpu_pack.VAL_TAR, budget=8 << 20, role="validation", root=DATA)
    return carry


@needs_data
def test_pack_is_lossless_smaller_and_respects_budget_and_min_side(tmp_path):
    small = [p for p in PNG if p.stat().st_size < 60_000][:2]
    m = gpu_pack.pack_images(JPG[:1] + small, tmp_path / "t.tar", budget=8 << 20, role="training", root=DATA)
    names = [e["name"] for e in m["entries"]]
    assert names[0].endswith(".jpg") and all(n.endswith((".webp", ".png")) for n in names[1:])
    png_bytes = sum(p.stat().st_size for p in small)
    assert sum(e["bytes"] for e in m["entries"][1:]) < png_bytes  # WebP lossless beats these PNGs
    out = tmp_path / "x"
    back = gpu_pack.unpack(tmp_path / "t.tar", out)  # re-decodes and checks every pixel hash
    assert back["images"] == 1 + len(small)
    from PIL import Image

    for e, src in zip(back["entries"], JPG[:1] + small, strict=True):
        a = np.asarray(Image.open(out / e["name"]).convert("RGB"))
        b = np.asarray(Image.open(src).convert("RGB"))
        np.testing.assert_array_equal(a, b)
    # a budget too small for the JPEG: it is left out, and so are images under min_side
    m2 = gpu_pack.pack_images(
        JPG[:1] + small, tmp_path / "u.tar", budget=60_000, min_side=100_000, role="training", root=DATA
    )
    assert m2["images"] == 0 and len(m2["skipped"]) == 1 + len(small)
    # a corrupted pack is refused on unpacking
    raw = bytearray((tmp_path / "t.tar").read_bytes())
    manifest_end = raw.find(b"}\n") + 2
    raw[manifest_end + 2048] ^= 0xFF  # inside the first image's bytes
    (tmp_path / "bad.tar").write_bytes(bytes(raw))
    with pytest.raises((InputError, OSError)):  # different pixels, or not decodable at all
        gpu_pack.unpack(tmp_path / "bad.tar", tmp_path / "bad")


def test_validation_folders_are_refused_as_training_data(tmp_path):
    for name in ("val", "Kodak24", "test"):
        with pytest.raises(InputError, match="validation/test"):
            gpu_pack.check_training_source(tmp_path / name / "sub")
    gpu_pack.check_training_source(tmp_path / "train" / "bsd200")


def test_tree_and_carry_fit_the_device_limit():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    info = gpu_pack.check_fits(ROOT, [ROOT / gpu_pack.CARRY_DIR])  # the real carry folder, if packed
    assert info["total_bytes"] <= gpu_pack.TREE_LIMIT
    with pytest.raises(InputError, match="exceeds"):
        gpu_pack.check_fits(ROOT, [], limit=info["tree_bytes"] - 1)


def test_gpu_sampler_matches_the_full_image_lr_and_is_deterministic():
    from napari_rrim_sr.engine.bicubic import imresize_torch

    rng = np.random.default_rng(0)
    img = (rng.random((96, 120, 3)) * 255).astype(np.uint8)
    kw = {"patch_size": 32, "scale": 4, "batch_size": 6, "device": "cpu", "seed": 3, "quantize": False}
    s = GpuPatchSampler([img], augment=False, **kw)
    full = imresize_torch(torch.from_numpy(img.transpose(2, 0, 1)).float() / 255, 0.25)
    for k in range(3):
        lr, hr = s.batch(k)
        assert lr.shape == (6, 3, 8, 8) and hr.shape == (6, 3, 32, 32)
        hr_np = (hr.numpy() * 255).round().astype(np.uint8)
        for j in range(6):  # find each patch in the image, then its LR in the full image's LR
            pos = [
                (y, x)
                for y in range(0, 96 - 31, 4)
                for x in range(0, 120 - 31, 4)
                if np.array_equal(img[y : y + 32, x : x + 32].transpose(2, 0, 1), hr_np[j])
            ]
            assert pos, "HR patch is not an aligned crop of the image"
            y, x = pos[0]
            np.testing.assert_allclose(
                lr[j].numpy(), full[:, y // 4 : y // 4 + 8, x // 4 : x // 4 + 8].numpy(), atol=1e-5
            )
    a1, b1 = s.batch(5)
    a2, b2 = GpuPatchSampler([img], augment=False, **kw).batch(5)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    # augmentation flips/transposes LR and HR together: the LR still is the HR's bicubic
    aug = GpuPatchSampler([img], augment=True, **kw)
    lr, hr = aug.batch(1)
    np.testing.assert_allclose(imresize_torch(hr, 0.25)[:, :, 2:-2, 2:-2], lr[:, :, 2:-2, 2:-2], atol=1e-5)
    with pytest.raises(Exception, match="no training image"):
        GpuPatchSampler([img[:40, :40]], **kw)


@needs_data
@pytest.mark.slow
def test_dry_run_end_to_end(tiny_carry, tmp_path):
    """run.sh --dry-run: env check, checks phase on the CPU, a few training steps, validation on 2
    images, and the output folder with the files a GPU run returns (at most 8, <= 16 MiB each)."""
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [str(ROOT / "training" / "gpu" / "run.sh"), "--dry-run", "--carry", str(tiny_carry), "--minutes", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        [
            "rrim-x4-rgb-psnr-gpu.safetensors",
            "log.jsonl",
            "val.png",
            "checks.json",
            "bench.json",
            "summary.json",
            "run-extras.tar",
            "run.log",
        ]
    )
    assert all((out / f).stat().st_size <= 16 << 20 for f in files)
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["errors"] and summary["checks_ok"]
    assert set(summary["phases"]) == {"env", "checks", "train"}
    t = summary["train"]
    assert t["status"] == "completed" and t["step"] == 4 and t["time_plan"]["steps"] == 4
    assert [v["step"] for v in t["val_history"]] == [0, 4] and all(v["n"] == 2 for v in t["val_history"])
    assert summary["packs"]["train"]["role"] == "training" and summary["packs"]["val"]["images"] == 2
    checks = json.loads((out / "checks.json").read_text())
    assert checks["passed"] >= 1 and checks["failed"] == 0
    bench = json.loads((out / "bench.json").read_text())
    assert bench["batched"]["rows"][0]["out_mpix_per_s"] > 0 and bench["cli"]["returncode"] == 0
    from napari_rrim_sr.registry.loading import load_model

    lm = load_model(str(out / "rrim-x4-rgb-psnr-gpu.safetensors"))
    assert lm.backbone == "rrim" and lm.hparams["num_feat"] == 64
    assert "[done]" in (out / "run.log").read_text()


def test_max_minutes_stops_validates_and_exports(tmp_path, isolated_registry):
    """The trainer's wall-clock budget: at max_minutes the run ends as completed (validated and
    exported), long before its steps; the GPU run relies on it to meet its deadline."""
    import time

    from PIL import Image

    from napari_rrim_sr.training.config import TrainConfig
    from napari_rrim_sr.training.trainer import Trainer

    rng = np.random.default_rng(0)
    (tmp_path / "d").mkdir()
    (tmp_path / "v").mkdir()
    Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(tmp_path / "d" / "a.png")
    Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / "v" / "b.png")
    cfg = TrainConfig(
        data=[str(tmp_path / "d")],
        val=str(tmp_path / "v"),
        out=str(tmp_path / "run"),
        name="mm",
        steps=10_000,
        batch_size=2,
        patch_size=16,
        hparams={"num_feat": 8, "num_block": 1},
        device="cpu",
        precision="fp32",
        progress=False,
        register=False,
        max_minutes=0.004,
        val_every=0,
        ckpt_every=0,
        log_every=1000,
    )
    tr = Trainer(cfg, callbacks=[lambda t, s: time.sleep(0.05)])
    res = tr.run()
    assert res.status == "completed" and 1 <= res.step < 50
    assert res.weights is not None and res.weights.is_file()
    assert tr.val_history and tr.val_history[-1]["step"] == res.step
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "deadline" for e in events)
    with pytest.raises(Exception, match="max_minutes"):
        TrainConfig(data=["x"], max_minutes=-1).validate()
