"""Fixtures of the pipeline tests: the shipped weights (for results checked against their
input: random tiny weights do not keep intensities) and the shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
IMG2D = DATA / "microscopy" / "stardist_samples" / "img2d.tif"
KODAK = DATA / "val" / "Kodak24" / "kodim23.png"


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """The shipped weights visible (the root conftest hides them), nothing else."""
    from napari_rrim_sr.engine import api as engine
    from napari_rrim_sr.registry import core as registry

    empty = tmp_path / "user"
    empty.mkdir()
    monkeypatch.setenv(registry.SHIPPED_ENV, "1")
    monkeypatch.setenv(registry.WEIGHTS_DIR_ENV, str(empty))
    monkeypatch.setenv(registry.PLUGINS_ENV, "none")
    registry.reset_registry()
    engine.clear_cache()
    yield registry.get_registry()
    registry.reset_registry()
    engine.clear_cache()


def dim_uint16(n: int = 32) -> np.ndarray:
    """Dim 16-bit microscopy (values 0..~235 in uint16): a crop of stardist's img2d.tif."""
    import tifffile

    if not IMG2D.exists():
        pytest.skip("../shared/data not available")
    a = tifffile.imread(IMG2D)
    return np.ascontiguousarray(a[200 : 200 + n, 200 : 200 + n])


def rgb_photo(n: int = 32) -> np.ndarray:
    from PIL import Image

    if not KODAK.exists():
        pytest.skip("../shared/data not available")
    a = np.asarray(Image.open(KODAK).convert("RGB"))
    return np.ascontiguousarray(a[200 : 200 + n, 300 : 300 + n])


def assert_keeps_mean(inp: np.ndarray, out: np.ndarray, *, rgb: bool = False) -> None:
    """The result keeps the input's mean within 5 % of that mean and 2 % of its range."""
    a = np.asarray(inp, np.float64)
    b = np.asarray(out, np.float64)
    if rgb:
        a, b = a[..., :3], b[..., :3]
    shift = abs(b.mean() - a.mean())
    rng = float(a.max() - a.min()) or 1.0
    assert shift <= 0.05 * abs(a.mean()) and shift <= 0.02 * rng, (a.mean(), b.mean(), rng)
