"""``napari-rrim-sr demo --headless``: writes images and a report, imports no Qt."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

NO_QT = (
    "import sys\n"
    "from napari_rrim_sr.cli.main import main\n"
    "rc = main(sys.argv[1:])\n"
    "qt = sorted(m for m in sys.modules if m.split('.')[0] in ('PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'qtpy', 'napari', 'vispy'))\n"
    "print('QT-MODULES:', qt)\n"
    "sys.exit(rc)\n"
)


def _run(args, env_weights_dir, tmp_path):
    env = dict(
        os.environ,
        NAPARI_RRIM_SR_WEIGHTS_DIR=str(env_weights_dir),
        NAPARI_RRIM_SR_PLUGINS="none",
        QT_QPA_PLATFORM="offscreen",
    )
    return subprocess.run(
        [sys.executable, "-c", NO_QT, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )


def test_headless_demo_writes_report_without_qt(tmp_path, tiny_weights_files):
    weights = tmp_path / "weights"
    weights.mkdir()
    for p in tiny_weights_files.values():
        (weights / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "demo"
    proc = _run(
        ["demo", "--headless", "-o", str(out), "--samples", "microscopy,photo", "--size", "48"], weights, tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "QT-MODULES: []" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert not report["untrained"]
    assert [r["sample"] for r in report["samples"]] == ["microscopy", "photo"]
    micro, photo = report["samples"]
    assert micro["model"]["model_id"] == "tiny-rrim-x4-gray"
    assert photo["model"]["model_id"].startswith("tiny-rrim-x4-rgb")
    assert micro["output_shape"] == [192, 192] and photo["output_shape"] == [192, 192, 3]
    for r in report["samples"]:
        assert set(r["metrics"]) >= {"model", "bicubic", "convention"}
        assert np.isfinite(r["metrics"]["bicubic"]["psnr"])
        assert r["seconds"]["rrim"] > 0 and r["device"]
        for f in r["files"].values():
            assert (out / f).is_file(), f
    md = (out / "report.md").read_text()
    assert "| PSNR (dB) |" in md and "tiny-rrim-x4-gray" in md and "UNTRAINED" not in md
    # the result TIFFs open in napari's reader with provenance
    from napari_rrim_sr.io.bundle import read_layer_tiff

    data, kw, _ = read_layer_tiff(out / "microscopy_rrim_x4.tif")
    assert data.dtype == np.uint16 and data.shape == (192, 192)
    assert kw["metadata"]["napari_rrim_sr"]["model_id"] == "tiny-rrim-x4-gray"
    assert kw["metadata"]["napari_rrim_sr"]["metrics"]["model"]["psnr"] == pytest.approx(
        micro["metrics"]["model"]["psnr"]
    )
    # refuses to overwrite an existing report
    again = _run(["demo", "--headless", "-o", str(out), "--samples", "photo", "--size", "32"], weights, tmp_path)
    assert again.returncode == 1 and "already holds a demo report" in again.stderr


def test_headless_demo_without_weights(tmp_path):
    empty = tmp_path / "none"
    empty.mkdir()
    out = tmp_path / "demo"
    proc = _run(["demo", "--headless", "-o", str(out), "--samples", "microscopy", "--size", "32"], empty, tmp_path)
    assert proc.returncode == 1
    assert "No trained weights" in proc.stderr and "--allow-untrained" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "report.json").exists()

    proc = _run(
        ["demo", "--headless", "-o", str(out), "--samples", "microscopy", "--size", "32", "--allow-untrained"],
        empty,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "RANDOMLY INITIALISED" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["untrained"] and report["samples"][0]["untrained"]
    assert "UNTRAINED" in report["samples"][0]["model"]["model_id"]
    assert "NO TRAINED WEIGHTS" in (out / "report.md").read_text()


def test_demo_cli_help_lists_options():
    from napari_rrim_sr.cli.main import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["demo"].format_help()
    for opt in ("--headless", "--output", "--allow-untrained", "--samples", "--size"):
        assert opt in text


def test_demo_sample_uses_the_weights_its_metadata_suggests(tiny_registry):
    """A sample's metadata can name weights (the Landsat crop names the robust model): used
    when installed, the channel default otherwise; --model overrides both."""
    from napari_rrim_sr.cli import demo
    from napari_rrim_sr.io.geometry import SUGGESTED_WEIGHTS_KEY

    def samples(suggest):
        return {
            "satellite": (None, {"rgb": True, "metadata": {SUGGESTED_WEIGHTS_KEY: suggest}}),
            "photo": (None, {"rgb": True, "metadata": {}}),
            "microscopy": (None, {}),
        }

    default_rgb = tiny_registry.default_weights(3).id
    models, untrained, choices = demo._models(None, samples("tiny-rrim-x4-rgb-gan"), False)
    assert not untrained
    assert models["satellite"].id == "tiny-rrim-x4-rgb-gan" != default_rgb
    assert "metadata" in choices["satellite"].reason
    assert models["photo"].id == default_rgb and models["microscopy"].id == "tiny-rrim-x4-gray"
    assert demo._models(None, samples("not-installed"), False)[0]["satellite"].id == default_rgb
    forced = demo._models("tiny-rrim-x4-rgb", samples("tiny-rrim-x4-rgb-gan"), False)[0]
    assert forced["satellite"].id == forced["photo"].id == "tiny-rrim-x4-rgb"


def test_native_samples_suggest_the_robust_models():
    from napari_rrim_sr._napari.sample_data import microscopy, photo, satellite
    from napari_rrim_sr.io.geometry import SUGGESTED_WEIGHTS_KEY, suggested_weights

    ((_, kw, _),) = microscopy()
    assert kw["metadata"][SUGGESTED_WEIGHTS_KEY] == "rrim-x4-gray-real"
    ((_, kw_photo, _),) = photo()
    assert SUGGESTED_WEIGHTS_KEY not in kw_photo["metadata"]  # a clean photo: the default
    ((_, kw, _),) = satellite()
    assert kw["metadata"][SUGGESTED_WEIGHTS_KEY] == "rrim-x4-rgb-real"
    assert suggested_weights(kw["metadata"], ["rrim-x4-rgb-psnr", "rrim-x4-rgb-real"]) == "rrim-x4-rgb-real"
    assert suggested_weights(kw["metadata"], ["rrim-x4-rgb-psnr"]) is None
    assert suggested_weights(None, ["rrim-x4-rgb-real"]) is None
