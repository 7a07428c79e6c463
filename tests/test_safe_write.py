"""The one writer: inputs never replaced, atomic, no temporaries left, umask honoured."""

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_rrim_sr.errors import OutputError
from napari_rrim_sr.safe_write import TMP_MARK, atomic_dir, atomic_write, check_target


def test_refuses_input_by_path_symlink_and_hardlink(tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(b"image")
    link = tmp_path / "link.png"
    link.symlink_to(src)
    hard = tmp_path / "hard.png"
    os.link(src, hard)
    for target in (src, link, hard):
        with pytest.raises(OutputError, match="is an input"):
            atomic_write(target, b"json", overwrite=True, protect=[src])
    assert src.read_bytes() == b"image"


def test_exists_needs_overwrite_and_replace_is_atomic(tmp_path):
    out = tmp_path / "a.json"
    atomic_write(out, "1")
    with pytest.raises(OutputError, match="exists"):
        atomic_write(out, "2")
    atomic_write(out, "2", overwrite=True)
    assert out.read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failure_leaves_nothing_and_removes_created_folders(tmp_path):
    def boom(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "new" / "deep" / "x.tif", boom)
    assert list(tmp_path.iterdir()) == []


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write(tmp_path / "w.safetensors", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_parent_is_a_file_is_one_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_target(f / "out.png")


def test_killed_writer_temporary_is_cleaned_by_next_write(tmp_path):
    code = (
        "import os,sys\n"
        "from napari_rrim_sr.safe_write import atomic_write\n"
        "def w(tmp):\n"
        "    tmp.write_bytes(b'partial'); os.kill(os.getpid(), 9)\n"
        f"atomic_write({str(tmp_path / 'big.tif')!r}, w)\n"
    )
    r = subprocess.run([sys.executable, "-c", code])
    assert r.returncode != 0
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and TMP_MARK in left[0] and not (tmp_path / "big.tif").exists()
    atomic_write(tmp_path / "other.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]


def test_atomic_dir_replaces_only_with_overwrite_and_never_an_input(tmp_path):
    def build(d):
        (d / "metrics.json").write_text("{}")

    out = atomic_dir(tmp_path / "bundle", build)
    assert (out / "metrics.json").exists()
    with pytest.raises(OutputError, match="exists"):
        atomic_dir(out, build)
    atomic_dir(out, build, overwrite=True)
    src = out / "metrics.json"
    with pytest.raises(OutputError, match="contains the input"):
        atomic_dir(out, build, overwrite=True, protect=[src])


def test_jsonable_is_strict_json():
    import json
    import math
    from pathlib import Path

    import numpy as np

    from napari_rrim_sr.jsonable import jsonable

    v = jsonable({"a": np.float32(1.5), "b": math.inf, "c": np.arange(3), 1: Path("/x"), "d": (np.nan,)})
    assert json.loads(json.dumps(v, allow_nan=False)) == {"a": 1.5, "b": "inf", "c": [0, 1, 2], "1": "/x", "d": ["nan"]}


# -- every writer of the project goes through it (defect 2 of issue 13) --------------------------


def _links(tmp_path, src):
    """The same file under three names: a symlink, a hard link, and the path itself."""
    sym = tmp_path / f"sym-{src.name}"
    sym.symlink_to(src)
    hard = tmp_path / f"hard-{src.name}"
    os.link(src, hard)
    return [src, sym, hard]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from napari_rrim_sr.registry.core import Registry
    from napari_rrim_sr.registry.loading import save_weights

    folder = tmp_path_factory.mktemp("w")
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        hp = {"num_feat": 8, "num_block": 1, "in_channels": 1, "out_channels": 1, "scale": 4}
        module = Registry(discover=False).build("rrim", **hp)
        out.append(save_weights(folder / f"t{seed}.safetensors", module, backbone="rrim", hparams=hp))
    return out


def test_evaluate_json_never_replaces_an_input_image(tmp_path, tiny_weights, capsys):
    from napari_rrim_sr.cli.main import main
    from napari_rrim_sr.io.images import write_image

    img = write_image(tmp_path / "X.png", np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
    before = img.read_bytes()
    for target in _links(tmp_path, img):
        rc = main(["evaluate", str(img), "--model", str(tiny_weights[0]), "--json", str(target), "--overwrite"])
        assert rc == 1
        assert "is an input" in capsys.readouterr().err
        assert img.read_bytes() == before
    # an image inside a folder given as input is protected too; so are the weights
    rc = main(["evaluate", str(tmp_path), "--model", str(tiny_weights[0]), "--json", str(img), "--overwrite"])
    assert rc == 1 and img.read_bytes() == before
    w_before = tiny_weights[0].read_bytes()
    rc = main(["evaluate", str(img), "--model", str(tiny_weights[0]), "--json", str(tiny_weights[0]), "--overwrite"])
    assert rc == 1 and tiny_weights[0].read_bytes() == w_before
    # a good target: strict JSON, no temporaries
    out = tmp_path / "r" / "res.json"
    assert main(["evaluate", str(img), "--model", str(tiny_weights[0]), "--json", str(out)]) == 0
    import json

    assert json.loads(out.read_text())["rows"]
    assert not [f for f in out.parent.iterdir() if TMP_MARK in f.name]


def test_bench_json_never_replaces_the_weights(tmp_path, tiny_weights, capsys):
    from napari_rrim_sr.cli.main import main

    w = tiny_weights[1]
    before = w.read_bytes()
    for target in _links(tmp_path, w):
        rc = main(
            [
                "bench",
                "--quick",
                "--model",
                str(w),
                "--json",
                str(target),
                "--overwrite",
                "--kernels",
                "--no-rrdbnet",
                "--size",
                "16",
                "--device",
                "cpu",
            ]
        )
        assert rc == 1
        assert "is an input" in capsys.readouterr().err
    assert w.read_bytes() == before


def test_training_interpolate_never_replaces_a_or_b(tmp_path, tiny_weights, capsys):
    from napari_rrim_sr.training.cli import main

    a, b = tiny_weights
    before = a.read_bytes(), b.read_bytes()
    for target in _links(tmp_path, a) + [b]:
        rc = main(["interpolate", str(a), str(b), "--alpha", "0.5", "-o", str(target), "--overwrite"])
        assert rc == 1
        assert "is an input" in capsys.readouterr().err
    assert (a.read_bytes(), b.read_bytes()) == before
    out = tmp_path / "mix.safetensors"
    old = os.umask(0o022)
    try:
        assert main(["interpolate", str(a), str(b), "--alpha", "0.5", "-o", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # umask, not mkstemp's 0600
    assert not [f for f in tmp_path.iterdir() if TMP_MARK in f.name or f.name.endswith(".part")]


def test_write_image_never_replaces_a_protected_file(tmp_path):
    from napari_rrim_sr.io.images import write_image

    src = tmp_path / "in.tif"
    src.write_bytes(b"not really a tiff, but precious")
    for target in _links(tmp_path, src):
        target = target.with_suffix(".tif") if target.suffix != ".tif" else target
        with pytest.raises(OutputError, match="is an input"):
            write_image(target, np.zeros((4, 4), np.uint8), overwrite=True, protect=[src])
    assert src.read_bytes() == b"not really a tiff, but precious"


def test_bundle_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from napari_rrim_sr.io import bundle

    layers = [(np.zeros((8, 8), np.uint8), {"name": "a"}, "image"), (np.ones((8, 8), np.uint8), {"name": "b"}, "image")]
    calls = []
    real = bundle.write_layer_tiff

    def fail_second(path, data, meta=None, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, data, meta, **kw)

    monkeypatch.setattr(bundle, "write_layer_tiff", fail_second)
    with pytest.raises(OutputError, match="no space left"):
        bundle.write_bundle(tmp_path / "new" / "b", layers)
    assert not (tmp_path / "new").exists()  # no half bundle, no empty parent folder
    monkeypatch.setattr(bundle, "write_layer_tiff", real)
    written = bundle.write_bundle(tmp_path / "b", layers)
    assert (tmp_path / "b" / "bundle.json").is_file() and len(written) == 6
    assert [f.name for f in tmp_path.iterdir()] == ["b"]
