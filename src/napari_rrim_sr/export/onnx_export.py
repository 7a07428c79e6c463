"""ONNX and TorchScript serialisations of a loaded generator (no Qt, no bioimage.io).

The ONNX graph maps ``(N, C, H, W)`` float32 in 0..1 to ``(N, C, s*H, s*W)`` with dynamic
batch, height and width; the weights' provenance (id, file and tensors sha256, recipe) is
stored in the model's ``metadata_props`` so an ``.onnx`` file found on disk says what it is.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from napari_rrim_sr.export.standalone import ExportError
from napari_rrim_sr.jsonable import jsonable

#: ONNX opset written (Conv, LeakyRelu, DepthToSpace: supported by every current runtime)
OPSET = 17


def _example(loaded, size: int = 16):
    import torch

    return torch.rand(1, loaded.in_channels, size, max(size, 1) + 8, generator=torch.Generator().manual_seed(0))


def provenance_metadata(loaded) -> dict[str, str]:
    """Flat string metadata (ONNX ``metadata_props``) describing the weights exported."""
    meta = loaded.metadata or {}
    prov = loaded.provenance()
    return {
        "napari_rrim_sr.weights_id": str(loaded.id),
        "napari_rrim_sr.backbone": str(loaded.backbone),
        "napari_rrim_sr.hparams": json.dumps(jsonable(loaded.hparams), sort_keys=True),
        "napari_rrim_sr.weights_sha256": str(loaded.sha256 or ""),
        "napari_rrim_sr.tensors_sha256": str(prov.get("tensors_sha256") or ""),
        "napari_rrim_sr.recipe": json.dumps(jsonable(meta.get("recipe") or {}), sort_keys=True),
        "napari_rrim_sr.scale": str(loaded.scale),
        # any height/width runs (padding is part of the graph); multiples of this need no padding
        "napari_rrim_sr.size_multiple": str(loaded.size_multiple),
        "napari_rrim_sr.value_range": "input and output float32 in 0..1 (the engine clips the output)",
        "napari_rrim_sr.opset": str(OPSET),
    }


def onnx_bytes(loaded, opset: int = OPSET) -> bytes:
    """The ONNX model (with provenance metadata) of ``loaded``'s module, in fp32 on CPU."""
    try:
        import onnx
        import torch
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs the 'export' extra (pip install 'napari-rrim-sr[export]'): {exc}"
        ) from None
    import copy
    import io

    module = copy.deepcopy(loaded.module).float().cpu().eval()  # never touch the caller's module
    buf = io.BytesIO()
    dyn = {
        "input": {0: "batch", 2: "height", 3: "width"},
        "output": {0: "batch", 2: f"height_x{loaded.scale}", 3: f"width_x{loaded.scale}"},
    }
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
            torch.onnx.export(
                module,
                (_example(loaded),),
                buf,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes=dyn,
                opset_version=opset,
                dynamo=False,
            )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(
            f"{loaded.id}: torch could not export backbone {loaded.backbone!r} to ONNX: {first}"
        ) from None
    proto = onnx.load_from_string(buf.getvalue())
    del proto.metadata_props[:]
    for key, value in provenance_metadata(loaded).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "napari-rrim-sr"
    proto.doc_string = f"{loaded.id}: x{loaded.scale} super-resolution ({loaded.backbone}); input/output 0..1"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def torchscript_bytes(loaded) -> bytes:
    """A traced TorchScript module (shape-generic: the generators have no size-dependent branches)."""
    import copy
    import io

    import torch

    module = copy.deepcopy(loaded.module).float().cpu().eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, _example(loaded))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"{loaded.id}: torch could not trace backbone {loaded.backbone!r}: {first}") from None
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return buf.getvalue()


def run_onnx(path_or_bytes: Any, x):
    """Run an exported ONNX model with ONNX Runtime on CPU (tests, and a quick check for users)."""
    import onnxruntime as ort

    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]
