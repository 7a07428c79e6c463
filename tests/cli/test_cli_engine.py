"""The upscale / evaluate / bench subcommands, run through ``napari_rrim_sr.cli.main.main``."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_rrim_sr.cli.main import main
from napari_rrim_sr.io.images import read_image, write_image
from napari_rrim_sr.registry.core import Registry
from napari_rrim_sr.registry.loading import file_sha256, save_weights

DATA = Path(__file__).parents[3] / "shared" / "data"


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
    rc = main(
        [
            "upscale",
            str(src),
            "-o",
            str(outdir),
            "--model",
            str(weights[3]),
            "--bicubic",
            "--tile",
            "24",
            "--overlap",
            "8",
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    up, info = read_image(outdir / "photo.png")
    assert up.shape == (132, 164, 3) and up.dtype == np.uint8
    prov = info["provenance"]
    assert prov["model"]["weights_sha256"] == file_sha256(weights[3])
    assert prov["source"]["sha256"] == file_sha256(src)
    assert prov["engine"]["tile"] == 24 and prov["scale_factor"] == 4
    bic, _ = read_image(outdir / "photo_bicubic.png")
    from napari_rrim_sr.engine.api import upscale_bicubic

    np.testing.assert_array_equal(bic, upscale_bicubic(arr))
    # the same model through the API gives the same pixels
    from napari_rrim_sr.engine.api import upscale

    np.testing.assert_array_equal(up, upscale(arr, str(weights[3]), tile=24, overlap=8))


def test_upscale_16bit_tiff_stack_keeps_dtype_axes_and_12_bit(tmp_path, weights):
    stack = np.random.default_rng(1).integers(0, 4096, (3, 20, 18)).astype(np.uint16)
    src = write_image(tmp_path / "stack.tif", stack, axes="ZYX")
    outdir = tmp_path / "o"
    assert (
        main(
            [
                "upscale",
                str(src),
                "-o",
                str(outdir),
                "--model",
                str(weights[1]),
                "--tile",
                "0",
                "--bit-depth",
                "12",
                "--quiet",
            ]
        )
        == 0
    )
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
    from napari_rrim_sr.registry.loading import file_sha256, read_metadata

    assert res["provenance"]["weights_sha256"] == file_sha256(weights[3])
    assert res["provenance"]["tensors_sha256"] == read_metadata(weights[3])["tensors_sha256"]
    assert main(["evaluate", str(src), "--model", str(weights[3]), "--json", str(js)]) == 1  # no overwrite


def test_bench_smoke(tmp_path, weights, capsys):
    js = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "--model",
            str(weights[3]),
            "--size",
            "16",
            "--tile-size",
            "72",
            "--mem-size",
            "0",
            "--quick",
            "--no-rrdbnet",
            "--json",
            str(js),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "engine MP/s" in out and "seam error" in out and "bf16" in out
    res = json.loads(js.read_text())
    assert {r["precision"] for r in res["throughput"]} == {"fp32", "bf16", "fp32 NCHW"}
    assert res["tiling"]["tiled_s"] > 0 and res["seam"]["max_abs"] < 1e-2
    assert res["ratios"]["bf16_over_fp32_engine"] > 0


def test_bench_kernels_splits_forward_into_convolutions(tmp_path, weights, capsys):
    js = tmp_path / "kernels.json"
    rc = main(
        [
            "bench",
            "--kernels",
            "--model",
            str(weights[3]),
            "--size",
            "16",
            "--repeat",
            "1",
            "--no-rrdbnet",
            "--json",
            str(js),
        ]
    )
    assert rc == 0
    assert "non-conv share" in capsys.readouterr().out
    res = json.loads(js.read_text())
    import torch

    from napari_rrim_sr.registry.loading import load_model

    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in load_model(weights[3]).module.modules())
    for row in res["kernels"]:
        assert row["precision"] in ("fp32", "bf16")
        assert sum(k["count"] for k in row["kernels"]) == n_convs  # every conv call accounted for once
        assert row["total_s"] > 0 and row["conv_s"] > 0 and row["gmac_s_convs"] > 0


def test_self_ensemble_flag_reaches_engine_and_provenance(tmp_path, rgb_png, weights, capsys):
    src, arr = rgb_png
    outdir = tmp_path / "out"
    assert (
        main(
            [
                "upscale",
                str(src),
                "-o",
                str(outdir),
                "--model",
                str(weights[3]),
                "--self-ensemble",
                "--tile",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    up, info = read_image(outdir / "photo.png")
    assert info["provenance"]["engine"]["self_ensemble"] is True
    from napari_rrim_sr.engine.api import upscale

    np.testing.assert_array_equal(up, upscale(arr, str(weights[3]), tile=0, self_ensemble=True))
    assert not np.array_equal(up, upscale(arr, str(weights[3]), tile=0))
    js = tmp_path / "res.json"
    assert main(["evaluate", str(src), "--model", str(weights[3]), "--self-ensemble", "--json", str(js)]) == 0
    assert "self-ensemble" in capsys.readouterr().out
    assert json.loads(js.read_text())["self_ensemble"] is True


# -- issue 13: --axes against the file as stored (defect 5) -------------------------------------


def test_axes_describe_the_file_as_stored_planar_rgb(tmp_path, weights, capsys):
    import tifffile

    rng = np.random.default_rng(5)
    planar = rng.integers(0, 255, (3, 32, 32), dtype=np.uint8)
    src = tmp_path / "planar.tif"
    tifffile.imwrite(src, planar, photometric="rgb", planarconfig="separate")
    assert tifffile.TiffFile(src).series[0].axes == "SYX"
    for axes, model in (("CYX", weights[1]), ("SYX", weights[3]), ("syx", weights[3])):
        out = tmp_path / f"o-{axes}"
        rc = main(["upscale", str(src), "-o", str(out), "--model", str(model), "--axes", axes, "--quiet"])
        assert rc == 0, capsys.readouterr().err
        up, _ = read_image(out / "planar.tif")
        assert up.shape == (128, 128, 3), axes  # Y/X upscaled, the 3 channels kept
    # a stack of 3 gray planes stored (3, 32, 32) with the default reading: Z/Q planes, not colour
    gray = tmp_path / "stack.tif"
    tifffile.imwrite(gray, planar, photometric="minisblack")
    out = tmp_path / "o-stack"
    assert main(["upscale", str(gray), "-o", str(out), "--model", str(weights[1]), "--axes", "ZYX", "--quiet"]) == 0
    assert read_image(out / "stack.tif")[0].shape == (3, 128, 128)
    # the letter count is checked against the stored dimensions, naming them
    rc = main(["upscale", str(src), "-o", str(tmp_path / "bad"), "--model", str(weights[1]), "--axes", "YX"])
    assert rc == 1 and "stores 3 dimensions" in capsys.readouterr().err


def test_upscale_help_states_the_default_axes_reading(capsys):
    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "AS STORED" in text and "default: the file's own axes metadata" in text
    assert "Exit status" in text


# -- issue 13: output-location failures (defects 8 and 10b) -------------------------------------


def test_output_under_a_file_is_one_line_no_traceback_no_work(tmp_path, rgb_png, weights, capsys):
    src, _ = rgb_png
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["upscale", str(src), "-o", str(blocker / "out"), "--model", str(weights[3]), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and "is a file" in err
    assert "Traceback" not in err


def test_bad_options_are_reported_once_before_any_input(tmp_path, rgb_png, weights, capsys):
    src, _ = rgb_png
    other = write_image(src.parent / "other.png", np.zeros((12, 12, 3), np.uint8))
    for extra, word in (
        (["--tile", "-5"], "tile"),
        (["--tile", "3"], "tile"),
        (["--threads", "0"], "threads"),
        (["--model", str(tmp_path / "missing.safetensors")], "missing.safetensors"),
    ):
        args = ["upscale", str(src), str(other), "-o", str(tmp_path / "o"), "--quiet"]
        if extra[0] != "--model":
            args += ["--model", str(weights[3])]
        rc = main(args + extra)
        err = capsys.readouterr().err
        assert rc == 1 and err.count("error:") == 1 and word in err, (extra, err)
        assert not (tmp_path / "o").exists()


def test_one_unwritable_output_fails_alone_and_others_are_written(tmp_path, weights, capsys, monkeypatch):
    from napari_rrim_sr.io import images as image_io

    rng = np.random.default_rng(7)
    srcs = [write_image(tmp_path / f"in{i}.tif", rng.integers(0, 255, (12, 12), dtype=np.uint8)) for i in range(3)]
    real = image_io._write_tiff

    def full_disk_for_in1(tmp, arr, *a, **kw):
        if "in1" in tmp.name:
            raise OSError(28, "No space left on device")
        return real(tmp, arr, *a, **kw)

    monkeypatch.setattr(image_io, "_write_tiff", full_disk_for_in1)
    out = tmp_path / "o"
    rc = main(["upscale", *map(str, srcs), "-o", str(out), "--model", str(weights[1]), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "in1.tif" in lines[0] and "no space left" in lines[0]
    assert sorted(f.name for f in out.iterdir()) == ["in0.tif", "in2.tif"]  # no temporaries either


def test_unwritable_places_give_one_line_per_input(tmp_path, rgb_png, weights, capsys):
    src, _ = rgb_png
    other = write_image(tmp_path / "in" / "other.png", np.zeros((12, 12, 3), np.uint8))
    rc = main(
        ["upscale", str(src), str(other), "-o", "/proc/napari-rrim-sr-test", "--model", str(weights[3]), "--quiet"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) in (1, 2)  # up front or per input
    assert not Path("/proc/napari-rrim-sr-test").exists()


def test_no_empty_output_folder_when_every_input_fails(tmp_path, weights, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    out = tmp_path / "deep" / "out"
    rc = main(["upscale", str(bad), str(empty), "-o", str(out), "--model", str(weights[1]), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("error:") == 2
    assert not (tmp_path / "deep").exists()


# -- issue 13: every bad input keeps its one clear line and a non-zero exit ---------------------


def _bad_inputs(tmp_path):
    import tifffile

    d = tmp_path / "bad inputs ü"  # spaces and unicode in names
    d.mkdir()
    cases = {}
    (d / "empty.png").write_bytes(b"")
    cases["empty file"] = (d / "empty.png", "empty.png")
    good = write_image(d / "good.tif", np.zeros((64, 64), np.uint16))
    (d / "trunc.tif").write_bytes(good.read_bytes()[:100])
    cases["truncated"] = (d / "trunc.tif", "trunc.tif")
    (d / "text.png").write_text("hello, not an image")
    cases["text as image"] = (d / "text.png", "text.png")
    cases["missing"] = (d / "missing.png", "no such file")
    (d / "folder.png").mkdir()
    cases["directory"] = (d / "folder.png", "not a file")
    cases["1x1"] = (write_image(d / "one.png", np.zeros((1, 1), np.uint8)), "one.png")
    tifffile.imwrite(d / "zero.tif", np.zeros((0, 5), np.uint8))
    cases["empty array"] = (d / "zero.tif", "zero.tif")
    cases["nan"] = (write_image(d / "nan.tif", np.full((16, 16), np.nan, np.float32)), "nan.tif")
    inf = np.zeros((16, 16), np.float32)
    inf[3, 3] = np.inf
    cases["inf"] = (write_image(d / "inf.tif", inf), "inf.tif")
    tifffile.imwrite(d / "bool.tif", np.zeros((16, 16), bool))
    cases["bool"] = (d / "bool.tif", "bool.tif")
    tifffile.imwrite(d / "complex.tif", np.zeros((16, 16), np.complex64))
    cases["complex"] = (d / "complex.tif", "complex.tif")
    (d / "notes.txt").write_text("x")
    cases["unsupported suffix"] = (d / "notes.txt", "unsupported")
    return cases


BAD_INPUTS = [
    "empty file",
    "truncated",
    "text as image",
    "missing",
    "directory",
    "1x1",
    "empty array",
    "nan",
    "inf",
    "bool",
    "complex",
    "unsupported suffix",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_give_one_clear_line_and_nonzero_exit(case, tmp_path, weights, capsys):
    path, word = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out dir"
    rc = main(["upscale", str(path), "-o", str(out), "--model", str(weights[1]), "--quiet"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 1, err
    assert len(lines) == 1 and word in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()


def test_16_and_12_bit_data_and_unicode_names_are_kept(tmp_path, weights):
    d = tmp_path / "données à voir"
    d.mkdir()
    for bits, hi in ((16, 65535), (12, 4095)):
        arr = np.random.default_rng(bits).integers(0, hi + 1, (12, 12)).astype(np.uint16)
        src = write_image(d / f"img {bits} bit ü.tif", arr)
        args = ["upscale", str(src), "-o", str(d / "out ü"), "--model", str(weights[1]), "--quiet"]
        assert main(args + (["--bit-depth", "12"] if bits == 12 else [])) == 0
        up, _ = read_image(d / "out ü" / src.name)
        assert up.dtype == np.uint16 and up.shape == (48, 48) and up.max() <= hi
