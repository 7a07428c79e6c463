"""Shared fixtures: tiny randomly initialised weights contributed through the plugin hooks.

No trained weights are needed (or used) by the tests: ``tiny_registry`` points the user weights
folder at an empty directory, disables third-party plugin discovery
(``NAPARI_RRIM_SR_PLUGINS=none``) and registers a test plugin whose
``napari_rrim_sr_weights`` hook contributes small RRIMs (8 features, 1 block):

* ``tiny-rrim-x4-gray`` (1 -> 1 channels), ``tiny-rrim-x4-rgb`` (3 -> 3);
* ``tiny-rrim-x4-rgb-psnr`` / ``tiny-rrim-x4-rgb-gan``: a pair of the same backbone (for the
  network-interpolation slider).

The shipped weights in ``weights/`` are hidden from every test (``NAPARI_RRIM_SR_SHIPPED_WEIGHTS=0``,
set here for the whole session and inherited by subprocesses) so that defaults resolve to the
tiny test weights; ``tests/registry/test_shipped_weights.py`` turns them back on to test them. Nothing
else here is autouse.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from napari_rrim_sr.registry.hookspecs import hookimpl

os.environ["NAPARI_RRIM_SR_SHIPPED_WEIGHTS"] = "0"
# OpenVINO conversions and compiled models (issue 25) go to a folder of this test session, not
# the user's cache (inherited by subprocesses)
os.environ.setdefault("NAPARI_RRIM_SR_CACHE_DIR", tempfile.mkdtemp(prefix="rrim-test-cache-"))


def _prefer_pyqt6() -> None:
    """Test under napari's default Qt backend (PyQt6) where it is installed, even when PyQt5 is
    there too (an environment upgraded from the old extras): qtpy would pick PyQt5 first and
    pytest-qt PySide/PyQt in its own order. An explicit QT_API / PYTEST_QT_API wins. Runs before
    anything imports Qt (this conftest is loaded before the tests are collected)."""
    import importlib.util

    if importlib.util.find_spec("PyQt6") is None:
        return
    os.environ.setdefault("QT_API", "pyqt6")
    os.environ.setdefault("PYTEST_QT_API", os.environ["QT_API"])


_prefer_pyqt6()

TINY_HP = {"num_feat": 8, "num_block": 1, "scale": 4}
TINY_IDS = ("tiny-rrim-x4-gray", "tiny-rrim-x4-rgb", "tiny-rrim-x4-rgb-psnr", "tiny-rrim-x4-rgb-gan")


def _make_tiny_weights(folder: Path) -> dict[str, Path]:
    import torch

    from napari_rrim_sr.registry.core import Registry
    from napari_rrim_sr.registry.loading import save_weights

    reg = Registry(discover=False)
    out = {}
    for i, wid in enumerate(TINY_IDS):
        ch = 1 if wid.endswith("gray") else 3
        torch.manual_seed(1234 + i)
        hp = dict(TINY_HP, in_channels=ch, out_channels=ch)
        module = reg.build("rrim", **hp)
        out[wid] = save_weights(
            folder / f"{wid}.safetensors",
            module,
            backbone="rrim",
            hparams=hp,
            name=wid,
            description=f"randomly initialised test RRIM ({ch} channel{'s' if ch > 1 else ''})",
        )
    return out


@pytest.fixture(scope="session")
def tiny_weights_files(tmp_path_factory) -> dict[str, Path]:
    """``{weights id: path}`` of the tiny test weights (written once per session)."""
    return _make_tiny_weights(tmp_path_factory.mktemp("tiny-weights"))


@pytest.fixture
def isolated_registry(tmp_path, monkeypatch):
    """A fresh process-wide registry that sees no user weights and no third-party plugins."""
    from napari_rrim_sr.registry import core as registry

    empty = tmp_path / "user-weights"
    empty.mkdir()
    monkeypatch.setenv(registry.WEIGHTS_DIR_ENV, str(empty))
    monkeypatch.setenv(registry.PLUGINS_ENV, "none")
    registry.reset_registry()
    yield registry.get_registry()
    registry.reset_registry()


class _TinyWeightsPlugin:
    """A plugin object contributing weights through the same hook a package would use."""

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths]

    @hookimpl
    def napari_rrim_sr_weights(self):
        return list(self.paths)


@pytest.fixture
def tiny_registry(isolated_registry, tiny_weights_files):
    """The isolated registry with the tiny weights registered by the ``test-weights`` plugin."""
    plugin = _TinyWeightsPlugin(tiny_weights_files.values())
    isolated_registry.register_plugin(plugin, name="test-weights")
    assert {e.id for e in isolated_registry.weights()} >= set(TINY_IDS)
    return isolated_registry


# -- the device of the device-parametrised tests (tests/engine/test_device.py) ---------------------------

DEVICE_ENV = "RRIM_TEST_DEVICE"


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default=None,
        metavar="DEV",
        help=f"device of the device tests: cpu (default, or ${DEVICE_ENV}), cuda, cuda:N, mps",
    )


@pytest.fixture(scope="session")
def test_device(request) -> str:
    """``--device`` or ``$RRIM_TEST_DEVICE`` (default cpu); skips when that device is not there."""
    dev = request.config.getoption("--device") or os.environ.get(DEVICE_ENV) or "cpu"
    if dev.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"device {dev} asked for, but CUDA is not available")
    elif dev == "mps":
        from napari_rrim_sr.engine.devices import mps_available

        if not mps_available():
            pytest.skip("device mps asked for, but MPS is not available")
    return dev
