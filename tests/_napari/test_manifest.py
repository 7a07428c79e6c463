"""The npe2 manifest: valid, and contributing what the README promises."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def manifest():
    from npe2 import PluginManifest

    return PluginManifest.from_file(ROOT / "napari.yaml")


def test_npe2_validate_passes():
    exe = shutil.which("npe2", path=str(Path(sys.executable).parent)) or shutil.which("npe2")
    cmd = [exe, "validate", "napari-rrim-sr"] if exe else [sys.executable, "-m", "npe2", "validate", "napari-rrim-sr"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in (out.stdout + out.stderr).lower()


def test_installed_manifest_is_the_root_one(manifest):
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover(include_npe1=False)
    installed = pm.get_manifest("napari-rrim-sr")
    assert installed.contributions.commands == manifest.contributions.commands


def test_menu_command_under_layers_transform(manifest):
    assert manifest.name == "napari-rrim-sr"
    items = manifest.contributions.menus["napari/layers/transform"]
    (item,) = items
    cmd = next(c for c in manifest.contributions.commands if c.id == item.command)
    assert cmd.title == "Upscale (RRIM x4)"
    assert cmd.python_name == "napari_rrim_sr._napari.menu:upscale_active_layer"


def test_contributions_complete(manifest):
    c = manifest.contributions
    widgets = {w.display_name for w in c.widgets}
    assert widgets == {"Upscale (RRIM x4)", "Super-resolution metrics", "Fine-tune (own data)"}
    assert {s.key for s in c.sample_data} == {"microscopy", "satellite", "photo"}
    (reader,) = c.readers
    assert reader.accepts_directories and "*.tif" in reader.filename_patterns
    writers = {w.command: w for w in c.writers}
    assert writers["napari-rrim-sr.write_image"].filename_extensions == [".tif", ".tiff"]
    assert writers["napari-rrim-sr.write_bundle"].filename_extensions == []


def test_every_python_name_resolves(manifest):
    pytest.importorskip("napari")
    for cmd in manifest.contributions.commands:
        module, _, attr = cmd.python_name.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        assert callable(obj), cmd.python_name
