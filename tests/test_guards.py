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


# -- the chunked path: resume, lock, disk full, scheduler ------------------------------------


def _ome_run(tmp_path, weights, capsys, *extra):
    src = tmp_path / "v.ome.zarr"
    if not src.exists():
        write_ome(src, smooth((1, 40, 40)))
    return run_cli(capsys, "upscale", src, "-o", tmp_path / "o", "--model", weights, "--quiet", "--chunk", "64", *extra)


def _interrupt(store: Path) -> None:
    """Make a finished store look like a killed run: half of its chunk markers gone."""
    done = sorted(p for p in (store / ".rrim_done").iterdir() if p.name != "COMPLETE")
    (store / ".rrim_done" / "COMPLETE").unlink()
    for p in done[: len(done) // 2]:
        p.unlink()


def test_resume_after_the_input_changed_is_refused(tmp_path, weights, capsys):
    assert _ome_run(tmp_path, weights, capsys)[0] == 0
    store = tmp_path / "o" / "v.ome.zarr"
    _interrupt(store)
    z = zarr.open_array(str(tmp_path / "v.ome.zarr" / "s0"), mode="r+")
    z[:] = 255 - z[:]  # same shape and dtype, other pixels
    rc, _, err = _ome_run(tmp_path, weights, capsys, "--resume")
    assert rc == 1 and "changed" in one_line(err, store)
    # the same input resumes fine
    z[:] = 255 - z[:]
    assert _ome_run(tmp_path, weights, capsys, "--resume")[0] == 0


def test_concurrent_resume_is_refused(tmp_path, weights, capsys):
    fcntl = pytest.importorskip("fcntl")
    assert _ome_run(tmp_path, weights, capsys)[0] == 0
    store = tmp_path / "o" / "v.ome.zarr"
    _interrupt(store)
    with open(store / ".rrim_lock", "a+") as fh:  # another run holds the store
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc, _, err = _ome_run(tmp_path, weights, capsys, "--resume")
    assert rc == 1 and "another run" in one_line(err, store)
    assert _ome_run(tmp_path, weights, capsys, "--resume")[0] == 0  # lock gone: resumes


def test_resume_into_a_folder_with_a_copied_job_file(tmp_path, weights, capsys):
    assert _ome_run(tmp_path, weights, capsys)[0] == 0
    job = (tmp_path / "o" / "v.ome.zarr" / ".rrim_job.json").read_bytes()
    other = tmp_path / "o2" / "v.ome.zarr"
    other.mkdir(parents=True)
    (other / ".rrim_job.json").write_bytes(job)
    rc, _, err = run_cli(
        capsys, "upscale", tmp_path / "v.ome.zarr", "-o", tmp_path / "o2", "--model", weights, "--quiet",
        "--chunk", "64", "--resume",
    )  # fmt: skip
    assert rc == 1 and "refusing to resume" in one_line(err, other)


def test_disk_full_in_the_chunked_path(tmp_path, weights, capsys, monkeypatch):
    import errno

    from zarr.core.array import Array

    def full(self, key, value):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "v.ome.zarr" / "0" / "c"))

    write_ome(tmp_path / "v.ome.zarr", smooth((1, 40, 40)))
    monkeypatch.setattr(Array, "__setitem__", full)
    rc, _, err = _ome_run(tmp_path, weights, capsys)
    assert rc == 1 and "disk full" in one_line(err, tmp_path / "o" / "v.ome.zarr")


def test_local_cluster_is_quiet_and_serves_no_dashboard(monkeypatch):
    import logging

    distributed = pytest.importorskip("distributed")
    from napari_rrim_sr import chunked

    seen = {}

    class FakeCluster:
        def __init__(self, **kw):
            seen.update(kw)

        def close(self):
            pass

    class FakeClient:
        def __init__(self, cluster):
            pass

        def close(self):
            pass

    monkeypatch.setattr(distributed, "LocalCluster", FakeCluster)
    monkeypatch.setattr(distributed, "Client", FakeClient)
    for name in ("distributed", "distributed.scheduler"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.INFO)
    _, close, n = chunked.open_scheduler("local:2")
    close()
    assert n == 2
    sk = seen.get("scheduler_kwargs") or {}
    assert sk.get("dashboard") is False and "8787" not in str(sk.get("dashboard_address"))
    assert logging.getLogger("distributed.scheduler").getEffectiveLevel() >= logging.WARNING
