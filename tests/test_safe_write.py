"""The one writer: inputs never replaced, atomic, no temporaries left, umask honoured."""

import os
import stat
import subprocess
import sys

import pytest

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
