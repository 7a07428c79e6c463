"""OME-Zarr in and out, chunk by chunk on dask.distributed, resumable after SIGKILL (issue 16)."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ome_zarr = pytest.importorskip("ome_zarr")
zarr = pytest.importorskip("zarr")
pytest.importorskip("distributed")

from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Reader  # noqa: E402
from ome_zarr.writer import add_metadata, write_image  # noqa: E402

from napari_rrim_sr.cli.main import main  # noqa: E402
from napari_rrim_sr.engine import api as engine  # noqa: E402
from napari_rrim_sr.pipeline import chunked  # noqa: E402
from napari_rrim_sr.registry.core import Registry  # noqa: E402
from napari_rrim_sr.registry.loading import save_weights  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A tiny 1-channel x4 RRIM saved as a weights file (fast, deterministic)."""
    torch.manual_seed(7)
    hp = dict(num_feat=8, num_block=1, in_channels=1, out_channels=1, scale=4)
    module = Registry(discover=False).build("rrim", **hp)
    p = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(p, module, backbone="rrim", hparams=hp, name="tiny")
    return p


def volume(shape=(3, 40, 36), seed=0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.random(shape), sigma=[0] * (len(shape) - 2) + [2, 2])
    return ((x - x.min()) / (x.max() - x.min()) * 240 + 5).astype(np.uint8)


def write_ome(path: Path, a: np.ndarray, axes="zyx", scale=None, omero=None) -> Path:
    g = zarr.open_group(str(path), mode="w")
    write_image(
        a,
        g,
        axes=axes,
        scale=scale or {"z": 2.0, "y": 0.5, "x": 0.5},
        storage_options=dict(chunks=(1,) * (a.ndim - 2) + (16, 16)),
    )
    if omero:
        add_metadata(g, {"omero": omero})
    return path


def read_back(path: Path):
    nodes = list(Reader(parse_url(str(path), mode="r"))())
    return nodes[0]


def test_ome_zarr_local_cluster_matches_in_memory(tmp_path, weights):
    a = volume((3, 72, 68))
    src = write_ome(tmp_path / "vol.ome.zarr", a)
    before = sorted(str(p.relative_to(src)) + str(p.stat().st_mtime_ns) for p in src.rglob("*"))
    out = tmp_path / "out"
    rc = main(
        [
            "upscale",
            str(src),
            "-o",
            str(out),
            "--model",
            str(weights),
            "--scheduler",
            "local:2",
            "--precision",
            "fp32",
            "--chunk",
            "96",
            "--quiet",
        ]
    )
    assert rc == 0
    res = out / "vol.ome.zarr"
    node = read_back(res)
    axes = [ax["name"] for ax in node.metadata["axes"]]
    assert axes == ["z", "y", "x"]
    tr = node.metadata["coordinateTransformations"]
    # level 0: z kept, y/x scale / 4 and translate t - s/2 + s/8 (the napari overlay rule)
    assert tr[0] == [
        {"type": "scale", "scale": [2.0, 0.125, 0.125]},
        {"type": "translation", "translation": [0.0, -0.1875, -0.1875]},
    ]
    # level 1: a 2x2 mean of level 0
    assert tr[1] == [
        {"type": "scale", "scale": [2.0, 0.25, 0.25]},
        {"type": "translation", "translation": [0.0, -0.125, -0.125]},
    ]
    got = np.asarray(node.data[0])
    assert got.dtype == np.uint8 and got.shape == (3, 288, 272)
    want = engine.upscale(a, str(weights), precision="fp32", tile=0)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # chunk seams like tile seams
    assert np.asarray(node.data[1]).shape == (3, 144, 136)
    assert zarr.open_array(str(res / "0"), mode="r").chunks == (1, 96, 96)
    prov = dict(zarr.open_group(str(res), mode="r").attrs)["napari_rrim_sr"]
    assert prov["model"]["weights_sha256"] and prov["settings"]["model_sha256"] == prov["model"]["weights_sha256"]
    assert prov["scheduler"] == "local:2" and "upscale" in prov["command"] and str(src) in prov["command"]
    after = sorted(str(p.relative_to(src)) + str(p.stat().st_mtime_ns) for p in src.rglob("*"))
    assert after == before  # the input store was never written


def test_channels_and_omero_are_kept(tmp_path, weights):
    a = volume((2, 24, 20))
    omero = {
        "channels": [
            {
                "label": "DAPI",
                "color": "0000FF",
                "window": {"min": 0, "max": 255, "start": 5, "end": 200},
                "active": True,
            },
            {
                "label": "GFP",
                "color": "00FF00",
                "window": {"min": 0, "max": 255, "start": 0, "end": 255},
                "active": True,
            },
        ]
    }
    src = write_ome(tmp_path / "cells.ome.zarr", a, axes="cyx", scale={"c": 1.0, "y": 0.3, "x": 0.3}, omero=omero)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--model", str(weights), "--quiet"]) == 0
    res = tmp_path / "o" / "cells.ome.zarr"
    attrs = parse_url(str(res), mode="r").root_attrs
    assert [c["label"] for c in attrs["omero"]["channels"]] == ["DAPI", "GFP"]
    assert attrs["omero"]["channels"][0]["window"]["end"] == 200
    ms = attrs["multiscales"][0]
    assert [x["type"] for x in ms["axes"]] == ["channel", "space", "space"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx([1.0, 0.075, 0.075])


def _markers(res: Path) -> set:
    return {p.name for p in (res / chunked.DONE_DIR).iterdir() if not p.name.startswith(".")} - {chunked.COMPLETE}


def test_sigkill_then_resume_gives_the_identical_array(tmp_path, weights, capsys):
    a = volume((4, 48, 48), seed=3)
    src = write_ome(tmp_path / "big.ome.zarr", a)
    args = [
        "upscale",
        str(src),
        "--model",
        str(weights),
        "--precision",
        "fp32",
        "--chunk",
        "32",
        "--threads",
        "1",
        "--quiet",
    ]
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    out = tmp_path / "killed"
    res = out / "big.ome.zarr"
    total = 4 * 6 * 6
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_rrim_sr", *args, "-o", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if (res / chunked.DONE_DIR).is_dir() and len(_markers(res)) >= 20:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = _markers(res)
    assert 20 <= len(done_at_kill) < total, "the run finished before it could be killed"
    # a half-written chunk is never done: corrupt one marked chunk's data and drop its marker
    victim = sorted(done_at_kill)[0]
    z, y, x = (int(v) for v in victim.split("_"))
    arr = zarr.open_array(str(res / "0"), mode="r+")
    arr[z, y * 32 : (y + 1) * 32, x * 32 : (x + 1) * 32] = 0
    (res / chunked.DONE_DIR / victim).unlink()
    (res / chunked.DONE_DIR / f".{victim}.tmp-1-1").write_text("{")  # a marker killed mid-write
    done_at_kill.discard(victim)
    r = subprocess.run(
        [sys.executable, "-m", "napari_rrim_sr", *args, "-o", str(out), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    m = re.search(r"\((\d+) chunks computed, (\d+) already done, of (\d+)\)", r.stdout)
    assert m and int(m.group(3)) == total
    assert int(m.group(1)) == total - len(done_at_kill)  # only the missing chunks were recomputed
    assert int(m.group(2)) == len(done_at_kill)
    full = tmp_path / "full"
    r2 = subprocess.run(
        [sys.executable, "-m", "napari_rrim_sr", *args, "-o", str(full)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r2.returncode == 0, r2.stderr
    got = zarr.open_array(str(res / "0"), mode="r")[:]
    want = zarr.open_array(str(full / "big.ome.zarr" / "0"), mode="r")[:]
    assert np.array_equal(got, want)
    # resuming a finished run computes nothing; other settings or weights are refused
    assert main([*args, "-o", str(out), "--resume"]) == 0
    assert "(0 chunks computed" in capsys.readouterr().out
    assert main([*args, "-o", str(out), "--resume", "--halo", "8"]) == 1
    assert "other settings (halo)" in capsys.readouterr().err
    torch.manual_seed(8)
    hp = dict(num_feat=8, num_block=1, in_channels=1, out_channels=1, scale=4)
    other = tmp_path / "other.safetensors"
    save_weights(other, Registry(discover=False).build("rrim", **hp), backbone="rrim", hparams=hp, name="other")
    assert main([*args, "-o", str(out), "--resume", "--model", str(other)]) == 1
    assert "other settings (model_sha256)" in capsys.readouterr().err


# -- bad input -----------------------------------------------------------------------------


def test_plain_zarr_needs_axes(tmp_path, weights, capsys):
    a = volume((2, 20, 20))
    zarr.save_array(str(tmp_path / "plain.zarr"), a)
    assert main(["upscale", str(tmp_path / "plain.zarr"), "-o", str(tmp_path / "o"), "--model", str(weights)]) == 1
    err = capsys.readouterr().err
    assert "needs --axes" in err and len(err.strip().splitlines()) == 1
    assert (
        main(
            [
                "upscale",
                str(tmp_path / "plain.zarr"),
                "-o",
                str(tmp_path / "o"),
                "--model",
                str(weights),
                "--axes",
                "zyx",
                "--quiet",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    got = zarr.open_array(str(tmp_path / "o" / "plain.ome.zarr" / "0"), mode="r")[:]
    want = engine.upscale(a, str(weights), precision="fp32", tile=0)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_inconsistent_multiscales(tmp_path, weights, capsys):
    src = write_ome(tmp_path / "bad.ome.zarr", volume((2, 20, 20)))
    g = zarr.open_group(str(src), mode="r+")
    ome = dict(g.attrs["ome"])
    ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [0.5, 0.5]
    g.attrs["ome"] = ome
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--model", str(weights)]) == 1
    err = capsys.readouterr().err
    assert "inconsistent multiscales" in err and "2 values for 3 axes" in err
    ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [1, 1, 1]
    ome["multiscales"][0]["datasets"][0]["path"] = "nope"
    g.attrs["ome"] = ome
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--model", str(weights)]) == 1
    assert "'nope' is not a readable array" in capsys.readouterr().err


def test_unsupported_dtype(tmp_path, weights, capsys):
    zarr.save_array(str(tmp_path / "mask.zarr"), np.zeros((16, 16), bool))
    assert main(["upscale", str(tmp_path / "mask.zarr"), "-o", str(tmp_path / "o"), "--model", str(weights)]) == 1
    assert "boolean images" in capsys.readouterr().err


def test_existing_output_and_input_are_protected(tmp_path, weights, capsys):
    a = volume((1, 16, 16))
    src = write_ome(tmp_path / "v.ome.zarr", a)
    out = tmp_path / "o"
    common = ["--model", str(weights), "--quiet"]
    assert main(["upscale", str(src), "-o", str(out), *common]) == 0
    assert main(["upscale", str(src), "-o", str(out), *common]) == 1
    assert "exists; not overwriting" in capsys.readouterr().err
    assert main(["upscale", str(src), "-o", str(out), *common, "--overwrite"]) == 0
    # OUTDIR = the input's own folder: OUTDIR/v.ome.zarr is the input, refused even with --overwrite
    stamp = (src / "zarr.json").read_bytes()
    assert main(["upscale", str(src), "-o", str(tmp_path), *common, "--overwrite"]) == 1
    assert "never" in capsys.readouterr().err
    assert (src / "zarr.json").read_bytes() == stamp
    # an output inside the input store is refused too
    assert main(["upscale", str(src), "-o", str(src / "sub"), *common]) == 1
    assert "never written" in capsys.readouterr().err
    assert not (src / "sub").exists()


# -- napari-facing core ----------------------------------------------------------------------


def test_plan_output():
    kind, why = chunked.plan_output((10, 100, 100), np.uint16, 4, budget=10 << 20)
    assert kind == "memory" and "fits" in why  # 10*400*400*2 = 3.2 MB
    kind, why = chunked.plan_output((100, 1000, 1000), np.uint16, 4, budget=1 << 30)
    assert kind == "store" and "exceeds" in why and "3.0 GB" in why


def test_upscale_to_store_returns_a_lazy_result(tmp_path, weights):
    da = pytest.importorskip("dask.array")
    a = volume((2, 30, 26))
    lazy = chunked.upscale_to_store(
        da.from_array(a, chunks=(1, 15, 13)),
        tmp_path / "r.ome.zarr",
        axes="zyx",
        scale=(1.0, 0.5, 0.5),
        model=str(weights),
        precision="fp32",
        chunk=64,
    )
    assert isinstance(lazy, da.Array) and lazy.shape == (2, 120, 104)
    want = engine.upscale(a, str(weights), precision="fp32", tile=0)
    assert np.abs(np.asarray(lazy).astype(int) - want.astype(int)).max() <= 1
    tr = read_back(tmp_path / "r.ome.zarr").metadata["coordinateTransformations"][0]
    assert tr[0]["scale"] == [1.0, 0.125, 0.125]


def test_large_tiff_read_lazily(tmp_path, weights):
    tifffile = pytest.importorskip("tifffile")
    a = volume((2, 40, 36), seed=5)
    a[0, :20, :18] //= 4  # chunks with different ranges
    tifffile.imwrite(tmp_path / "stack.tif", a, metadata={"axes": "ZYX"}, tile=(16, 16))
    assert (
        main(
            [
                "upscale",
                str(tmp_path / "stack.tif"),
                "-o",
                str(tmp_path / "o"),
                "--model",
                str(weights),
                "--scheduler",
                "threads",
                "--precision",
                "fp32",
                "--chunk",
                "64",
                "--quiet",
                "--normalize",
                "range",
            ]
        )
        == 0
    )
    got = zarr.open_array(str(tmp_path / "o" / "stack.ome.zarr" / "0"), mode="r")[:]
    # one global range for every chunk (a per-chunk range would differ by many grey levels)
    want = engine.upscale(a, str(weights), precision="fp32", tile=0, normalization="range")
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_level_transforms_overlay_rule():
    from napari_rrim_sr.io.geometry import upscaled_geometry
    from napari_rrim_sr.io.ngff import level_transforms

    tr = level_transforms([3.0, 2.0, 0.4], [10.0, 5.0, -1.0], (1, 2), 4, 3)
    s0, t0 = upscaled_geometry([3.0, 2.0, 0.4], [10.0, 5.0, -1.0], 4, spatial_axes=(1, 2))
    assert tr[0][0]["scale"] == list(s0) and tr[0][1]["translation"] == list(t0)
    assert t0[1] == pytest.approx(5.0 - 1.0 + 0.25) and t0[0] == 10.0
    # level 2 (4x4 means of level 0) pixel 0 is centred on level-0 pixels 0..3: (0 + 3) / 2
    assert tr[2][0]["scale"][1] == pytest.approx(2.0)  # 0.5 * 4: back to the source pixel size
    assert tr[2][1]["translation"][1] == pytest.approx(t0[1] + 0.5 * 1.5)
    assert tr[2][1]["translation"][1] == pytest.approx(5.0)  # 4x upscale then 4x mean = the source grid


def test_each_worker_loads_the_weights_once(tmp_path, weights):
    distributed = pytest.importorskip("distributed")
    from napari_rrim_sr.io.ngff import open_source

    src = open_source(write_ome(tmp_path / "w.ome.zarr", volume((4, 32, 32))))
    job = chunked.plan_job(src, tmp_path / "w_out.ome.zarr", model=str(weights), chunk=64, threads=1)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None, silence_logs=40
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        summary = chunked.run_job(job, src, client=client, workers=2)
        cached = client.run(lambda: [up.model.sha256 for up in engine.cached_upscalers()])
    assert summary["computed"] == summary["chunks"] == 4 * 2 * 2
    # one cached Upscaler per worker process, for these weights, however many chunks it ran
    assert all(v == [job.model_sha256] for v in cached.values())
    assert len({r["pid"] for r in summary["records"]}) <= 2
