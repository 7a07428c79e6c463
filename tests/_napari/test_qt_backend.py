"""Issue 24, ecosystem: the extras and the GUI tests use napari's default Qt backend (PyQt6;
napari 0.9 deprecates PyQt5), also where an upgraded environment still has PyQt5."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_extras_ask_for_napari_default_backend():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in ("napari", "testing"):
        napari_reqs = [r for r in extras[name] if r.replace(" ", "").startswith("napari[")]
        assert napari_reqs and all("pyqt6" in r and "pyqt5" not in r for r in napari_reqs), (name, napari_reqs)


@pytest.mark.gui
def test_gui_tests_run_on_pyqt6_when_installed(make_napari_viewer):
    if importlib.util.find_spec("PyQt6") is None:
        pytest.skip("PyQt6 is not installed")
    if os.environ.get("QT_API", "pyqt6").lower() != "pyqt6":
        pytest.skip(f"QT_API={os.environ['QT_API']} asked for explicitly")
    import qtpy

    make_napari_viewer()
    assert qtpy.API_NAME == "PyQt6"
    assert "PyQt5.QtCore" not in sys.modules  # nothing loaded the deprecated backend
