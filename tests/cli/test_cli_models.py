"""``python -m napari_rrim_sr models`` and ``--help``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from napari_rrim_sr.cli.main import main
from napari_rrim_sr.registry import core as registry
from napari_rrim_sr.registry.loading import file_sha256, save_weights


@pytest.fixture
def user_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(registry.PLUGINS_ENV, "none")
    registry.reset_registry()
    hp = {"num_feat": 8, "num_block": 1, "in_channels": 1, "out_channels": 1, "scale": 4}
    torch.manual_seed(0)
    module = registry.Registry(discover=False).build("rrim", **hp)
    path = save_weights(
        tmp_path / "gray-test.safetensors",
        module,
        backbone="rrim",
        hparams=hp,
        name="gray-test",
        description="test weights",
    )
    yield path
    registry.reset_registry()


def test_models_json_lists_backbones_and_weights(user_weights, capsys):
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ids = {b["id"]: b for b in data["backbones"]}
    assert {"rrim", "srresnet", "rrdbnet", "srgan-discriminator"} <= set(ids)
    assert ids["rrim"]["source"] == "builtin" and ids["rrim"]["description"]
    (w,) = [w for w in data["weights"] if w["id"] == "gray-test"]
    assert (w["backbone"], w["scale"], w["in_channels"], w["source"]) == ("rrim", 4, 1, "user")
    assert w["sha256"] == file_sha256(user_weights) and w["path"] == str(user_weights)


def test_models_table(user_weights, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "rrim" in out and "gray-test" in out and file_sha256(user_weights) in out


def test_help_everywhere():
    from napari_rrim_sr.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert "models" in sub.choices
    for name in sub.choices:
        r = subprocess.run(
            [sys.executable, "-m", "napari_rrim_sr", name, "--help"], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, (name, r.stderr)
        assert "usage:" in r.stdout
