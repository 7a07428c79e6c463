"""Export to bioimage.io model packages and ONNX (issue 15).

The package tests run bioimageio.core's own test (``bioimageio test OUT.zip``: validation,
"reproduce test outputs" with every weights format, inference at several sizes) on packages made
from the shipped weights. They need the ``export`` extra and are skipped, with the reason, where
it is missing; the bad-input tests need nothing beyond the core.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "weights"


def _need(*modules):
    for m in modules:
        pytest.importorskip(m, reason=f"{m} is not installed (the 'export' extra)")


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- the self-contained architecture ------------------------------------------------------

TINY = {
    "rrim": {"in_channels": 1, "out_channels": 1, "scale": 4, "num_feat": 8, "num_block": 1},
    "srresnet": {"in_channels": 3, "out_channels": 3, "scale": 4, "num_feat": 8, "num_block": 2, "use_bn": False},
    "rrdbnet": {"in_channels": 3, "out_channels": 3, "scale": 4, "num_feat": 8, "num_block": 1, "num_grow_ch": 4},
}


def test_standalone_strips_the_common_import_in_relative_and_absolute_form():
    """The package relayout makes every import absolute: the copy must still drop the helpers' import."""
    from napari_rrim_sr.export.standalone import ExportError, _strip

    for head in ("from .common import shape_of", "from napari_rrim_sr.models.common import shape_of"):
        lines = _strip(f'"""doc"""\n{head}\nimport torch\n\nX = 1\n', "m")
        assert [line for line in lines if line.strip()] == ["import torch", "X = 1"]
    with pytest.raises(ExportError, match="napari_rrim_sr.models.rrim"):
        _strip("from napari_rrim_sr.models.rrim import RRIM\n", "m")


@pytest.mark.parametrize("backbone", sorted(TINY))
def test_standalone_architecture_imports_and_matches_without_the_project(tmp_path, backbone):
    """The file shipped in packages imports with napari_rrim_sr unimportable and computes what our
    module computes (catches a copy that still imports the project, or drifts from it)."""
    import torch

    from napari_rrim_sr.export.standalone import architecture_callable, standalone_source
    from napari_rrim_sr.registry.core import Registry

    torch.manual_seed(0)
    module = Registry(discover=False).build(backbone, **TINY[backbone]).eval()
    src = tmp_path / f"{backbone}_architecture.py"
    src.write_text(standalone_source(backbone))
    assert "napari_rrim_sr." not in "\n".join(
        line for line in src.read_text().splitlines() if line.lstrip().startswith(("import", "from"))
    )
    torch.save(module.state_dict(), tmp_path / "weights.pt")
    x = torch.rand(1, TINY[backbone]["in_channels"], 12, 20)
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        np.save(tmp_path / "y.npy", module(x).numpy())
    code = textwrap.dedent(f"""
        import importlib.abc, importlib.util, json, sys
        import numpy as np, torch

        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "napari_rrim_sr":
                    raise ImportError("napari_rrim_sr is hidden in this test")
        sys.meta_path.insert(0, Hide())
        spec = importlib.util.spec_from_file_location("arch", {str(src)!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        net = getattr(mod, {architecture_callable(backbone)!r})(**json.loads({json.dumps(TINY[backbone])!r})).eval()
        net.load_state_dict(torch.load({str(tmp_path / "weights.pt")!r}, weights_only=True), strict=True)
        with torch.no_grad():
            y = net(torch.from_numpy(np.load({str(tmp_path / "x.npy")!r}))).numpy()
        ref = np.load({str(tmp_path / "y.npy")!r})
        assert "napari_rrim_sr" not in sys.modules
        print(float(np.abs(y - ref).max()))
    """)
    r = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    # the same float32 computation; one thread there, the suite's threads here: summation order
    # may differ in the last bits (a drifted copy differs by orders of magnitude more)
    assert float(r.stdout.strip().splitlines()[-1]) <= 1e-5


# -- ONNX -----------------------------------------------------------------------------------


def test_onnx_matches_torch_on_a_non_square_input_with_provenance(tmp_path):
    _need("onnx", "onnxruntime")
    import onnx
    import torch

    from napari_rrim_sr.export import export_model
    from napari_rrim_sr.export.onnx_export import OPSET, run_onnx
    from napari_rrim_sr.registry.loading import load_model, read_metadata

    src = SHIPPED / "rrim-x4-gray.safetensors"
    out = export_model(src, "onnx", tmp_path / "gray.onnx")
    loaded = load_model(src)
    x = torch.rand(2, 1, 23, 41, generator=torch.Generator().manual_seed(3))  # not the traced shape
    with torch.no_grad():
        ref = loaded.module(x).numpy()
    y = run_onnx(out, x.numpy())
    assert y.shape == (2, 1, 92, 164)
    assert np.abs(y - ref).max() < 1e-4
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["napari_rrim_sr.weights_sha256"] == _sha(src)
    assert meta["napari_rrim_sr.tensors_sha256"] == read_metadata(src)["tensors_sha256"]
    assert json.loads(meta["napari_rrim_sr.recipe"]) == json.loads(json.dumps(read_metadata(src)["recipe"]))
    assert meta["napari_rrim_sr.weights_id"] == "rrim-x4-gray"
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {OPSET}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, "height", "width"]


# -- bioimage.io ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("weights_id,channels", [("rrim-x4-gray", 1), ("rrim-x4-rgb-psnr", 3)])
def test_bioimageio_package_passes_bioimageio_core_test(tmp_path, weights_id, channels):
    _need("bioimageio.core", "onnx", "onnxruntime")
    import yaml
    from bioimageio.core import test_model

    from napari_rrim_sr.export import export_model
    from napari_rrim_sr.export.bioimageio_export import sample_crop

    src = SHIPPED / f"{weights_id}.safetensors"
    out = export_model(src, "bioimageio", tmp_path / f"{weights_id}.zip")
    summary = test_model(out)
    failed = [d.name for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    names = [d.name for d in summary.details]
    for fmt in ("pytorch_state_dict", "torchscript", "onnx"):
        assert any("Reproduce test outputs" in n and fmt in n for n in names), (fmt, names)

    with zipfile.ZipFile(out) as z:
        files = set(z.namelist())
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        readme = z.read("README.md").decode()
        with z.open("test_input.npy") as fh:
            test_in = np.load(fh)
    assert {
        "rdf.yaml",
        "weights.pt",
        "weights_torchscript.pt",
        "weights.onnx",
        "rrim_architecture.py",
        "test_input.npy",
        "test_output.npy",
        "cover.png",
        "README.md",
    } <= files
    assert rdf["format_version"].startswith("0.5")
    # the real bundled sample (nuclei for gray), not synthetic data
    np.testing.assert_array_equal(test_in[0], sample_crop(channels)[0].astype(np.float32))
    ax_in = {a.get("id", a["type"]): a for a in rdf["inputs"][0]["axes"]}
    ax_out = {a.get("id", a["type"]): a for a in rdf["outputs"][0]["axes"]}
    assert list(ax_in) == list(ax_out) == ["batch", "channel", "y", "x"]
    assert len(ax_in["channel"]["channel_names"]) == channels
    for a in ("y", "x"):
        assert ax_in[a]["size"] == {"min": 1, "step": 1}
        assert ax_out[a]["size"] == {"tensor_id": "input", "axis_id": a, "offset": 0} or ax_out[a]["size"] == {
            "tensor_id": "input",
            "axis_id": a,
        }
        assert ax_in[a].get("scale", 1.0) / ax_out[a]["scale"] == 4
    assert [c["text"].split(" ")[0] for c in rdf["cite"]] == ["Ledig", "Wang", "Szegedy"]
    assert "**Data**" in readme  # the model card from docs/models.md
    assert "weights_path" not in rdf["config"]["napari_rrim_sr"]  # no local path of the exporting machine
    assert rdf["config"]["napari_rrim_sr"]["weights_sha256"] == _sha(src)


# -- bad input ------------------------------------------------------------------------------


def _toy_backbone_plugin():
    from napari_rrim_sr.registry.core import BackboneSpec
    from napari_rrim_sr.registry.hookspecs import hookimpl

    def build(in_channels=1, out_channels=1, scale=4):
        import torch

        return torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, out_channels * scale * scale, 3, 1, 1), torch.nn.PixelShuffle(scale)
        )

    class Plugin:
        @hookimpl
        def napari_rrim_sr_backbones(self):
            return [
                BackboneSpec(
                    id="toy",
                    builder=build,
                    defaults={"in_channels": 1, "out_channels": 1, "scale": 4},
                    description="a plugin backbone with no shippable source",
                )
            ]

    return Plugin()


def test_plugin_backbone_is_refused_for_bioimageio_with_one_line(tmp_path, isolated_registry, capsys):
    from napari_rrim_sr.cli.main import main
    from napari_rrim_sr.registry.loading import save_weights

    isolated_registry.register_plugin(_toy_backbone_plugin(), name="toy-plugin")
    module = isolated_registry.build("toy", in_channels=1, out_channels=1, scale=4)
    w = save_weights(
        tmp_path / "toy.safetensors",
        module,
        backbone="toy",
        hparams={"in_channels": 1, "out_channels": 1, "scale": 4},
        name="toy-x4",
    )
    out = tmp_path / "toy.zip"
    assert main(["export", "--format", "bioimageio", str(w), "-o", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "backbone 'toy'" in err[0] and "self-contained" in err[0], err
    assert not out.exists()


def test_existing_output_is_kept_without_overwrite(tmp_path, tiny_weights_files, capsys):
    from napari_rrim_sr.cli.main import main

    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    for fmt in ("onnx", "bioimageio"):
        rc = main(["export", "--format", fmt, str(tiny_weights_files["tiny-rrim-x4-gray"]), "-o", str(out), "--quiet"])
        assert rc == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "exists" in err[0], err
    assert out.read_bytes() == b"keep me"


def test_output_that_is_the_weights_file_is_refused_even_with_overwrite(tmp_path, tiny_weights_files, capsys):
    from napari_rrim_sr.cli.main import main
    from napari_rrim_sr.errors import OutputError
    from napari_rrim_sr.export import export_model

    src = tiny_weights_files["tiny-rrim-x4-rgb"]
    before = _sha(src)
    link = tmp_path / "alias.safetensors"
    link.symlink_to(src)
    for target in (src, link):
        with pytest.raises(OutputError, match="is an input"):
            export_model(src, "onnx", target, overwrite=True)
        rc = main(["export", "--format", "bioimageio", str(src), "-o", str(target), "--overwrite", "--quiet"])
        assert rc == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is an input" in err[0], err
    assert _sha(src) == before


def test_unknown_format_is_one_clear_error(tmp_path, tiny_weights_files):
    from napari_rrim_sr.export import ExportError, export_model

    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_model(tiny_weights_files["tiny-rrim-x4-gray"], "tflite", tmp_path / "x.tflite")


def test_missing_export_packages_name_the_extra(tmp_path, tiny_weights_files, monkeypatch):
    from napari_rrim_sr.export import ExportError, export_model

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the 'export' extra were not installed
    with pytest.raises(ExportError, match=r"napari-rrim-sr\[export\]"):
        export_model(tiny_weights_files["tiny-rrim-x4-gray"], "onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
