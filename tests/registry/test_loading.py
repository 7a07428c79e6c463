"""Weights I/O: bit-exact safetensors round trips, safe .pth loading, clear errors."""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from napari_rrim_sr.errors import WeightsError
from napari_rrim_sr.registry.core import WEIGHTS_DIR_ENV, Registry, entry_from_file
from napari_rrim_sr.registry.loading import (
    file_sha256,
    load_model,
    load_state_dict,
    read_metadata,
    save_weights,
)

TINY = {"num_feat": 8, "num_block": 1, "in_channels": 3, "out_channels": 3, "scale": 4}


@pytest.fixture
def reg():
    return Registry(discover=False)


@pytest.fixture
def tiny_rrim(reg):
    torch.manual_seed(0)
    return reg.build("rrim", **TINY)


def test_safetensors_round_trip_is_bit_exact(tmp_path, tiny_rrim, reg):
    path = save_weights(
        tmp_path / "m.safetensors",
        tiny_rrim,
        backbone="rrim",
        hparams=TINY,
        name="tiny",
        metrics={"psnr": 1.0},
        recipe={"steps": 3},
    )
    loaded = load_model(path, registry=reg)
    ref = tiny_rrim.state_dict()
    got = loaded.module.state_dict()
    assert set(ref) == set(got)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert loaded.backbone == "rrim" and loaded.scale == 4 and loaded.id == "tiny"
    assert loaded.sha256 == file_sha256(path)
    meta = read_metadata(path)
    assert meta["metrics"] == {"psnr": 1.0} and meta["recipe"] == {"steps": 3}
    assert meta["hparams"]["num_feat"] == 8 and len(meta["tensors_sha256"]) == 64
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        assert torch.equal(tiny_rrim.eval()(x), loaded.module(x))


def test_fp16_storage_loads_as_fp32(tmp_path, tiny_rrim, reg):
    path = save_weights(tmp_path / "h.safetensors", tiny_rrim, backbone="rrim", hparams=TINY, dtype="fp16")
    sd, _ = load_state_dict(path)
    for k, v in tiny_rrim.state_dict().items():
        assert sd[k].dtype == torch.float32
        assert torch.equal(sd[k], v.half().float())
    assert os.path.getsize(path) < sum(v.numel() * 4 for v in sd.values())


def test_save_refuses_to_overwrite(tmp_path, tiny_rrim):
    path = save_weights(tmp_path / "a.safetensors", tiny_rrim, backbone="rrim", hparams=TINY)
    before = file_sha256(path)
    with pytest.raises(WeightsError, match="exists"):
        save_weights(path, torch.nn.Linear(2, 2), backbone="rrim", hparams=TINY)
    assert file_sha256(path) == before


def test_rrdbnet_public_pth_layout_loads_unchanged(tmp_path, reg):
    """A user's ESRGAN/Real-ESRGAN checkpoint: params_ema wrapper, 'module.' prefixes, .pth."""
    hp = {"num_feat": 8, "num_block": 2, "num_grow_ch": 4, "in_channels": 3, "out_channels": 3, "scale": 4}
    torch.manual_seed(1)
    model = reg.build("rrdbnet", **hp).eval()
    sd = model.state_dict()
    assert "body.0.rdb1.conv1.weight" in sd and "conv_up2.weight" in sd and "conv_hr.weight" in sd
    path = tmp_path / "RealESRGAN_x4plus_tiny.pth"
    torch.save({"params_ema": {f"module.{k}": v for k, v in sd.items()}}, path)
    loaded = load_model(path, registry=reg)
    assert loaded.backbone == "rrdbnet"
    assert loaded.hparams["num_block"] == 2 and loaded.hparams["num_grow_ch"] == 4
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.module(x))
    # same tensors as safetensors without metadata: detected too
    st = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    assert load_model(st, registry=reg).backbone == "rrdbnet"


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_pickled_code_is_never_executed(tmp_path, reg):
    _Evil.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": _Evil()}, fh)
    with pytest.raises(WeightsError, match="never unpickled") as exc:
        load_model(path, registry=reg)
    assert str(path) in str(exc.value)
    assert not _Evil.marker.exists()
    # an object that is not a plain tensor container is refused as well
    other = tmp_path / "ns.pth"
    torch.save({"args": argparse.Namespace(a=1)}, other)
    with pytest.raises(WeightsError, match="never unpickled"):
        load_model(other, registry=reg)


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p, good: p.write_bytes(b""), "empty"),
        (lambda p, good: p.write_bytes(os.urandom(4096)), "not a safetensors file"),
        (lambda p, good: p.write_bytes(good.read_bytes()[: good.stat().st_size // 2]), "truncated"),
        (lambda p, good: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"), "not a safetensors file"),
    ],
    ids=["empty", "garbage", "truncated", "bad-header"],
)
def test_corrupt_files_give_one_clear_error(tmp_path, tiny_rrim, reg, make, problem):
    good = save_weights(tmp_path / "good.safetensors", tiny_rrim, backbone="rrim", hparams=TINY)
    bad = tmp_path / "bad.safetensors"
    make(bad, good)
    with pytest.raises(WeightsError) as exc:
        load_model(bad, registry=reg)
    assert problem in str(exc.value) and str(bad) in str(exc.value)


def test_mismatched_backbone_or_shapes(tmp_path, tiny_rrim, reg):
    path = save_weights(tmp_path / "r.safetensors", tiny_rrim, backbone="rrim", hparams=TINY)
    with pytest.raises(WeightsError, match="does not match backbone 'srresnet'"):
        load_model(path, registry=reg, backbone="srresnet", hparams={"num_feat": 8, "num_block": 1})
    lying = save_weights(tmp_path / "lying.safetensors", tiny_rrim, backbone="rrim", hparams={**TINY, "num_feat": 16})
    # metadata hparams that contradict the tensors are refused before any build (issue 13)
    with pytest.raises(WeightsError, match=r"contradict the tensor shapes \(num_feat=16 \(metadata\)"):
        load_model(lying, registry=reg)
    unknown_bb = save_weights(tmp_path / "u.safetensors", tiny_rrim, backbone="no-such-net", hparams=TINY)
    with pytest.raises(WeightsError, match="unknown backbone 'no-such-net'"):
        load_model(unknown_bb, registry=reg)


def test_unknown_architecture_and_format(tmp_path, reg):
    path = tmp_path / "random.safetensors"
    save_file({"foo.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(WeightsError, match="unknown architecture"):
        load_model(path, registry=reg)
    npz = tmp_path / "w.npz"
    npz.write_bytes(b"PK")
    with pytest.raises(WeightsError, match="unknown weights format"):
        load_model(npz, registry=reg)
    with pytest.raises(WeightsError, match="no such file"):
        load_model(tmp_path / "missing.safetensors", registry=reg)


def test_registry_lists_user_weights_and_skips_bad_ones(tmp_path, tiny_rrim, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    save_weights(
        tmp_path / "my-model.safetensors", tiny_rrim, backbone="rrim", hparams=TINY, name="my-model", description="mine"
    )
    (tmp_path / "broken.safetensors").write_bytes(b"junk")
    reg = Registry(discover=False)
    entries = [e for e in reg.weights() if e.source == "user"]
    assert [e.id for e in entries] == ["my-model"]
    e = entries[0]
    assert (e.backbone, e.scale, e.in_channels, e.out_channels) == ("rrim", 4, 3, 3)
    assert e.sha256 == file_sha256(tmp_path / "my-model.safetensors")
    # broken files are kept apart from plugin failures (issue 13), with their one-line problem
    assert [b.path.name for b in reg.broken] == ["broken.safetensors"] and not reg.failed
    assert load_model("my-model", registry=reg).id == "my-model"
    assert entry_from_file(tmp_path / "my-model.safetensors", "user").description == "mine"


def test_plugin_contributed_weights(tmp_path, tiny_rrim, monkeypatch):
    from napari_rrim_sr.registry.hookspecs import hookimpl

    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "empty"))
    path = save_weights(tmp_path / "plug.safetensors", tiny_rrim, backbone="rrim", hparams=TINY, name="plugin-model")

    class WeightsPlugin:
        @hookimpl
        def napari_rrim_sr_weights(self):
            return [path]

    reg = Registry(discover=False)
    reg.register_plugin(WeightsPlugin(), name="weights-plugin")
    entry = reg.find_weights("plugin-model")
    assert entry.source == "weights-plugin"
    assert reg.default_weights(channels=3).id == "plugin-model"


def test_saved_weights_follow_the_umask_and_leave_no_temporaries(tmp_path, tiny_rrim):
    """Issue 13: weights were written 0600 (mkstemp); they go through safe_write.atomic_write now."""
    old = os.umask(0o022)
    try:
        path = save_weights(tmp_path / "p.safetensors", tiny_rrim, backbone="rrim", hparams=TINY)
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"]
    with pytest.raises(Exception, match="is an input"):
        save_weights(path, tiny_rrim, backbone="rrim", hparams=TINY, overwrite=True, protect=[path])


def test_install_refuses_a_name_that_is_not_a_file_name(tmp_path, tiny_rrim, monkeypatch):
    from napari_rrim_sr.registry import core as registry
    from napari_rrim_sr.registry.loading import install_weights

    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "user"))
    monkeypatch.setenv(registry.PLUGINS_ENV, "none")
    registry.reset_registry()
    try:
        evil = save_weights(tmp_path / "e.safetensors", tiny_rrim, backbone="rrim", hparams=TINY, name="../escaped")
        with pytest.raises(WeightsError, match="not a plain file name"):
            install_weights(evil)
        assert not (tmp_path / "escaped.safetensors").exists()
        good = save_weights(tmp_path / "g.safetensors", tiny_rrim, backbone="rrim", hparams=TINY, name="mine")
        dest = install_weights(good)
        assert dest == tmp_path / "user" / "mine.safetensors" and file_sha256(dest) == file_sha256(good)
        assert install_weights(good) == dest  # same content again: nothing to do
    finally:
        registry.reset_registry()
