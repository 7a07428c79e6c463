"""The built wheel carries the npe2 manifest, its entry point and every shipped weights file."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    pytest.importorskip("hatchling")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    (whl,) = out.glob("napari_rrim_sr-*.whl")
    return whl


def test_wheel_contains_manifest_and_entry_point(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "napari_rrim_sr/napari.yaml" in names
        assert zf.read("napari_rrim_sr/napari.yaml") == (ROOT / "napari.yaml").read_bytes()
        (ep,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = zf.read(ep).decode()
    assert "[napari.manifest]" in text
    assert "napari-rrim-sr = napari_rrim_sr:napari.yaml" in text


def test_wheel_contains_every_shipped_weights_file(wheel):
    shipped = sorted(p.name for p in (ROOT / "weights").iterdir() if p.is_file())
    assert shipped, "weights/ should at least hold its README"
    with zipfile.ZipFile(wheel) as zf:
        inside = {
            n.split("/")[-1]: zf.getinfo(n).file_size for n in zf.namelist() if n.startswith("napari_rrim_sr/weights/")
        }
    for name in shipped:
        assert name in inside, name
        assert inside[name] == (ROOT / "weights" / name).stat().st_size


def test_editable_install_finds_the_root_manifest_and_weights():
    """In a checkout the package reads the root napari.yaml and weights/ (no stale copies)."""
    import napari_rrim_sr
    from napari_rrim_sr.registry.core import shipped_weights_dir

    pkg = Path(napari_rrim_sr.__file__).resolve().parent
    assert (pkg / "napari.yaml").resolve().read_bytes() == (ROOT / "napari.yaml").read_bytes()
    assert shipped_weights_dir().resolve() == (ROOT / "weights").resolve()


def test_wheel_contains_sample_data(wheel):
    samples = ROOT / "src" / "napari_rrim_sr" / "_napari" / "samples"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for p in samples.iterdir():
        assert f"napari_rrim_sr/_napari/samples/{p.name}" in names, p.name
