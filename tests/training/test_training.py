"""Tests of the training subpackage (CPU, tiny models, seconds each).

Training data: a handful of 96x96 crops of ../shared/data/train written to a temporary folder
(the shared folder beside the repository; the tests that need it skip when it is absent).
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_rrim_sr.training.config import ConfigError, TrainConfig, dumps_toml, load_toml  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared"
TRAIN = SHARED / "data" / "train"
KODAK = SHARED / "data" / "val" / "Kodak24"
VGG_FILE = SHARED / "weights" / "vgg16_hed_bsds500.safetensors"
TINY = {"num_feat": 8, "num_block": 1}

needs_shared = pytest.mark.skipif(not TRAIN.is_dir(), reason="../shared/data/train not available")


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _one_thread():
    """Two shared cores: keep each test on one thread, restore afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def iso(tmp_path, monkeypatch):
    """Isolated registry: user weights in tmp_path, no third-party plugins."""
    from napari_rrim_sr.registry import core as registry

    wdir = tmp_path / "user-weights"
    monkeypatch.setenv(registry.WEIGHTS_DIR_ENV, str(wdir))
    monkeypatch.setenv(registry.PLUGINS_ENV, "none")
    registry.reset_registry()
    yield wdir
    registry.reset_registry()


def _crops(folder: Path, sources: list[Path], size: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(sources):
        with Image.open(src) as im:
            im = im.convert("RGB")
            w, h = im.size
            im.crop((w // 2 - size // 2, h // 2 - size // 2, w // 2 + size // 2, h // 2 + size // 2)).save(
                folder / f"crop{i}.png"
            )
    return folder


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    """(train, val): 4 crops 96x96 from shared/data/train, 2 crops 64x64 from Kodak24."""
    if not TRAIN.is_dir():
        pytest.skip("../shared/data/train not available")
    root = tmp_path_factory.mktemp("sr-data")
    train_src = sorted((TRAIN / "bsd200").glob("*.png"))[:4]
    val_src = sorted(KODAK.glob("*.png"))[:2] if KODAK.is_dir() else sorted((TRAIN / "McMaster").glob("*.png"))[:2]
    return _crops(root / "train", train_src, 96), _crops(root / "val", val_src, 64)


def _cfg(tmp_path: Path, data_dirs, **kw) -> TrainConfig:
    train, val = data_dirs
    base = dict(
        data=[str(train)],
        val=str(val),
        hparams=dict(TINY),
        steps=6,
        batch_size=4,
        patch_size=32,
        lr=2e-3,
        precision="fp32",
        threads=1,
        val_every=0,
        ckpt_every=0,
        log_every=1,
        progress=False,
        out=str(tmp_path / "run"),
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def _tiny_vgg(path: Path, arch: str = "vgg16", width: int = 4) -> Path:
    """A random VGG-like features file with torchvision keys (features.N.weight/bias), fp16."""
    from safetensors.torch import save_file

    from napari_rrim_sr.training.losses import _conv_indices

    g = torch.Generator().manual_seed(0)
    sd, prev = {}, 3
    for i in _conv_indices(arch):
        sd[f"features.{i}.weight"] = (torch.randn(width, prev, 3, 3, generator=g) * 0.3).half()
        sd[f"features.{i}.bias"] = torch.zeros(width).half()
        prev = width
    sd["classifier.0.weight"] = torch.zeros(2, 2)  # ignored extra keys, like hed.* in the shared file
    save_file(sd, str(path))
    return path


def _save_tiny(path: Path, backbone="rrim", seed=0, extra=None, recipe=None, **hp):
    from napari_rrim_sr.registry.core import get_registry
    from napari_rrim_sr.registry.loading import save_weights

    torch.manual_seed(seed)
    params = dict(TINY, in_channels=3, out_channels=3, scale=4)
    params.update(hp)
    module = get_registry().build(backbone, **params)
    return save_weights(path, module, backbone=backbone, hparams=params, name=path.stem, extra=extra, recipe=recipe)


# -- configuration ----------------------------------------------------------------------------


def test_config_toml_cli_merge_and_roundtrip(tmp_path):
    from napari_rrim_sr.training import cli

    toml = tmp_path / "r.toml"
    toml.write_text(
        'data = ["a", "b"]\nsteps = 100\nbatch-size = 8\nblur_sigma = [0.5, 2.0]\n'
        "[hparams]\nnum_feat = 32\nnum_block = 4\n"
    )
    ns = cli.build_parser().parse_args(
        [
            "train",
            "--config",
            str(toml),
            "--steps",
            "7",
            "--hparam",
            "num_block=2",
            "--hparam",
            "extra=true",
            "--no-augment",
            "--vgg-layer",
            "conv4_3=0.5",
        ]
    )
    cfg, resume = cli.config_from_args(ns)
    assert resume is None
    assert cfg.data == ["a", "b"] and cfg.steps == 7 and cfg.batch_size == 8
    assert cfg.hparams == {"num_feat": 32, "num_block": 2, "extra": True}  # file table updated by flags
    assert cfg.blur_sigma == [0.5, 2.0] and cfg.augment is False and cfg.vgg_layers == {"conv4_3": 0.5}
    # the saved TOML reads back to the same config
    again = TrainConfig.from_dict(__import__("tomllib").loads(cfg.to_toml()))
    assert again == cfg
    # None-valued keys are omitted from TOML and come back as None
    assert "pixel_weight" not in cfg.to_toml() and again.pixel_weight is None
    with pytest.raises(ConfigError, match="unknown config key 'stepz'.*steps"):
        TrainConfig.from_dict({"stepz": 1})
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig.from_dict({"batch_size": "many"})
    with pytest.raises(ConfigError, match="stage"):
        TrainConfig(data=["x"], stage="fancy").validate()
    with pytest.raises(ConfigError, match="no training data"):
        TrainConfig().validate()
    assert dumps_toml({"a": 1, "t": {"k": "v"}}) == 'a = 1\n\n[t]\nk = "v"\n'


def test_cli_print_config_and_implied_train(tmp_path, capsys):
    from napari_rrim_sr.training.cli import main

    assert main(["--data", str(tmp_path), "--steps", "5", "--hparam", "num_feat=16", "--print-config"]) == 0
    out = capsys.readouterr().out
    parsed = __import__("tomllib").loads(out)
    assert parsed["steps"] == 5 and parsed["hparams"] == {"num_feat": 16}
    for sub in (
        "train",
        "export",
        "interpolate",
        "bench",
        "robust-check",
        "grid-check",
        "compare-gray",
        "size-speed",
        "ship-gan",
    ):
        with pytest.raises(SystemExit) as exc:
            main([sub, "--help"])
        assert exc.value.code == 0
    assert "--val-every" in capsys.readouterr().out


def test_lr_schedule():
    from napari_rrim_sr.training.steps import LRSchedule

    cos = LRSchedule("cosine", 100, warmup=10, min_factor=0.01)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(100) == pytest.approx(0.01)
    assert cos(55) == pytest.approx(0.505)
    step = LRSchedule("step", 100, milestones=[50, 80], gamma=0.1)
    assert [step(0), step(50), step(80)] == pytest.approx([1.0, 0.1, 0.01])
    assert LRSchedule("step", 100)(75) == pytest.approx(0.25)  # default milestones 50/75/90 %


# -- data -------------------------------------------------------------------------------------


def test_data_formats_channels_and_stacks(tmp_path):
    import tifffile
    from PIL import Image

    from napari_rrim_sr.training.data import PatchDataset, load_records

    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    rgb = rng.integers(0, 256, (64, 72, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "rgb.png")
    Image.fromarray(rgb).save(d / "sub" / "rgb.jpg", quality=95)
    g16 = (rng.integers(0, 4096, (60, 64))).astype(np.uint16)  # 12-bit data in 16-bit
    tifffile.imwrite(d / "sub" / "gray16.tif", g16)
    stack = rng.integers(0, 256, (5, 48, 50), dtype=np.uint8)  # a Z stack: 5 slices
    tifffile.imwrite(d / "stack.tif", stack)
    (d / "notes.txt").write_text("not an image")  # ignored inside folders

    recs, rep = load_records([str(d)], channels=1, min_side=32)
    assert rep.images == 4 and rep.planes == 1 + 1 + 1 + 5 and not rep.skipped
    by = {Path(r.path).name: r for r in recs}
    assert by["rgb.png"].shape == (1, 64, 72, 1) and by["rgb.png"].bits == 8
    y = np.rint(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    np.testing.assert_array_equal(by["rgb.png"].array[0, ..., 0], y.astype(np.uint8))  # luminance
    assert by["gray16.tif"].bits == 16 and by["gray16.tif"].array.max() == 65535  # percentile-stretched
    assert by["stack.tif"].shape == (5, 48, 50, 1)

    recs3, _ = load_records([str(d)], channels=3, min_side=32)
    by3 = {Path(r.path).name: r for r in recs3}
    assert by3["rgb.png"].shape == (1, 64, 72, 3) and by3["stack.tif"].shape[-1] == 1
    ds = PatchDataset(recs3, patch_size=32, scale=4, channels=3, seed=1)
    for i in range(12):  # gray planes are replicated to 3 channels
        lr, hr = ds[i]
        assert lr.shape == (3, 8, 8) and hr.shape == (3, 32, 32)
        assert 0.0 <= float(hr.min()) and float(hr.max()) <= 1.0
    lr_a, hr_a = ds[5]
    lr_b, hr_b = PatchDataset(recs3, patch_size=32, scale=4, channels=3, seed=1)[5]
    assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b)  # sample i depends on (seed, i) only
    assert not torch.equal(hr_a, ds[6][1])

    # too-small images are reported, not fatal
    recs_big, rep_big = load_records([str(d)], channels=1, min_side=62)
    assert {Path(p).name for p, _ in rep_big.skipped} == {"stack.tif", "gray16.tif"}
    assert all("too small" in r for _, r in rep_big.skipped)


def test_16bit_rgb_png_keeps_its_low_byte(tmp_path):
    import imagecodecs

    from napari_rrim_sr.training.data import decode_image

    arr = (np.arange(6 * 7 * 3, dtype=np.uint32).reshape(6, 7, 3) * 733 + 5).astype(np.uint16)
    (tmp_path / "rgb48.png").write_bytes(imagecodecs.png_encode(arr))
    dec = decode_image(tmp_path / "rgb48.png")
    assert dec.color and dec.planes.dtype == np.uint16  # pillow alone gives uint8 (high byte)
    np.testing.assert_array_equal(dec.planes[0], arr)


def test_lr_matches_full_image_bicubic_and_degradations(tmp_path):
    from PIL import Image

    from napari_rrim_sr.engine.bicubic import imresize
    from napari_rrim_sr.training.data import Degradations, PatchDataset, load_records

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (80, 92, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    recs, _ = load_records([str(tmp_path)], channels=3, min_side=32)
    ds = PatchDataset(
        recs, patch_size=32, scale=4, channels=3, augment=False, seed=7, degradations=Degradations(quantize=False)
    )
    full_lr = imresize(img[:80, :92].astype(np.float64).transpose(2, 0, 1) / 255.0, 0.25)
    for i in range(6):
        lr, hr = ds[i]
        # locate the HR patch (aligned to the scale grid) and compare with the full-image LR crop
        hits = [
            (y, x)
            for y in range(0, 80 - 31, 4)
            for x in range(0, 92 - 31, 4)
            if np.array_equal(
                np.rint(hr.numpy() * 255).astype(np.uint8), img[y : y + 32, x : x + 32].transpose(2, 0, 1)
            )
        ]
        assert len(hits) == 1
        y, x = hits[0]
        np.testing.assert_allclose(lr.numpy(), full_lr[:, y // 4 : y // 4 + 8, x // 4 : x // 4 + 8], atol=1e-5)
    # alias_prob=1: the same patches, downscaled without the antialiasing filter
    aliased = PatchDataset(
        recs,
        patch_size=32,
        scale=4,
        channels=3,
        augment=False,
        seed=7,
        degradations=Degradations(quantize=False, alias_prob=1.0),
    )
    sharp_lr = imresize(img[:80, :92].astype(np.float64).transpose(2, 0, 1) / 255.0, 0.25, antialias=False)
    for i in range(3):
        lr, hr = aliased[i]
        assert torch.equal(hr, ds[i][1])  # alias_prob draws after the patch: same HR
        y, x = [
            (y, x)
            for y in range(0, 80 - 31, 4)
            for x in range(0, 92 - 31, 4)
            if np.array_equal(
                np.rint(hr.numpy() * 255).astype(np.uint8), img[y : y + 32, x : x + 32].transpose(2, 0, 1)
            )
        ][0]
        np.testing.assert_allclose(lr.numpy(), sharp_lr[:, y // 4 : y // 4 + 8, x // 4 : x // 4 + 8], atol=1e-5)
        assert float((lr - ds[i][0]).abs().mean()) > 1e-3

    deg = Degradations(blur_sigma=(0.5, 1.5), noise_sigma=(2, 10), poisson_peak=(30, 300), jpeg_quality=(30, 90))
    ds = PatchDataset(recs, patch_size=32, scale=4, channels=3, seed=7, degradations=deg)
    lr, hr = ds[0]
    clean = PatchDataset(recs, patch_size=32, scale=4, channels=3, seed=7)[0][0]
    assert lr.shape == clean.shape == (3, 8, 8)
    assert float((lr - clean).abs().mean()) > 1e-3  # degraded
    assert float(lr.min()) >= 0 and float(lr.max()) <= 1
    torch.testing.assert_close(lr * 255, (lr * 255).round(), rtol=0, atol=1e-3)  # JPEG output is 8-bit


def test_bad_data_errors_clearly(tmp_path, capsys):
    from napari_rrim_sr.training.cli import main
    from napari_rrim_sr.training.data import DataError, load_records

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("no images here")
    with pytest.raises(DataError, match="no image files .* found in"):
        load_records([str(empty)], channels=3, min_side=32)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (bad / "noise.tif").write_bytes(os.urandom(300))
    with pytest.raises(DataError, match="no usable training images.*broken.png: unreadable"):
        load_records([str(bad)], channels=3, min_side=32)
    with pytest.raises(DataError, match="data source not found"):
        load_records([str(tmp_path / "nope")], channels=3, min_side=32)
    # one good file among bad ones: the bad ones are reported and skipped
    from PIL import Image

    Image.fromarray(np.zeros((40, 40), np.uint8) + 7).save(bad / "ok.png")
    recs, rep = load_records([str(bad)], channels=3, min_side=32)
    assert len(recs) == 1 and {Path(p).name for p, _ in rep.skipped} == {"broken.png", "noise.tif"}
    # the CLI prints a plain error, no traceback, exit code 1
    assert (
        main(
            [
                "train",
                "--data",
                str(empty),
                "--out",
                str(tmp_path / "r"),
                "--no-progress",
                "--hparam",
                "num_feat=8",
                "--hparam",
                "num_block=1",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("error: no image files") and "Traceback" not in err


# -- training ---------------------------------------------------------------------------------


@needs_shared
def test_psnr_training_loss_falls_exports_and_registers(tmp_path, data_dirs, iso):
    from napari_rrim_sr.engine import api as engine
    from napari_rrim_sr.registry.core import get_registry
    from napari_rrim_sr.registry.loading import load_model, read_metadata
    from napari_rrim_sr.training.trainer import Trainer

    losses = []
    cfg = _cfg(tmp_path, data_dirs, steps=40, val_every=20, name="tiny-test-psnr", ema=0.9)
    trainer = Trainer(cfg, callbacks=[lambda tr, st: losses.append(st["loss"])])
    result = trainer.run()
    assert result.status == "completed" and result.step == 40 and len(losses) == 40
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.8 * first, (first, last)

    run = result.run_dir
    for name in (
        "config.toml",
        "config.json",
        "log.jsonl",
        "log.csv",
        "loss.png",
        "val.png",
        "data.json",
        "checkpoints/last.pt",
        "samples/step_0000020.png",
        "samples/step_0000040.png",
        "tiny-test-psnr.safetensors",
    ):
        assert (run / name).is_file(), name
    records = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    vals = [r for r in records if r["kind"] == "val"]
    assert [v["step"] for v in vals] == [20, 40]
    assert all(math.isfinite(v["psnr"]) and 0 < v["ssim"] <= 1 and 0 < v["fsim"] <= 1 for v in vals)
    assert vals[0]["bicubic_psnr"] > 15
    saved = TrainConfig.from_dict(load_toml(run / "config.toml"))
    assert saved.hparams == {"in_channels": 3, "out_channels": 3, "scale": 4, **TINY} and saved.backbone == "rrim"

    # exported with full metadata and registered in the (isolated) user weights folder
    meta = read_metadata(run / "tiny-test-psnr.safetensors")
    assert meta["backbone"] == "rrim" and meta["hparams"]["num_feat"] == 8
    assert meta["recipe"]["steps"] == 40 and meta["recipe"]["data"] == [str(data_dirs[0])]
    assert meta["metrics"]["psnr"] == pytest.approx(vals[-1]["psnr"]) and "Y channel" in meta["metrics"]["convention"]
    assert meta["metrics"]["bicubic"]["psnr"] == pytest.approx(vals[-1]["bicubic_psnr"])
    tr = meta["training"]
    assert tr["steps"] == 40 and tr["wall_time_s"] > 0 and tr["hardware"]["cpu"] and tr["data"]["images_used"] == 4
    assert result.installed == iso / "tiny-test-psnr.safetensors" and result.installed.is_file()
    entry = get_registry().find_weights("tiny-test-psnr")
    assert entry.source == "user"
    lm = load_model("tiny-test-psnr")
    ema_sd = trainer.ema.module.state_dict()
    assert all(torch.allclose(lm.module.state_dict()[k], ema_sd[k]) for k in ema_sd)
    img = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    out = engine.upscale(img, lm, device="cpu", precision="fp32")
    assert out.shape == (80, 96, 3) and out.dtype == np.uint8

    # export again under another name, without registering
    from napari_rrim_sr.training.cli import main

    assert main(["export", str(run), "--name", "tiny-copy", "--no-register", "--dtype", "fp16"]) == 0
    assert read_metadata(run / "tiny-copy.safetensors")["stored_dtype"] == "fp16"
    assert not (iso / "tiny-copy.safetensors").exists()
    # a second training run into the same folder is refused (it would clobber the checkpoints)
    from napari_rrim_sr.training.trainer import TrainingError

    with pytest.raises(TrainingError, match="already holds a training run"):
        Trainer(cfg)


@needs_shared
def test_resume_continues_step_lr_and_weights(tmp_path, data_dirs, iso):
    from napari_rrim_sr.training.trainer import Trainer, load_checkpoint

    common = dict(steps=6, ckpt_every=3, register=False, schedule="cosine", warmup=2, lr_min=1e-5)
    lrs_a: list[float] = []
    ref = Trainer(
        _cfg(tmp_path, data_dirs, out=str(tmp_path / "a"), **common), callbacks=[lambda tr, st: lrs_a.append(st["lr"])]
    )
    res_a = ref.run()
    assert res_a.status == "completed" and res_a.step == 6

    # same run, killed by a real SIGTERM after step 3, then resumed
    lrs_b: list[float] = []

    def kill_at_3(tr, st):
        lrs_b.append(st["lr"])
        if tr.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg_b = _cfg(tmp_path, data_dirs, out=str(tmp_path / "b"), **common)
    first = Trainer(cfg_b, callbacks=[kill_at_3])
    res = first.run()
    assert res.status == "interrupted" and res.step == 3 and first.stop_signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is not first.handle_signal  # handler restored
    ck = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")  # weights_only=True
    assert ck["step"] == 3 and {"model", "ema", "opt_g", "sched_g", "rng"} <= set(ck)
    assert not (tmp_path / "b" / f"{cfg_b.resolved_name()}.safetensors").exists()  # not exported

    second = Trainer(cfg_b, resume=True, callbacks=[lambda tr, st: lrs_b.append(st["lr"])])
    assert second.step == 3
    assert second.opt_g.param_groups[0]["lr"] == pytest.approx(lrs_a[3], rel=1e-12)
    res_b = second.run()
    assert res_b.status == "completed" and res_b.step == 6
    assert lrs_b == pytest.approx(lrs_a, rel=1e-12)
    sd_a, sd_b = ref.model.state_dict(), second.model.state_dict()
    for k in sd_a:
        torch.testing.assert_close(sd_b[k], sd_a[k], rtol=1e-5, atol=1e-6)
    for k, v in ref.ema.module.state_dict().items():
        torch.testing.assert_close(second.ema.module.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    # the log holds each step once
    steps = [
        json.loads(l)["step"]
        for l in (tmp_path / "b" / "log.jsonl").read_text().splitlines()
        if json.loads(l)["kind"] == "train"
    ]
    assert steps == [1, 2, 3, 4, 5, 6]
    # a second SIGINT while stopping interrupts at once
    second.stop_signal = None
    second.handle_signal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        second.handle_signal(signal.SIGINT)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_cli_exit_code_names_the_signal(tmp_path, data_dirs, iso, monkeypatch, capsys, sig, code):
    """Defect 10a: SIGTERM (a scheduler's kill) ended training with SIGINT's 130; the exit code
    is 128 + the signal, after the checkpoint is written."""
    from napari_rrim_sr.training import cli
    from napari_rrim_sr.training.trainer import Trainer

    real_step = Trainer.train_step

    def step_then_signal(self, lr, hr):
        stats = real_step(self, lr, hr)
        if self.step == 1:  # the step counter is incremented after train_step returns
            os.kill(os.getpid(), sig)
        return stats

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    train, val = data_dirs
    out = tmp_path / "run"
    rc = cli.main(
        [
            "--data",
            str(train),
            "--val",
            str(val),
            "--steps",
            "4",
            "--hparam",
            "num_feat=8",
            "--hparam",
            "num_block=1",
            "--batch-size",
            "2",
            "--patch-size",
            "32",
            "--threads",
            "1",
            "--precision",
            "fp32",
            "--val-every",
            "0",
            "--no-register",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert rc == code
    assert "stopped by signal" in capsys.readouterr().out
    assert list(out.glob("*/checkpoints/last.pt")) or (out / "checkpoints" / "last.pt").is_file()


@needs_shared
@pytest.mark.parametrize("gan_type", ["esrgan", "srgan"])
def test_gan_stage_runs_from_psnr_weights(tmp_path, data_dirs, iso, gan_type):
    from napari_rrim_sr.training.trainer import Trainer

    init = _save_tiny(tmp_path / "psnr.safetensors")
    vgg = _tiny_vgg(tmp_path / "vgg.safetensors")
    stats = []
    cfg = _cfg(
        tmp_path,
        data_dirs,
        stage="gan",
        init=str(init),
        hparams={},
        steps=3,
        batch_size=2,
        vgg_weights=str(vgg),
        vgg_layers={"conv2_2": 1.0, "relu3_3": 0.5},
        gram_weight=1.0,
        d_hparams={"num_feat": 8},
        gan_type=gan_type,
        register=False,
        val_every=0,
        ema=0.0,
    )
    tr = Trainer(cfg, callbacks=[lambda t, s: stats.append(s)])
    assert tr.cfg.hparams["num_feat"] == 8 and tr.cfg.backbone == "rrim"  # taken from the init file
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    res = tr.run()
    assert res.status == "completed" and len(stats) == 3
    w = cfg.gan_weights()
    for s in stats:
        assert {"l_percep", "l_gram", "l_adv", "l_d", "d_real", "d_fake"} <= set(s)
        assert all(math.isfinite(v) for v in s.values())
        assert ("l_pix" in s) == (w["pixel_weight"] > 0)
    assert w == (
        {"percep_weight": 1.0, "adv_weight": 5e-3, "pixel_weight": 1e-2}
        if gan_type == "esrgan"
        else {"percep_weight": 1.0, "adv_weight": 1e-3, "pixel_weight": 0.0}
    )
    after = tr.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    from napari_rrim_sr.registry.loading import read_metadata

    meta = read_metadata(res.weights)
    assert meta["recipe"]["stage"] == "gan" and meta["training"]["init"]["path"] == str(init)


def test_gray_init_from_rgb_reproduces_rgb_model_on_replicated_gray(tmp_path, data_dirs, iso):
    """--init RGB weights for a 1-channel run: the new model starts as "RGB model on gray
    replicated to 3 channels, outputs averaged" (the engine's rule), to float precision."""
    from napari_rrim_sr.registry.loading import load_model
    from napari_rrim_sr.training.trainer import Trainer

    init = _save_tiny(tmp_path / "rgb.safetensors", seed=5)
    tr = Trainer(_cfg(tmp_path, data_dirs, init=str(init), channels=1, hparams={}, steps=1))
    assert tr.cfg.hparams["in_channels"] == 1 and tr.cfg.hparams["out_channels"] == 1
    rgb = load_model(init).module.eval()
    gray = tr.model.eval()
    x = torch.rand(2, 1, 12, 10)
    with torch.no_grad():
        want = rgb(x.repeat(1, 3, 1, 1)).mean(1, keepdim=True)
        got = gray(x.contiguous(memory_format=torch.channels_last) if tr.channels_last else x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ConfigError, match="channels"):
        Trainer(_cfg(tmp_path, data_dirs, init=str(init), channels=2, hparams={}, out=str(tmp_path / "r2")))


def test_gan_stage_needs_init_and_vgg(tmp_path, iso):
    from napari_rrim_sr.training.trainer import Trainer

    with pytest.raises(ConfigError, match="--init"):
        Trainer(TrainConfig(data=[str(tmp_path)], stage="gan", vgg_weights="x", out=str(tmp_path / "r")))
    with pytest.raises(ConfigError, match="vgg-weights"):
        TrainConfig(data=["x"], stage="gan").validate()


# -- losses -----------------------------------------------------------------------------------


def test_vgg_features_conventions_and_errors(tmp_path):
    from napari_rrim_sr.training.losses import (
        AdversarialLoss,
        LossError,
        PerceptualLoss,
        VGGFeatures,
        build_vgg,
        read_vgg_state_dict,
    )

    sd = read_vgg_state_dict(_tiny_vgg(tmp_path / "v16.safetensors"))
    x = torch.rand(2, 3, 16, 16)
    caffe = build_vgg(str(tmp_path / "v16.safetensors"), ["conv1_1", "relu2_2"])
    assert caffe.arch == "vgg16" and caffe.input_convention == "bgr-caffe"
    feats = caffe(x)
    # conv1_1 by hand: BGR, 0..255, minus the Caffe mean
    bgr = x.flip(1) * 255.0 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    ref = torch.nn.functional.conv2d(bgr, sd["features.0.weight"].float(), sd["features.0.bias"].float(), padding=1)
    torch.testing.assert_close(feats["conv1_1"], ref, rtol=1e-4, atol=1e-3)
    assert feats["relu2_2"].min() >= 0 and feats["relu2_2"].shape == (2, 4, 8, 8)
    assert len(caffe.features) == 9  # truncated after relu2_2
    gray = caffe(x[:, :1])["conv1_1"]  # gray input is replicated
    torch.testing.assert_close(gray, caffe(x[:, :1].expand(-1, 3, -1, -1))["conv1_1"])
    v19 = build_vgg(str(_tiny_vgg(tmp_path / "v19.safetensors", "vgg19")), ["conv5_4"], input_convention="rgb-imagenet")
    assert v19.arch == "vgg19"
    with pytest.raises(LossError, match="unknown vgg16 layer"):
        VGGFeatures(sd, ["conv5_4"])
    with pytest.raises(LossError, match="holds vgg16 weights, not vgg19"):
        VGGFeatures(sd, ["conv1_1"], arch="vgg19")
    torch.save({"features.0.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(LossError, match="not a VGG16/VGG19"):
        build_vgg(str(tmp_path / "partial.pth"), ["conv1_1"])
    with pytest.raises(LossError, match="not found"):
        build_vgg(str(tmp_path / "missing.safetensors"), ["conv1_1"])
    # perceptual loss: zero for identical images, gradient flows to the SR input only
    pl = PerceptualLoss(caffe, {"conv1_1": 1.0, "relu2_2": 0.5}, gram=True)
    p0, g0 = pl(x, x)
    assert float(p0) == 0 and float(g0) == 0
    sr = x.clone().requires_grad_(True)
    p1, g1 = pl(sr, torch.rand(2, 3, 16, 16))
    (p1 + g1).backward()
    assert float(p1.detach()) > 0 and sr.grad is not None and not any(p.requires_grad for p in caffe.parameters())
    # adversarial losses on logits
    real, fake = torch.tensor([[3.0], [2.0]]), torch.tensor([[-3.0], [-2.0]])
    for kind in ("srgan", "esrgan"):
        adv = AdversarialLoss(kind)
        assert float(adv.discriminator(real, fake)) < 0.2  # D is right: small loss
        assert float(adv.generator(real, fake)) > 1.0  # G is caught: large loss


@pytest.mark.skipif(not VGG_FILE.is_file(), reason="shared VGG16 weights not available")
def test_shared_vgg16_file_loads():
    from napari_rrim_sr.training.losses import build_vgg

    vgg = build_vgg(str(VGG_FILE), ["conv3_3", "conv5_3"])
    assert vgg.arch == "vgg16" and vgg.input_convention == "bgr-caffe"
    f = vgg(torch.rand(1, 3, 32, 32))
    assert f["conv5_3"].shape == (1, 512, 2, 2) and torch.isfinite(f["conv5_3"]).all()


# -- export / interpolation -------------------------------------------------------------------


def test_interpolate_same_backbone_and_refusals(tmp_path, iso, capsys):
    from napari_rrim_sr.registry.loading import load_model, load_state_dict, read_metadata
    from napari_rrim_sr.training.cli import main
    from napari_rrim_sr.training.export import ExportError, interpolate

    a = _save_tiny(tmp_path / "a.safetensors", seed=1)
    b = _save_tiny(tmp_path / "b.safetensors", seed=2)
    res = interpolate(a, b, 0.25, tmp_path / "mix.safetensors")
    sa, sb, sm = load_state_dict(a)[0], load_state_dict(b)[0], load_state_dict(res.path)[0]
    for k in sa:
        torch.testing.assert_close(sm[k], 0.75 * sa[k] + 0.25 * sb[k])
    meta = read_metadata(res.path)
    assert meta["backbone"] == "rrim" and meta["recipe"]["interpolation"]["alpha"] == 0.25
    assert load_model(res.path).hparams["num_feat"] == 8
    # alpha 0 and 1 reproduce the ends
    assert main(["interpolate", str(a), str(b), "--alpha", "1", "-o", str(tmp_path / "one.safetensors")]) == 0
    for k, v in load_state_dict(tmp_path / "one.safetensors")[0].items():
        torch.testing.assert_close(v, sb[k])
    # refusals
    wide = _save_tiny(tmp_path / "wide.safetensors", num_feat=16)
    with pytest.raises(ExportError, match="different hyper-parameters.*num_feat: 8 vs 16"):
        interpolate(a, wide, 0.5, tmp_path / "x.safetensors")
    other = _save_tiny(tmp_path / "srr.safetensors", backbone="srresnet", num_block=1)
    with pytest.raises(ExportError, match="different backbones.*'rrim'.*'srresnet'"):
        interpolate(a, other, 0.5, tmp_path / "y.safetensors")
    with pytest.raises(ExportError, match="alpha must be in 0..1"):
        interpolate(a, b, 1.5, tmp_path / "z.safetensors")
    assert main(["interpolate", str(a), str(other), "--alpha", "0.5", "-o", str(tmp_path / "w.safetensors")]) == 1
    assert "different backbones" in capsys.readouterr().err
    assert not (tmp_path / "w.safetensors").exists()


def test_ship_gan_script_interpolates_and_records_metrics(tmp_path, iso):
    """training.ship_gan (how the shipped GAN file is assembled): lerp of the two files, GAN
    recipe + interpolation record + the evaluate JSON's means in the metadata."""
    from napari_rrim_sr.registry.loading import file_sha256, load_state_dict, read_metadata

    a = _save_tiny(tmp_path / "psnr.safetensors", seed=1)
    # the GAN run read its --init from an out-of-git copy with the same bytes as the PSNR file
    b = _save_tiny(
        tmp_path / "gan.safetensors",
        seed=2,
        recipe={"name": "gan", "init": "runs/psnr-copy.safetensors", "stage": "gan"},
        extra={"training": {"steps": 250, "init": {"path": "runs/psnr-copy.safetensors", "sha256": file_sha256(a)}}},
    )
    ev = {
        "rows": [{"image": "val/K/kodim01.png"}, {"image": "val/K/kodim02.png"}],
        "mean": {
            "model": {"psnr": 27.5, "ssim": 0.75, "fsim": 0.93, "rmse": 11.0},
            "bicubic": {"psnr": 26.9, "ssim": 0.71, "fsim": 0.90, "rmse": 12.3},
        },
        "convention": "test convention",
    }
    (tmp_path / "ev.json").write_text(json.dumps(ev))
    out = tmp_path / "shipped.safetensors"
    from napari_rrim_sr.training import ship_gan

    assert (
        ship_gan.main(
            [
                "--psnr",
                str(a),
                "--gan",
                str(b),
                "--alpha",
                "0.5",
                "--eval",
                str(tmp_path / "ev.json"),
                "--psnr-steps",
                "24500",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    sa, sb, sm = load_state_dict(a)[0], load_state_dict(b)[0], load_state_dict(out)[0]
    for k in sa:  # stored as fp16
        torch.testing.assert_close(sm[k], (0.5 * sa[k] + 0.5 * sb[k]).half().float())
    meta = read_metadata(out)
    assert meta["name"] == "rrim-x4-rgb-gan" and meta["stored_dtype"] == "fp16"
    assert meta["metrics"]["psnr"] == 27.5 and meta["metrics"]["bicubic"]["psnr"] == 26.9
    assert meta["metrics"]["images"] == 2 and meta["metrics"]["convention"] == "test convention"
    assert meta["recipe"]["interpolation"]["alpha"] == 0.5
    assert meta["recipe"]["interpolation"]["b"]["path"] == str(b)
    assert "24 500 steps" in meta["description"] and "250 steps" in meta["description"]
    # lineage points at the file that ships (same bytes), not at the copy a clone lacks
    assert meta["recipe"]["init"] == a.as_posix() and meta["recipe"]["init_sha256"] == file_sha256(a)
    assert meta["training"]["init"]["path"] == "runs/psnr-copy.safetensors"  # what the run really read
    assert not list(tmp_path.glob("*.tmp.safetensors"))
    # a GAN run from some other file keeps its own init path
    c = _save_tiny(
        tmp_path / "gan2.safetensors",
        seed=3,
        recipe={"name": "gan", "init": "elsewhere.safetensors"},
        extra={"training": {"steps": 10, "init": {"path": "elsewhere.safetensors", "sha256": "0" * 64}}},
    )
    out2 = tmp_path / "shipped2.safetensors"
    assert ship_gan.main(["--psnr", str(a), "--gan", str(c), "--eval", str(tmp_path / "ev.json"), "-o", str(out2)]) == 0
    assert read_metadata(out2)["recipe"]["init"] == "elsewhere.safetensors"
    # an existing output is kept unless --overwrite
    with pytest.raises(Exception, match="exists"):
        ship_gan.main(["--psnr", str(a), "--gan", str(b), "--eval", str(tmp_path / "ev.json"), "-o", str(out)])
    # an evaluation that names the tensors it scored must have scored these
    ev["provenance"] = {"tensors_sha256": meta["tensors_sha256"]}
    (tmp_path / "ev_ok.json").write_text(json.dumps(ev))
    assert (
        ship_gan.main(
            [
                "--psnr",
                str(a),
                "--gan",
                str(b),
                "--eval",
                str(tmp_path / "ev_ok.json"),
                "-o",
                str(tmp_path / "ok.safetensors"),
            ]
        )
        == 0
    )
    with pytest.raises(SystemExit, match="scored other weights"):
        ship_gan.main(
            [
                "--psnr",
                str(a),
                "--gan",
                str(b),
                "--alpha",
                "0.4",
                "--eval",
                str(tmp_path / "ev_ok.json"),
                "-o",
                str(tmp_path / "bad.safetensors"),
            ]
        )
    assert not (tmp_path / "bad.safetensors").exists()


def test_export_errors(tmp_path, iso):
    from napari_rrim_sr.training.export import ExportError, export_run

    with pytest.raises(ExportError, match="no checkpoint"):
        export_run(tmp_path)


def test_bench_training_tiny():
    from napari_rrim_sr.training.bench import bench_training

    rows = bench_training(
        hparams=dict(TINY), batch_size=2, patch_size=32, steps=1, warmup=1, precisions=("fp32",), device="cpu"
    )
    assert len(rows) == 1 and rows[0]["patches_per_s"] > 0 and rows[0]["precision"] == "fp32"


def test_grid_check_measures_a_periodic_pattern_not_content():
    """training.measure.grid: a 2-px checkerboard of amplitude a reads about a at period 2,
    smooth random content reads about 0."""
    from scipy.ndimage import gaussian_filter

    from napari_rrim_sr.training.measure import grid as measure

    rng = np.random.default_rng(0)

    content = gaussian_filter(rng.normal(128, 40, (200, 200)), 1.0)
    yy, xx = np.mgrid[:200, :200]
    grid = 2.0 * np.where((yy + xx) % 2 == 0, 1.0, -1.0)
    amp_content = measure.grid_amplitude(measure.highpass(content), 2)
    amp_grid = measure.grid_amplitude(measure.highpass(content + grid), 2)
    assert amp_content < 0.1
    assert 1.8 < amp_grid < 2.3


def test_robust_check_degradations_and_overshoot():
    """training.measure.robust: the clean condition is exactly the evaluation LR, degradations
    are seeded; overshoot is ~0 for nearest-neighbour upscaling and reads a drawn dark hole."""
    from napari_rrim_sr.quality.evaluate import make_lr
    from napari_rrim_sr.training.measure import robust

    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(robust.degraded_lr(hr, 0, 0, 0, seed=0), make_lr(hr, 4)[1])
    a, b = robust.degraded_lr(hr, 1.0, 3.0, 80, seed=1), robust.degraded_lr(hr, 1.0, 3.0, 80, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (16, 12, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, robust.degraded_lr(hr, 1.0, 3.0, 80, seed=2))
    sharp = robust.degraded_lr(hr, 0, 0, 0, seed=0, alias=True)
    assert sharp.std() > make_lr(hr, 4)[1].std()  # no antialiasing filter: more of HR's noise survives

    lr = np.full((20, 20, 3), 230, np.uint8)
    nearest = np.kron(lr, np.ones((4, 4, 1), np.uint8))
    assert robust.overshoot(lr, nearest) == (0.0, 0.0)
    holed = nearest.copy()
    holed[40:44, 40:44] = 130  # a 4x4 dark hole, 100 RGB levels below anything in the LR
    depth = 100 * 219 / 255  # the same on BT.601 Y (16..235)
    mean, p999 = robust.overshoot(lr, holed)
    assert p999 == pytest.approx(depth) and mean == pytest.approx(16 * depth / (64 * 64))


def test_robust_check_gray_conditions():
    """training.measure.robust --gray: clean LR is the antialiased bicubic x1/4; shot and read
    noise are seeded and stay in 0..1; the gray overshoot reads a drawn hole on the value scale."""
    from napari_rrim_sr.engine.bicubic import imresize
    from napari_rrim_sr.training.measure import robust

    hr = np.random.default_rng(0).random((64, 48)).astype(np.float32)
    clean = robust.degraded_lr_gray(hr, 0, 0, False, seed=0)
    np.testing.assert_allclose(clean, np.clip(imresize(hr.astype(np.float64), 0.25), 0, 1), atol=1e-6)
    shot = robust.degraded_lr_gray(hr, 50.0, 0, False, seed=3)
    np.testing.assert_array_equal(shot, robust.degraded_lr_gray(hr, 50.0, 0, False, seed=3))
    assert shot.dtype == np.float32 and 0 <= shot.min() and shot.max() <= 1
    assert np.abs(shot - clean).mean() > 0.02  # 50 photons: a few % noise
    lr = np.full((20, 20), 200.0)
    sr = np.kron(lr, np.ones((4, 4)))
    sr[40:44, 40:44] = 150.0
    assert robust.overshoot(lr, sr)[1] == pytest.approx(50.0)
