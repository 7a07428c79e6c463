"""A 9 KB file must not cost gigabytes (issue 23, "Memory and crafted files" 1-3).

Every crafted file is made here, small; each test checks the refusal is one clear line naming the
file and happens before the memory the file claims is allocated.
"""

from __future__ import annotations

import resource
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_rrim_sr.cli.main import main
from napari_rrim_sr.errors import InputError, WeightsError
from napari_rrim_sr.registry.loading import check_hparam_limits, load_model, load_state_dict

zarr = pytest.importorskip("zarr")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# -- 1. checkpoints -----------------------------------------------------------------------------------


def test_stride0_tensors_are_refused_by_their_real_storage(tmp_path):
    p = tmp_path / "expanded.pth"
    # 8 bytes on disk, 300 MB as a float64 view and 150 MB more after .float()
    torch.save({"conv_first.weight": torch.zeros(1, dtype=torch.float64).expand(2048, 2048, 3, 3)}, p)
    assert p.stat().st_size < 4096
    before = rss_mb()
    with pytest.raises(WeightsError, match="stride-0") as exc:
        load_state_dict(p)
    assert str(p) in str(exc.value)
    assert rss_mb() - before < 100


def test_add_user_weights_does_not_install_an_expanded_file(tmp_path, isolated_registry):
    from napari_rrim_sr.registry.core import user_weights_dir
    from napari_rrim_sr.registry.user_files import add_user_weights

    p = tmp_path / "small.pth"
    torch.save({"body.0.weight": torch.zeros(1).expand(1024, 1024, 3, 3)}, p)
    with pytest.raises(WeightsError, match="stride-0"):
        add_user_weights(p)
    assert not list(Path(user_weights_dir()).glob("*.safetensors"))


def test_deflated_pth_is_refused_before_reading(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(8 << 20)}, plain)  # 32 MB of zeros, stored
    crafted = tmp_path / "deflated.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(crafted, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert crafted.stat().st_size < 1 << 20
    with pytest.raises(WeightsError, match="declares .* bytes uncompressed"):
        load_model(crafted)


def test_hyper_parameters_have_sane_limits_before_building(tmp_path):
    for hp in ({"num_feat": 4096}, {"window_size": 100}, {"depths": [6] * 100}, {"num_block": 10**6}):
        with pytest.raises(WeightsError, match="sane limits|stages"):
            check_hparam_limits(hp, tmp_path / "w.safetensors")
    check_hparam_limits({"num_feat": 64, "window_size": 8, "depths": [6, 6, 6, 6], "embed_dim": 180}, "ok")


# -- 2. OME-Zarr declaring what it does not hold --------------------------------------------------------


def _declaring_store(path: Path, shape, chunks) -> Path:
    from ome_zarr.format import CurrentFormat
    from ome_zarr.writer import write_multiscales_metadata

    g = zarr.open_group(str(path), mode="w")
    zarr.create_array(str(path / "0"), shape=shape, chunks=chunks, dtype="uint8", fill_value=0)
    axes = [{"name": n, "type": "space"} for n in "zyx"[-len(shape) :]]
    tr = [[{"type": "scale", "scale": [1.0] * len(shape)}]]
    datasets = [{"path": "0", "coordinateTransformations": tr[0]}]
    write_multiscales_metadata(g, datasets, fmt=CurrentFormat(), axes=axes, name="x")
    return path


def test_store_declaring_1e9_squared_is_refused_before_any_output(tmp_path, tiny_weights_files, capsys):
    src = _declaring_store(tmp_path / "huge.ome.zarr", (10**9, 10**9), (4096, 4096))
    assert sum(f.stat().st_size for f in src.rglob("*") if f.is_file()) < 16_000
    before = rss_mb()
    t = time.perf_counter()
    rc = main(
        ["upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_weights_files["tiny-rrim-x4-gray"])]
    )
    assert rc == 1
    line = one_error_line(capsys.readouterr().err)
    assert "declares shape" in line and str(src) in line
    assert not (tmp_path / "out").exists()
    assert time.perf_counter() - t < 20 and rss_mb() - before < 200


def test_ten_million_planes_plan_lazily(tmp_path, tiny_weights_files):
    from napari_rrim_sr.io.ngff import open_source
    from napari_rrim_sr.pipeline import chunked

    src = open_source(_declaring_store(tmp_path / "planes.ome.zarr", (10**7, 16, 16), (1, 16, 16)))
    model = load_model(tiny_weights_files["tiny-rrim-x4-gray"])  # not part of planning
    t = time.perf_counter()
    job = chunked.plan_job(src, tmp_path / "o.ome.zarr", model=model, chunk=64)
    assert job.n_chunks() == 10**7
    first = next(chunked._pending_chunks(job))
    assert first == (0, 0, 0)
    assert time.perf_counter() - t < 5


# -- 3. bundles and TIFFs ----------------------------------------------------------------------------------


def test_bundle_listing_one_tiff_many_times_reads_it_once(tmp_path):
    import json

    from napari_rrim_sr.io.bundle import read_bundle, write_layer_tiff

    b = tmp_path / "b"
    b.mkdir()
    write_layer_tiff(b / "l.tif", np.zeros((16, 16), np.uint8), {"name": "l"})
    manifest = {"format": "napari-rrim-sr-bundle", "version": 1, "layers": [{"file": "l.tif"}] * 200}
    (b / "bundle.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="repeat"):
        layers = read_bundle(b)
    assert len(layers) == 1
    manifest["layers"] = [{"file": "l.tif"}] * 20000
    (b / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="at most"):
        read_bundle(b)


def test_tiff_declaring_more_than_memory_points_to_the_lazy_path(tmp_path, monkeypatch, tiny_weights_files, capsys):
    import tifffile

    from napari_rrim_sr.engine import memory
    from napari_rrim_sr.io.images import read_image

    p = tmp_path / "big.tif"
    # a real 1024^2 tiled TIFF whose header then declares 32768 x 32768 uint16 (2 GiB)
    tifffile.imwrite(p, np.zeros((1024, 1024), np.uint16), tile=(256, 256), compression="zlib")
    with tifffile.TiffFile(p, mode="r+") as tf:
        tf.pages[0].tags["ImageWidth"].overwrite(32768)
        tf.pages[0].tags["ImageLength"].overwrite(32768)
    assert p.stat().st_size < 2 << 20
    monkeypatch.setattr(memory, "available_memory", lambda: 1 << 30)
    with pytest.raises(InputError, match="--scheduler"):
        read_image(p)
    rc = main(["upscale", str(p), "-o", str(tmp_path / "out"), "--model", str(tiny_weights_files["tiny-rrim-x4-gray"])])
    assert rc == 1
    err = capsys.readouterr().err
    assert "--scheduler" in err and "Traceback" not in err and "MemoryError" not in err
