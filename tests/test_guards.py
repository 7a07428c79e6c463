"""Issue 23, "Tracebacks and messages": bad input gives one line naming the file, never a traceback."""

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_rrim_sr.cli import main
from napari_rrim_sr.registry import Registry
from napari_rrim_sr.weights_io import save_weights

zarr = pytest.importorskip("zarr")
SHIPPED_GRAY = Path(__import__("napari_rrim_sr").__file__).parent / "weights" / "rrim-x4-gray.safetensors"
pytest.importorskip("ome_zarr")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(7)
    hp = dict(num_feat=8, num_block=1, in_channels=1, out_channels=1, scale=4)
    module = Registry(discover=False).build("rrim", **hp)
    p = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(p, module, backbone="rrim", hparams=hp, name="tiny")
    return p


def smooth(shape, seed=0, dtype=np.uint8) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(np.random.default_rng(seed).random(shape), sigma=[0] * (len(shape) - 2) + [2, 2])
    return ((x - x.min()) / (x.max() - x.min()) * 200 + 20).astype(dtype)


def write_ome(path: Path, a: np.ndarray) -> Path:
    from ome_zarr.writer import write_image

    g = zarr.open_group(str(path), mode="w")
    write_image(a, g, axes="zyx"[-a.ndim :], storage_options=dict(chunks=(1,) * (a.ndim - 2) + (16, 16)))
    return path


def one_line(err: str, *names) -> str:
    """The run's stderr is one plain line naming each of ``names`` (no traceback)."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    for n in names:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# -- NGFF metadata ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["scale", "multiscales"])
def test_malformed_ngff_is_one_line(tmp_path, weights, capsys, case):
    src = write_ome(tmp_path / "bad.ome.zarr", smooth((2, 20, 20)))
    g = zarr.open_group(str(src), mode="r+")
    ome = dict(g.attrs["ome"])
    if case == "scale":
        ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = ["a", 1, 1]
    else:
        ome["multiscales"] = "abc"
    g.attrs["ome"] = ome
    rc, _, err = run_cli(capsys, "upscale", src, "-o", tmp_path / "o", "--model", weights, "--quiet")
    assert rc == 1
    assert "multiscales" in one_line(err, src)
    assert not (tmp_path / "o").exists()


# -- options checked once, before any work ---------------------------------------------------


def test_memory_limit_garbage(tmp_path, weights, capsys):
    src = write_ome(tmp_path / "v.ome.zarr", smooth((1, 20, 20)))
    rc, _, err = run_cli(
        capsys, "upscale", src, "-o", tmp_path / "o", "--model", weights, "--scheduler", "local:1",
        "--memory-limit", "garbage",
    )  # fmt: skip
    assert rc == 1 and "--memory-limit" in one_line(err)


def test_chunk_zero_is_refused(tmp_path, weights, capsys):
    src = write_ome(tmp_path / "v.ome.zarr", smooth((1, 20, 20)))
    rc, _, err = run_cli(capsys, "upscale", src, "-o", tmp_path / "o", "--model", weights, "--chunk", "0")
    assert rc == 1 and "--chunk" in one_line(err)
    assert not (tmp_path / "o").exists()


def test_percentiles_error_is_reported_once(tmp_path, weights, capsys):
    ins = []
    for i in range(3):
        ins.append(tmp_path / f"im{i}.tif")
        tifffile.imwrite(ins[-1], smooth((20, 20), seed=i))
    rc, _, err = run_cli(
        capsys, "upscale", *ins, "-o", tmp_path / "o", "--model", weights, "--normalize", "percentile",
        "--percentiles", "60", "10",
    )  # fmt: skip
    assert rc == 1 and "--percentiles" in one_line(err)


@pytest.mark.parametrize("axes,shape", [("XY", (24, 36)), ("ZXY", (2, 24, 36))])
def test_axes_x_before_y_on_non_square_image(tmp_path, weights, capsys, axes, shape):
    a = smooth(shape)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, a, metadata=None)
    rc, out, err = run_cli(
        capsys, "upscale", src, "-o", tmp_path / "o", "--model", weights, "--axes", axes, "--quiet", "--bicubic"
    )  # fmt: skip
    assert rc == 0, err
    res = tifffile.imread(tmp_path / "o" / "in.tif")
    bic = tifffile.imread(tmp_path / "o" / "in_bicubic.tif")
    assert res.shape == bic.shape
    want = np.swapaxes(a, -1, -2)  # stored X before Y: the result is written Y before X
    if bic.ndim == 3 and bic.shape[-1] == shape[0]:  # the TIFF writer may put a short Z last
        bic = np.moveaxis(bic, -1, 0)
    assert bic.shape[-2:] == (want.shape[-2] * 4, want.shape[-1] * 4)
    down = bic.reshape(*bic.shape[:-2], want.shape[-2], 4, want.shape[-1], 4).mean(axis=(-3, -1))
    assert np.abs(down - want).mean() < 3  # the same picture, transposed (not a scrambled reshape)


# -- batches go on after a failing input -----------------------------------------------------


def test_mixed_batch_zarr_and_images_goes_on(tmp_path, weights, capsys):
    bad = tmp_path / "mask.zarr"
    zarr.save_array(str(bad), np.zeros((16, 16), bool))  # unsupported dtype
    good = write_ome(tmp_path / "v.ome.zarr", smooth((1, 20, 20)))
    img = tmp_path / "im.tif"
    tifffile.imwrite(img, smooth((20, 20), seed=3))
    rc, out, err = run_cli(
        capsys, "upscale", bad, good, img, "-o", tmp_path / "o", "--model", SHIPPED_GRAY, "--quiet", "--precision", "fp32"
    )  # fmt: skip
    assert rc == 1
    assert "bool" in one_line(err, bad)
    assert (tmp_path / "o" / "v.ome.zarr" / "0").is_dir()
    res = tifffile.imread(tmp_path / "o" / "im.tif")
    assert res.shape == (80, 80)
    assert abs(float(res.mean()) - float(tifffile.imread(img).mean())) < 5


# -- broken pipe -----------------------------------------------------------------------------


class _ClosedPipe:
    def write(self, _):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


def test_models_json_into_a_closed_pipe_is_silent(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["models", "--json"]) == 0
    assert capsys.readouterr().err == ""
