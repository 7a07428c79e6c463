"""Nothing a command reads is ever replaced, deleted or written into (issue 23, "Data loss" 1-6).

The guarantee is by construction (:mod:`napari_rrim_sr.read_guard`): readers record what they
open, the one writer refuses it. Each numbered defect of the issue is reproduced here; every test
checks the read file's bytes afterwards and that the command failed with one line.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_rrim_sr import read_guard
from napari_rrim_sr.cli.main import main
from napari_rrim_sr.errors import OutputError
from napari_rrim_sr.safe_write import atomic_write, check_target

zarr = pytest.importorskip("zarr")


def digest(p: Path) -> str:
    """Bytes of a file, or of every file under a folder (names included)."""
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode())
            h.update(f.read_bytes())
    else:
        h.update(p.read_bytes())
    return h.hexdigest()


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def weights(tmp_path, tiny_weights_files) -> Path:
    p = tmp_path / "w" / "tiny.safetensors"
    p.parent.mkdir()
    shutil.copyfile(tiny_weights_files["tiny-rrim-x4-gray"], p)
    return p


def stack(n=2, h=48, w=40, seed=0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    a = gaussian_filter(rng.random((n, h, w)), sigma=(0, 2, 2))
    return ((a - a.min()) / (a.max() - a.min()) * 3000 + 100).astype(np.uint16)


def write_ome(path: Path, a: np.ndarray) -> Path:
    from ome_zarr.writer import write_image

    write_image(a, zarr.open_group(str(path), mode="w"), axes="zyx", storage_options={"chunks": (1, 16, 16)})
    return path


# -- the registry itself -----------------------------------------------------------------------------


def test_registry_scope_is_per_command_and_refuses_every_writer(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("data")
    read_guard.register_read(f)  # outside a scope: nothing recorded (a napari session does not grow)
    assert read_guard.current_reads() == []
    atomic_write(tmp_path / "other.txt", "x")
    with read_guard.reading():
        read_guard.register_read(f)
        assert [e.path for e in read_guard.current_reads()] == [f.resolve()]
        for target, kind in ((f, "file"), (tmp_path, "dir")):
            with pytest.raises(OutputError, match="input"):
                check_target(target, overwrite=True, kind=kind)
        link = tmp_path / "hard.txt"
        link.hardlink_to(f)
        with pytest.raises(OutputError, match="input"):
            atomic_write(link, "x", overwrite=True)
        with read_guard.reading():  # nested: same scope
            assert len(read_guard.current_reads()) == 1
        atomic_write(tmp_path / "new.txt", "ok")  # a new file next to an input is fine
    assert read_guard.current_reads() == []
    atomic_write(f, "replaced outside the command", overwrite=True)


def test_store_is_a_tree_nothing_written_inside(tmp_path):
    src = write_ome(tmp_path / "in.ome.zarr", stack())
    with read_guard.reading():
        from napari_rrim_sr.io.ngff import open_source

        open_source(src)
        with pytest.raises(OutputError, match="inside the input"):
            check_target(src / "0" / "extra.json")
        with pytest.raises(OutputError, match="contains the input"):
            check_target(tmp_path, overwrite=True, kind="dir")


def test_threads_do_not_share_scopes(tmp_path):
    import threading

    f = tmp_path / "a"
    f.write_text("a")
    seen = []
    with read_guard.reading():
        read_guard.register_read(f)
        t = threading.Thread(target=lambda: seen.append(read_guard.current_reads()))
        t.start()
        t.join()
    assert seen == [[]]


# -- issue 23, data loss 1-6 --------------------------------------------------------------------------


def _finetune_argv(data: Path, init: Path, out: Path, json_path: Path) -> list[str]:
    return [
        "finetune",
        "--data",
        str(data),
        "--init",
        str(init),
        "--minutes",
        "0.05",
        "--max-steps",
        "1",
        "--batch-size",
        "1",
        "--patch-size",
        "16",
        "--heldout-crops",
        "1",
        "--heldout-side",
        "32",
        "--no-register",
        "--out",
        str(out),
        "--json",
        str(json_path),
    ]


@pytest.mark.parametrize("victim", ["data", "init"])
def test_1_finetune_json_never_replaces_the_data_or_the_init_weights(tmp_path, weights, tiny_registry, victim, capsys):
    import tifffile

    from napari_rrim_sr.training.cli import main as tmain

    data = tmp_path / "victim.tif"
    tifffile.imwrite(data, stack(4, 64, 64))
    target = data if victim == "data" else weights
    before = digest(target)
    rc = tmain(_finetune_argv(data, weights, tmp_path / "run", target))
    assert rc == 1
    assert "is an input of this command" in one_error_line(capsys.readouterr().err)
    assert digest(target) == before
    assert not (tmp_path / "run").exists()  # refused before the run, not after it


def test_2_bench_zarr_json_never_replaces_the_weights(tmp_path, weights, capsys):
    pytest.importorskip("distributed")
    before = digest(weights)
    argv = ["bench-zarr", "--model", str(weights), "--workers", "1", "--shape", "1", "16", "16"]
    rc = main([*argv, "--big-factor", "0", "--chunk", "64", "--json", str(weights)])
    assert rc == 1
    assert str(weights) in one_error_line(capsys.readouterr().err)
    assert digest(weights) == before


def test_3_output_store_holding_the_weights_is_not_deleted(tmp_path, weights, capsys):
    src = write_ome(tmp_path / "in.ome.zarr", stack())
    out = tmp_path / "OUT"
    (out / "in.ome.zarr").mkdir(parents=True)
    w = out / "in.ome.zarr" / "my.safetensors"
    shutil.copyfile(weights, w)
    before = digest(w)
    rc = main(["upscale", str(src), "-o", str(out), "--model", str(w), "--overwrite", "--quiet"])
    assert rc == 1
    assert "contains the input" in one_error_line(capsys.readouterr().err)
    assert w.is_file() and digest(w) == before


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_4_dataset_paths_must_stay_inside_their_group(tmp_path, weights, how, capsys):
    real = write_ome(tmp_path / "real" / "data.ome.zarr", stack())
    before = digest(real)
    evil = write_ome(tmp_path / "a" / "evil.ome.zarr", stack(seed=1))
    g = zarr.open_group(str(evil), mode="r+")
    ms = g.attrs["ome"]["multiscales"] if "ome" in g.attrs else g.attrs["multiscales"]
    from napari_rrim_sr.io.ngff import open_source

    level0 = open_source(real).array_path
    path = f"../../real/data.ome.zarr/{level0}" if how == "relative" else str(real / level0)
    for d in ms[0]["datasets"]:
        d["path"] = path
    if "ome" in g.attrs:
        ome = dict(g.attrs["ome"])
        ome["multiscales"] = ms
        g.attrs["ome"] = ome
    else:
        g.attrs["multiscales"] = ms
    rc = main(["upscale", str(evil), "-o", str(real), "--model", str(weights), "--overwrite", "--quiet"])
    assert rc == 1
    assert "dataset paths must stay inside their group" in one_error_line(capsys.readouterr().err)
    assert digest(real) == before


def test_5_upscale_to_store_never_touches_the_store_it_reads(tmp_path, weights):
    da = pytest.importorskip("dask.array")
    from napari_rrim_sr.pipeline import chunked

    src = write_ome(tmp_path / "that_store.ome.zarr", stack())
    before = digest(src)
    from napari_rrim_sr.io.ngff import open_source

    arr = da.from_zarr(str(src / open_source(src).array_path))  # a napari layer's lazy data
    with pytest.raises(OutputError, match="input"):
        chunked.upscale_to_store(arr, src, axes="zyx", model=str(weights), overwrite=True, chunk=64)
    with pytest.raises(OutputError, match="inside the input"):
        chunked.upscale_to_store(arr, src / "res.ome.zarr", axes="zyx", model=str(weights), chunk=64)
    assert digest(src) == before
    # and it still works elsewhere, from the same lazy array
    res = chunked.upscale_to_store(arr, tmp_path / "ok.ome.zarr", axes="zyx", model=str(weights), chunk=64)
    assert res.shape == (2, 192, 160)
    assert digest(src) == before


def test_6_train_out_equal_to_data_keeps_images_named_like_plots(tmp_path, capsys):
    from PIL import Image

    from napari_rrim_sr.training.cli import main as tmain

    d = tmp_path / "D"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in ("val.png", "loss.png", "a.png"):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(d / name)
    before = {n: digest(d / n) for n in ("val.png", "loss.png")}
    argv = ["train", "--data", str(d), "--out", str(d), "--steps", "1", "--hparam", "num_feat=8"]
    argv += ["--hparam", "num_block=1", "--batch-size", "1", "--patch-size", "32", "--threads", "1"]
    argv += ["--precision", "fp32", "--val-every", "0", "--no-register", "--no-progress"]
    rc = tmain(argv)
    assert rc == 1
    assert "is an input of this command" in one_error_line(capsys.readouterr().err)
    assert {n: digest(d / n) for n in before} == before


def test_resume_into_a_store_holding_the_weights_is_refused(tmp_path, weights, capsys):
    src = write_ome(tmp_path / "in.ome.zarr", stack())
    assert main(["upscale", str(src), "-o", str(tmp_path / "res"), "--model", str(weights), "--quiet"]) == 0
    capsys.readouterr()  # the first run's own lines (the untrained model's check warning)
    out = tmp_path / "res" / "in.ome.zarr"
    w = out / "w.safetensors"
    shutil.copyfile(weights, w)
    rc = main(["upscale", str(src), "-o", str(tmp_path / "res"), "--model", str(w), "--resume", "--quiet"])
    assert rc == 1
    one_error_line(capsys.readouterr().err)
    assert digest(w) == digest(weights)
    assert json.loads((out / ".rrim_job.json").read_text())["settings"]
