"""Crafted and malformed weights (issue 13, defects 3 and 4): one WeightsError naming the file
and the problem for every class, nothing allocated from what a file claims, a broken file in the
user folder listed as broken while everything else keeps working."""

from __future__ import annotations

import json
import os
import pickle
import struct
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_rrim_sr.cli.main import main
from napari_rrim_sr.errors import WeightsError
from napari_rrim_sr.registry import core as registry
from napari_rrim_sr.registry.core import Registry
from napari_rrim_sr.registry.file_format import read_header
from napari_rrim_sr.registry.loading import load_model, read_metadata, save_weights

TINY = {"num_feat": 8, "num_block": 1, "in_channels": 1, "out_channels": 1, "scale": 4}


def craft(path, header: dict, data: bytes = b"", *, raw_header: bytes | None = None):
    """A safetensors file with exactly this header and data (no checks: that is the point)."""
    blob = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def f32(n: int, start: int = 0) -> dict:
    return {"dtype": "F32", "shape": [n], "data_offsets": [start, start + 4 * n]}


META = {
    "__metadata__": {
        "napari_rrim_sr": json.dumps(
            {"backbone": "rrim", "scale": 4, "in_channels": 1, "out_channels": 1, "hparams": TINY}
        )
    }
}

# (id, header, data, words the problem must contain)
MALFORMED = [
    ("no-data_offsets", {"a": {"dtype": "F32", "shape": [2]}}, bytes(8), "has no data_offsets"),
    ("no-dtype", {"a": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8), "has no dtype"),
    ("no-shape", {"a": {"dtype": "F32", "data_offsets": [0, 8]}}, bytes(8), "has no shape"),
    ("entry-not-object", {"a": [1, 2, 3]}, b"", "is not an object"),
    ("unknown-dtype", {"a": {"dtype": "F17", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "unknown dtype 'F17'"),
    ("dtype-not-str", {"a": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "unknown dtype 4"),
    ("negative-shape", {"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), "non-negative"),
    ("shape-not-list", {"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, bytes(8), "non-negative"),
    ("bool-shape", {"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4), "non-negative"),
    ("offsets-wrong-type", {"a": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}, bytes(8), "data_offsets"),
    ("offsets-one-int", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [8]}}, bytes(8), "data_offsets"),
    ("offsets-reversed", {"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, bytes(8), "data_offsets"),
    ("size-mismatch", {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), "needs 12 bytes"),
    ("huge-shape", {"a": {"dtype": "F32", "shape": [2**40, 2**20], "data_offsets": [0, 8]}}, bytes(8), "needs"),
    ("overlap", {"a": f32(2), "b": f32(2)}, bytes(16), "overlaps"),
    ("gap", {"a": f32(2), "b": f32(2, 12)}, bytes(20), "gap"),
    ("out-of-file", {"a": f32(2**20)}, bytes(64), "truncated"),
    ("trailing-bytes", {"a": f32(2)}, bytes(12), "not described"),
    (
        "metadata-not-str",
        {"__metadata__": {"napari_rrim_sr": {"backbone": "rrim"}}, "a": f32(2)},
        bytes(8),
        "__metadata__ must map names to strings",
    ),
    ("metadata-not-object", {"__metadata__": [1], "a": f32(2)}, bytes(8), "__metadata__"),
    ("metadata-bad-json", {"__metadata__": {"napari_rrim_sr": "{oops"}, "a": f32(2)}, bytes(8), "not valid JSON"),
    ("metadata-json-list", {"__metadata__": {"napari_rrim_sr": "[1]"}, "a": f32(2)}, bytes(8), "not a JSON object"),
    (
        "metadata-scale-str",
        {"__metadata__": {"napari_rrim_sr": json.dumps({"backbone": "rrim", "scale": "4"})}, "a": f32(2)},
        bytes(8),
        "scale must be a positive integer",
    ),
    (
        "metadata-backbone-not-str",
        {"__metadata__": {"napari_rrim_sr": json.dumps({"backbone": ["rrim"]})}, "a": f32(2)},
        bytes(8),
        "backbone must be a string",
    ),
    (
        "metadata-hparams-list",
        {"__metadata__": {"napari_rrim_sr": json.dumps({"backbone": "rrim", "hparams": [8]})}, "a": f32(2)},
        bytes(8),
        "hparams must be a JSON object",
    ),
    ("header-not-object", [1, 2], b"", "not a JSON object"),
]


#: problems of our metadata entry: the safetensors header itself is valid.
OUR_METADATA = {
    "metadata-bad-json",
    "metadata-json-list",
    "metadata-scale-str",
    "metadata-backbone-not-str",
    "metadata-hparams-list",
}


@pytest.mark.parametrize("case, header, data, problem", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_every_malformed_header_gives_one_weights_error(tmp_path, case, header, data, problem):
    path = craft(tmp_path / "bad.safetensors", header, data)
    reg = Registry(discover=False)
    calls = [read_metadata, lambda p: load_model(p, registry=reg)]
    if case not in OUR_METADATA:
        calls.append(read_header)  # found before our metadata is even parsed
    for call in calls:
        with pytest.raises(WeightsError) as exc:
            call(path)
        assert type(exc.value) is WeightsError
        assert str(path) in str(exc.value) and problem in exc.value.problem, exc.value.problem
        assert "\n" not in str(exc.value)


def test_duplicate_keys_and_non_utf8_header(tmp_path):
    dup = craft(
        tmp_path / "dup.safetensors",
        {},
        bytes(8),
        raw_header=b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
        b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
    )
    with pytest.raises(WeightsError, match="duplicate key 'a'"):
        read_header(dup)
    latin = craft(tmp_path / "latin.safetensors", {}, b"", raw_header=b'{"\xe9": 1}')
    with pytest.raises(WeightsError, match="not UTF-8"):
        read_header(latin)


def _tiny_sd(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return Registry(discover=False).build("rrim", **TINY).state_dict()


@pytest.mark.parametrize(
    "claim", [{"num_feat": 100_000}, {"num_block": 10**6}, {"num_feat": 100_000, "num_block": 10**6}]
)
def test_hparams_contradicting_shapes_fail_fast_without_allocating(tmp_path, claim):
    """Metadata claiming a huge network is refused from the tensor shapes, before any build."""
    sd = _tiny_sd()
    path = tmp_path / "liar.safetensors"
    meta = {"backbone": "rrim", "scale": 4, "in_channels": 1, "out_channels": 1, "hparams": {**TINY, **claim}}
    save_file(sd, str(path), metadata={"napari_rrim_sr": json.dumps(meta)})
    reg = Registry(discover=False)
    built = []
    spec = reg.backbone("rrim")
    object.__setattr__(spec, "builder", lambda **hp: built.append(hp) or (_ for _ in ()).throw(AssertionError))
    reg._backbones = {**reg.backbones(), "rrim": spec}
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as exc:
        load_model(path, registry=reg)
    assert time.perf_counter() - t0 < 2
    assert not built  # not even on the meta device
    msg = exc.value.problem
    assert "contradict the tensor shapes" in msg
    for key, value in claim.items():
        assert f"{key}={value!r} (metadata) but the tensors say {TINY[key]}" in msg


def test_top_level_metadata_contradicting_shapes(tmp_path):
    sd = _tiny_sd()
    path = tmp_path / "rgb-claim.safetensors"
    meta = {"backbone": "rrim", "scale": 4, "in_channels": 3, "out_channels": 3}
    save_file(sd, str(path), metadata={"napari_rrim_sr": json.dumps(meta)})
    with pytest.raises(WeightsError, match=r"in_channels=3 \(metadata\) but the tensors say 1"):
        load_model(path, registry=Registry(discover=False))


def test_wrong_shape_tensor_is_named(tmp_path):
    """Detection passes (first/last convs fine) but an inner tensor has the wrong shape."""
    sd = _tiny_sd()
    key = "body.0.shallow1.fuse.weight"
    sd[key] = torch.zeros(sd[key].shape[0] + 1, *sd[key].shape[1:])
    path = save_weights(tmp_path / "w.safetensors", sd, backbone="rrim", hparams=TINY)
    with pytest.raises(WeightsError, match=rf"1 shape mismatches \(e.g. {key}"):
        load_model(path, registry=Registry(discover=False))


def test_missing_and_integer_tensors_are_named(tmp_path):
    sd = _tiny_sd()
    dropped = [k for k in sd if k.startswith("body.0.middle")]  # in module order
    for k in dropped:
        del sd[k]
    path = save_weights(tmp_path / "m.safetensors", sd, backbone="rrim", hparams=TINY)
    with pytest.raises(WeightsError) as exc:
        load_model(path, registry=Registry(discover=False))
    assert f"{len(dropped)} missing tensors (e.g. {dropped[0]}" in exc.value.problem
    sd = _tiny_sd()
    sd["conv_last.bias"] = sd["conv_last.bias"].to(torch.int32)
    path = save_weights(tmp_path / "i.safetensors", sd, backbone="rrim", hparams=TINY)
    with pytest.raises(WeightsError, match="conv_last.bias is int32, expected floating point"):
        load_model(path, registry=Registry(discover=False))


def test_named_backbone_whose_detector_refuses_names_the_expected_keys(tmp_path):
    """Metadata says rrim (with a huge num_block) but the keys are renamed: no build from the
    file's claims, and the message names the keys an rrim has."""
    sd = {f"renamed.{k}": v for k, v in _tiny_sd().items()}
    path = tmp_path / "renamed.safetensors"
    meta = {"backbone": "rrim", "scale": 4, "in_channels": 1, "out_channels": 1, "hparams": {"num_block": 10**6}}
    save_file(sd, str(path), metadata={"napari_rrim_sr": json.dumps(meta)})
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as exc:
        load_model(path, registry=Registry(discover=False))
    assert time.perf_counter() - t0 < 2
    assert "does not match backbone 'rrim'" in exc.value.problem
    assert "missing tensors (e.g. conv_first.weight" in exc.value.problem
    assert "unexpected tensors (e.g. renamed." in exc.value.problem


def test_unknown_architecture_lists_backbones_and_keys(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({f"layer{i}.weight": torch.zeros(2) for i in range(9)}, str(path))
    with pytest.raises(WeightsError) as exc:
        load_model(path, registry=Registry(discover=False))
    msg = exc.value.problem
    assert "unknown architecture" in msg and "supported: compact, esrgan, rrdbnet, rrim, span, srresnet, swinir" in msg
    assert "layer0.weight" in msg and "(9 in all)" in msg


def test_builder_failure_is_one_weights_error(tmp_path):
    """Metadata hparams of the wrong type for a builder: a WeightsError, not a TypeError."""
    sd = _tiny_sd()
    path = tmp_path / "t.safetensors"
    meta = {"backbone": "srgan-discriminator", "hparams": {"num_feat": "wide"}}
    save_file(sd, str(path), metadata={"napari_rrim_sr": json.dumps(meta)})
    with pytest.raises(WeightsError) as exc:
        load_model(path, registry=Registry(discover=False))
    assert str(path) in str(exc.value) and "srgan-discriminator" in exc.value.problem


class _Evil:
    marker = None

    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".ckpt"])
def test_pickles_that_run_code_are_never_executed(tmp_path, suffix):
    _Evil.marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    with open(path, "wb") as fh:
        pickle.dump({"params_ema": {"conv.weight": _Evil()}}, fh)
    with pytest.raises(WeightsError, match="never unpickled") as exc:
        load_model(path, registry=Registry(discover=False))
    assert str(path) in str(exc.value)
    assert not _Evil.marker.exists()


def test_pth_without_tensors_and_truncated_pth(tmp_path):
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3, "model": {"lr": 0.1}}, empty)
    with pytest.raises(WeightsError, match="no state dict found"):
        load_model(empty, registry=Registry(discover=False))
    good = tmp_path / "good.pth"
    torch.save({"params": _tiny_sd()}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(WeightsError, match="cut.pth: is a damaged or unsupported torch checkpoint"):
        load_model(cut, registry=Registry(discover=False))


# -- defect 3: one broken file must not break the registry, `models` or the default model ---

BROKEN = {
    "no-offsets.safetensors": ({"a": {"dtype": "F32", "shape": [2]}, **META}, bytes(8)),
    "meta-not-str.safetensors": ({"__metadata__": {"napari_rrim_sr": {"backbone": "rrim"}}, "a": f32(2)}, bytes(8)),
    "truncated.safetensors": ({"a": f32(1000), **META}, bytes(40)),
    "incomplete.safetensors": (
        {"__metadata__": {"napari_rrim_sr": json.dumps({"backbone": "rrim"})}, "a": f32(2)},
        bytes(8),
    ),
}


@pytest.fixture
def broken_folder(tmp_path, monkeypatch):
    folder = tmp_path / "user-weights"
    folder.mkdir()
    for name, (header, data) in BROKEN.items():
        craft(folder / name, header, data)
    (folder / "garbage.safetensors").write_bytes(os.urandom(3000))
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "a-folder.safetensors").mkdir()
    torch.manual_seed(0)
    good = save_weights(
        folder / "gray-good.safetensors",
        Registry(discover=False).build("rrim", **TINY),
        backbone="rrim",
        hparams=TINY,
        name="gray-good",
    )
    monkeypatch.setenv(registry.WEIGHTS_DIR_ENV, str(folder))
    monkeypatch.setenv(registry.PLUGINS_ENV, "none")
    registry.reset_registry()
    yield folder, good
    registry.reset_registry()


def test_registry_lists_broken_files_and_keeps_the_rest(broken_folder):
    _folder, _good = broken_folder
    reg = Registry(discover=False)
    assert [e.id for e in reg.weights()] == ["gray-good"]
    broken = {b.path.name: b for b in reg.broken}
    assert set(broken) == set(BROKEN) | {"garbage.safetensors", "empty.safetensors", "a-folder.safetensors"}
    assert all(b.source == "user" and b.problem and "\n" not in b.problem for b in broken.values())
    assert "data_offsets" in broken["no-offsets.safetensors"].problem
    assert "strings" in broken["meta-not-str.safetensors"].problem
    assert "truncated" in broken["truncated.safetensors"].problem
    assert "incomplete metadata" in broken["incomplete.safetensors"].problem
    assert "not a file" in broken["a-folder.safetensors"].problem
    assert reg.default_weights(channels=1).id == "gray-good"
    assert not reg.failed  # plugin failures only


def test_models_command_reports_broken_files(broken_folder, capsys):
    folder, _good = broken_folder
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [w["id"] for w in data["weights"]] == ["gray-good"]
    assert {os.path.basename(b["path"]) for b in data["broken"]} >= set(BROKEN)
    assert all(set(b) == {"path", "problem", "source"} for b in data["broken"])
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "gray-good" in out and "Broken (skipped):" in out
    assert f"{folder / 'no-offsets.safetensors'} (user): corrupt header" in out


def test_upscale_with_the_default_model_ignores_broken_files(broken_folder, tmp_path, capsys):
    from napari_rrim_sr.io.images import read_image, write_image

    src = write_image(tmp_path / "gray.png", (np.arange(12 * 10) % 251).astype(np.uint8).reshape(12, 10))
    out = tmp_path / "out"
    rc = main(["upscale", str(src), "-o", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    up, _ = read_image(out / "gray.png")
    assert up.shape == (48, 40)
