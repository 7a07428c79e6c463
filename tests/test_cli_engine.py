"""The upscale / evaluate / bench subcommands, run through ``napari_rrim_sr.cli.main``."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_rrim_sr.cli import main
from napari_rrim_sr.image_io import read_image, write_image
from napari_rrim_sr.registry import Registry
from napari_rrim_sr.weights_io import file_sha256, save_weights

DATA = Path(__file__).parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Tiny random RRIMs saved as .safetensors (1- and 3-channel)."""
    folder = tmp_path_factory.mktemp("w")
    out = {}
    for ch in (1, 3):
        torch.manual_seed(ch)
        hp = dict(num_feat=8, num_block=1, in_channels=ch, out_channels=ch, scale=4)
        module = Registry(discover=False).build("rrim", **hp)
        out[ch] = save_weights(folder / f"tiny{ch}.safetensors", module, backbone="rrim", hparams=hp)
    return out


@pytest.fixture
def rgb_png(tmp_path):
    src = DATA / "val" / "Kodak24" / "kodim03.png"
    if src.exists():
        arr, _ = read_image(src)
        arr = np.ascontiguousarray(arr[200:233, 300:341])  # 33 x 41
    else:
        arr = np.random.default_rng(0).integers(0, 255, (33, 41, 3), dtype=np.uint8)
    indir = tmp_path / "in"
    indir.mkdir()
    return write_image(indir / "photo.png", arr), arr


@pytest.mark.parametrize("cmd", ["upscale", "evaluate", "bench"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert cmd in out and "--json" in out if cmd != "upscale" else "--bicubic" in out


def test_upscale_png_with_model_path_and_bicubic(tmp_path, rgb_png, weights, capsys):
    src, arr = rgb_png
    outdir = tmp_path / "out"
    rc = main(["upscale", str(src), "-o", str(outdir), "--model", str(weights[3]), "--bicubic",
               "--tile", "24", "--overlap", "8", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    up, info = read_image(outdir / "photo.png")
    assert up.shape == (132, 164, 3) and up.dtype == np.uint8
    prov = info["provenance"]
    assert prov["model"]["weights_sha256"] == file_sha256(weights[3])
    assert prov["source"]["sha256"] == file_sha256(src)
    assert prov["engine"]["tile"] == 24 and prov["scale"] == 4
    bic, _ = read_image(outdir / "photo_bicubic.png")
    from napari_rrim_sr.engine import upscale_bicubic

    np.testing.assert_array_equal(bic, upscale_bicubic(arr))
    # the same model through the API gives the same pixels
    from napari_rrim_sr.engine import upscale

    np.testing.assert_array_equal(up, upscale(arr, str(weights[3]), tile=24, overlap=8))


def test_upscale_16bit_tiff_stack_keeps_dtype_axes_and_12_bit(tmp_path, weights):
    stack = np.random.default_rng(1).integers(0, 4096, (3, 20, 18)).astype(np.uint16)
    src = write_image(tmp_path / "stack.tif", stack, axes="ZYX")
    outdir = tmp_path / "o"
    assert main(["upscale", str(src), "-o", str(outdir), "--model", str(weights[1]), "--tile", "0",
                 "--bit-depth", "12", "--quiet"]) == 0
    up, info = read_image(outdir / "stack.tif")
    assert up.shape == (3, 80, 72) and up.dtype == np.uint16 and info["axes"] == "ZYX"
    assert up.max() <= 4095
    assert info["provenance"]["engine"]["normalization"]["bit_depth"] == 12


def test_axes_option_for_bands(tmp_path, weights):
    bands = np.random.default_rng(2).integers(0, 255, (12, 14, 4), dtype=np.uint8)
    src = write_image(tmp_path / "bands.tif", bands, rgb=False, axes="YXC")
    out = tmp_path / "o"
    assert main(["upscale", str(src), "-o", str(out), "--model", str(weights[1]), "--axes", "YXC", "--quiet"]) == 0
    up, _ = read_image(out / "bands.tif")
    assert up.shape == (48, 56, 4)
    rc = main(["upscale", str(src), "-o", str(tmp_path / "o2"), "--model", str(weights[1]), "--axes", "YX"])
    assert rc == 1  # wrong letter count is an error, not a crash


def test_output_equal_to_input_is_refused(rgb_png, weights, capsys):
    src, _ = rgb_png
    before, mtime = src.read_bytes(), src.stat().st_mtime_ns
    rc = main(["upscale", str(src), "-o", str(src.parent), "--model", str(weights[3]), "--overwrite"])
    assert rc == 1
    assert "input file" in capsys.readouterr().err
    assert src.read_bytes() == before and src.stat().st_mtime_ns == mtime


def test_nothing_is_overwritten_without_flag(tmp_path, rgb_png, weights, capsys):
    src, _ = rgb_png
    outdir = tmp_path / "out"
    outdir.mkdir()
    existing = outdir / "photo.png"
    existing.write_bytes(b"precious")
    rc = main(["upscale", str(src), "-o", str(outdir), "--model", str(weights[3]), "--quiet"])
    assert rc == 1
    assert "exists" in capsys.readouterr().err
    assert existing.read_bytes() == b"precious"
    assert main(["upscale", str(src), "-o", str(outdir), "--model", str(weights[3]), "--overwrite", "--quiet"]) == 0
    assert read_image(existing)[0].shape == (132, 164, 3)


def test_unreadable_input_reports_and_continues(tmp_path, rgb_png, weights, capsys):
    src, _ = rgb_png
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"garbage")
    outdir = tmp_path / "o"
    rc = main(["upscale", str(bad), str(src), "-o", str(outdir), "--model", str(weights[3]), "--quiet"])
    assert rc == 1
    assert "bad.tif" in capsys.readouterr().err
    assert (outdir / "photo.png").exists() and not (outdir / "bad.tif").exists()


def test_missing_weights_file_is_a_clear_error(rgb_png, tmp_path, capsys):
    src, _ = rgb_png
    rc = main(["upscale", str(src), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "nope.safetensors")])
    assert rc == 1
    assert "nope.safetensors" in capsys.readouterr().err


def test_evaluate_json(tmp_path, rgb_png, weights, capsys):
    src, _ = rgb_png
    js = tmp_path / "res.json"
    assert main(["evaluate", str(src), "--model", str(weights[3]), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "MEAN" in out and "bicubic" in out and "Y channel" in out
    res = json.loads(js.read_text())
    assert len(res["rows"]) == 1 and set(res["mean"]) == {"model", "bicubic"}
    assert res["mean"]["bicubic"]["psnr"] == pytest.approx(res["rows"][0]["bicubic"]["psnr"])
    # the numbers name the weights they belong to: file and tensors hashes
    from napari_rrim_sr.weights_io import file_sha256, read_metadata

    assert res["provenance"]["weights_sha256"] == file_sha256(weights[3])
    assert res["provenance"]["tensors_sha256"] == read_metadata(weights[3])["tensors_sha256"]
    assert main(["evaluate", str(src), "--model", str(weights[3]), "--json", str(js)]) == 1  # no overwrite


def test_bench_smoke(tmp_path, weights, capsys):
    js = tmp_path / "bench.json"
    rc = main(["bench", "--model", str(weights[3]), "--size", "16", "--tile-size", "72", "--mem-size", "0",
               "--quick", "--no-rrdbnet", "--json", str(js)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "engine MP/s" in out and "seam error" in out and "bf16" in out
    res = json.loads(js.read_text())
    assert {r["precision"] for r in res["throughput"]} == {"fp32", "bf16", "fp32 NCHW"}
    assert res["tiling"]["tiled_s"] > 0 and res["seam"]["max_abs"] < 1e-2
    assert res["ratios"]["bf16_over_fp32_engine"] > 0


def test_bench_kernels_splits_forward_into_convolutions(tmp_path, weights, capsys):
    js = tmp_path / "kernels.json"
    rc = main(["bench", "--kernels", "--model", str(weights[3]), "--size", "16", "--repeat", "1", "--no-rrdbnet",
               "--json", str(js)])
    assert rc == 0
    assert "non-conv share" in capsys.readouterr().out
    res = json.loads(js.read_text())
    import torch

    from napari_rrim_sr.weights_io import load_model

    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in load_model(weights[3]).module.modules())
    for row in res["kernels"]:
        assert row["precision"] in ("fp32", "bf16")
        assert sum(k["count"] for k in row["kernels"]) == n_convs  # every conv call accounted for once
        assert row["total_s"] > 0 and row["conv_s"] > 0 and row["gmac_s_convs"] > 0


def test_self_ensemble_flag_reaches_engine_and_provenance(tmp_path, rgb_png, weights, capsys):
    src, arr = rgb_png
    outdir = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(outdir), "--model", str(weights[3]), "--self-ensemble",
                 "--tile", "0", "--quiet"]) == 0
    up, info = read_image(outdir / "photo.png")
    assert info["provenance"]["engine"]["self_ensemble"] is True
    from napari_rrim_sr.engine import upscale

    np.testing.assert_array_equal(up, upscale(arr, str(weights[3]), tile=0, self_ensemble=True))
    assert not np.array_equal(up, upscale(arr, str(weights[3]), tile=0))
    js = tmp_path / "res.json"
    assert main(["evaluate", str(src), "--model", str(weights[3]), "--self-ensemble", "--json", str(js)]) == 0
    assert "self-ensemble" in capsys.readouterr().out
    assert json.loads(js.read_text())["self_ensemble"] is True
