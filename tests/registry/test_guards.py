"""Issue 23, "Tracebacks and messages": bad input gives one line naming the file, never a traceback."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_rrim_sr.cli.main import main
from napari_rrim_sr.registry.core import Registry
from napari_rrim_sr.registry.loading import save_weights

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
    from napari_rrim_sr.pipeline import chunked

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


# -- export ----------------------------------------------------------------------------------


def _save_tiny(path: Path, nan: bool = False) -> Path:
    torch.manual_seed(1)
    hp = dict(num_feat=8, num_block=1, in_channels=1, out_channels=1, scale=4)
    module = Registry(discover=False).build("rrim", **hp)
    if nan:
        with torch.no_grad():
            next(iter(module.parameters())).view(-1)[0] = float("nan")
    save_weights(path, module, backbone="rrim", hparams=hp, name="tiny")
    return path


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("bioimageio", ".zip")])
def test_export_refuses_nan_weights_naming_the_file(tmp_path, capsys, fmt, suffix):
    pytest.importorskip("onnx")
    w = _save_tiny(tmp_path / "nan.safetensors", nan=True)
    out = tmp_path / f"m{suffix}"
    rc, _, err = run_cli(capsys, "export", w, "--format", fmt, "-o", out, "--quiet")
    assert rc == 1 and "NaN" in one_line(err, w)
    assert not out.exists()


def test_export_refuses_a_discriminator_in_one_line(tmp_path, capsys):
    pytest.importorskip("onnx")
    reg = Registry(discover=True)
    module = reg.build("srgan-discriminator", in_channels=1, num_feat=8)
    w = tmp_path / "disc.safetensors"
    save_weights(w, module, backbone="srgan-discriminator", hparams=dict(in_channels=1, num_feat=8), name="d")
    out = tmp_path / "d.onnx"
    rc, _, err = run_cli(capsys, "export", w, "--format", "onnx", "-o", out, "--quiet")
    assert rc == 1 and "discriminator" in one_line(err, w)
    assert not out.exists()


def test_export_refuses_a_mismatched_suffix(tmp_path, weights, capsys):
    out = tmp_path / "foo.zip"
    rc, _, err = run_cli(capsys, "export", weights, "--format", "onnx", "-o", out, "--quiet")
    assert rc == 1 and ".onnx" in one_line(err, out)
    assert not out.exists()


def test_swinir_onnx_runs_at_sizes_that_are_not_window_multiples():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from napari_rrim_sr.export.onnx_export import onnx_bytes, run_onnx
    from napari_rrim_sr.models.swinir import SwinIR
    from napari_rrim_sr.registry.loading import LoadedModel

    torch.manual_seed(0)
    m = SwinIR(
        in_channels=1, out_channels=1, scale=2, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4, img_size=16
    ).eval()
    data = onnx_bytes(LoadedModel.from_module(m, "swinir", m.hparams()))
    for hw in [(37, 29), (16, 24), (9, 13)]:
        x = np.random.default_rng(0).random((1, 1, *hw)).astype(np.float32)
        got = run_onnx(data, x)
        with torch.no_grad():
            want = m(torch.from_numpy(x)).numpy()
        assert got.shape == (1, 1, 2 * hw[0], 2 * hw[1])
        assert np.abs(got - want).max() < 1e-4


# -- weights files: say what the file is, never suggest unpickling ---------------------------


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_raw_pickle_pth_never_suggests_weights_only_false(tmp_path, capsys):
    import pickle

    w = tmp_path / "evil.pth"
    w.write_bytes(pickle.dumps({"state_dict": {"conv.weight": _Evil()}}))
    img = tmp_path / "im.tif"
    tifffile.imwrite(img, smooth((20, 20)))
    rc, out, err = run_cli(capsys, "upscale", img, "-o", tmp_path / "o", "--model", w)
    line = one_line(err, w)
    assert rc == 1 and "weights_only" not in line and "pwned" not in out
    assert "pickled" in line


def test_text_file_named_pth_says_what_it_is(tmp_path, capsys):
    w = tmp_path / "notes.pth"
    w.write_text("these are not weights\n")
    img = tmp_path / "im.tif"
    tifffile.imwrite(img, smooth((20, 20)))
    rc, _, err = run_cli(capsys, "upscale", img, "-o", tmp_path / "o", "--model", w)
    line = one_line(err, w)
    assert rc == 1 and "not a torch checkpoint" in line and "pop from empty list" not in line


def test_pth_in_the_user_weights_folder_is_listed_as_unsupported(isolated_registry, capsys):
    from napari_rrim_sr.registry import core as registry

    folder = registry.user_weights_dir()
    torch.save({"conv.weight": torch.zeros(1)}, folder / "mine.pth")
    registry.reset_registry()
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "mine.pth" in ln)
    assert "unsupported" in line and ".safetensors" in line
    assert main(["models", "--json"]) == 0
    broken = json.loads(capsys.readouterr().out)["broken"]
    assert any(b["path"].endswith("mine.pth") for b in broken)


# -- fine-tune argument checks ---------------------------------------------------------------


def _ft(capsys, *argv):
    from napari_rrim_sr.training.cli import main as tmain

    rc = tmain(["finetune", *map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("minutes", ["inf", "nan"])
def test_finetune_minutes_must_be_finite(tmp_path, weights, capsys, isolated_registry, minutes):
    img = tmp_path / "im.tif"
    tifffile.imwrite(img, smooth((160, 160)))
    rc, _, err = _ft(capsys, "--data", img, "--init", weights, "--minutes", minutes, "--out", tmp_path / "ft")
    assert rc == 1 and "--minutes" in one_line(err) and "max_minutes" not in err


def test_finetune_on_a_constant_image(tmp_path, weights, capsys, isolated_registry):
    img = tmp_path / "flat.tif"
    tifffile.imwrite(img, np.full((160, 160), 100, np.uint16))
    rc, _, err = _ft(capsys, "--data", img, "--init", weights, "--minutes", "0.05", "--out", tmp_path / "ft")
    assert rc == 1 and "constant" in one_line(err, img.name)


def test_finetune_refuses_the_name_of_shipped_weights(tmp_path, weights, capsys, isolated_registry):
    img = tmp_path / "im.tif"
    tifffile.imwrite(img, smooth((160, 160)))
    rc, _, err = _ft(
        capsys, "--data", img, "--init", weights, "--minutes", "0.02", "--max-steps", "1", "--out", tmp_path / "ft",
        "--name", "rrim-x4-gray",
    )  # fmt: skip
    assert rc == 1 and "shipped" in one_line(err, "rrim-x4-gray")
    assert not (isolated_registry and list(Path(tmp_path / "user-weights").glob("rrim-x4-gray*")))


def test_finetune_says_it_replaces_nan(tmp_path, caplog):
    from napari_rrim_sr.training.finetune_data import load_planes

    a = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    a[3, 3], a[5, 5] = np.nan, np.inf
    img = tmp_path / "nan.tif"
    tifffile.imwrite(img, a)
    with caplog.at_level("WARNING"):
        planes = load_planes([img])
    assert np.isfinite(planes.planes[0]).all()
    assert any("nan.tif" in r.getMessage() and "NaN" in r.getMessage() for r in caplog.records)


# -- a full disk, and messages that name the file --------------------------------------------


def test_tiff_on_a_full_disk_says_so(tmp_path, weights, capsys, monkeypatch):
    img = tmp_path / "im.tif"
    tifffile.imwrite(img, smooth((20, 20)))

    def short_write(path, *a, **k):
        Path(path).write_bytes(b"II*\0")
        raise OSError("6400 requested and 4 written")  # numpy's tofile on a full disk: no errno

    monkeypatch.setattr(tifffile, "imwrite", short_write)
    rc, _, err = run_cli(capsys, "upscale", img, "-o", tmp_path / "o", "--model", weights, "--quiet")
    assert rc == 1 and "disk is probably full" in one_line(err, tmp_path / "o" / "im.tif")
    assert not (tmp_path / "o" / "im.tif").exists()


def test_evaluate_too_small_names_the_file(tmp_path, weights, capsys):
    img = tmp_path / "tiny.png"
    from PIL import Image

    Image.fromarray(smooth((6, 6))).save(img)
    rc, _, err = run_cli(capsys, "evaluate", img, "--model", weights)
    assert rc == 1 and "too small" in one_line(err, img)
