"""Export weights where other tools run models: bioimage.io model packages and ONNX files.

:func:`export_model` is the one entry point (the CLI's ``export`` subcommand and the napari
widget's *Export...* button call it). Needs the ``export`` extra (bioimageio.core, onnx,
onnxruntime); without it a clear :class:`ExportError` names the extra.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_rrim_sr.export.standalone import STANDALONE, ExportError

FORMATS = ("bioimageio", "onnx")
SUFFIXES = {"bioimageio": ".zip", "onnx": ".onnx"}

__all__ = ["FORMATS", "STANDALONE", "ExportError", "export_model"]


def export_model(
    model: Any,
    fmt: str,
    out,
    *,
    overwrite: bool = False,
    progress: Callable[[str], Any] | None = None,
    registry=None,
    input_range: tuple[float, float] = (0.0, 255.0),
) -> Path:
    """Export ``model`` (weights id, weights file, WeightsEntry or LoadedModel) as ``fmt`` to ``out``.

    ``out`` is validated before any work (exists without ``overwrite``, or is the weights file
    itself: refused) and written atomically. ``progress(message)`` is called between steps.
    ``input_range`` is the value range a bioimage.io package maps to the network's 0..1.
    """
    from napari_rrim_sr.registry.loading import LoadedModel, load_model
    from napari_rrim_sr.safe_write import atomic_write, check_target

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    say = progress or (lambda msg: None)
    say("loading weights")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, registry=registry)
    protect = [loaded.path] if loaded.path else []
    out = check_target(out, overwrite=overwrite, protect=protect)
    suffix = SUFFIXES[fmt]
    if out.suffix.lower() != suffix:  # an ONNX file named .zip (or the reverse) misleads every tool
        raise ExportError(f"{out}: --format {fmt} writes a {suffix} file; name the output {out.stem}{suffix}")
    check_exportable(loaded, registry=registry)
    if fmt == "onnx":
        from napari_rrim_sr.export.onnx_export import onnx_bytes

        say("onnx")
        data = onnx_bytes(loaded)
        return atomic_write(out, data, overwrite=overwrite, protect=protect)
    import shutil
    import tempfile

    from napari_rrim_sr.export.bioimageio_export import architecture_callable, build_package

    architecture_callable(loaded.backbone)  # unexportable architecture: refuse before any work
    with tempfile.TemporaryDirectory(prefix="rrim-export-") as tmp:
        built = build_package(
            loaded, Path(tmp) / "package.zip", input_range=input_range, progress=say, registry=registry
        )
        return atomic_write(out, lambda t: shutil.copyfile(built, t), overwrite=overwrite, protect=protect)


def check_exportable(loaded, registry=None) -> None:
    """Refuse, before any work, what no format should carry: a discriminator (a training
    network that does not upscale) and weights holding NaN/Inf (their output would be all NaN;
    ``upscale`` refuses them too). The message names the weights file."""
    import torch

    name = str(loaded.path or loaded.id)
    kind = "generator"
    try:
        from napari_rrim_sr.registry.core import get_registry

        kind = (registry or get_registry()).backbone(loaded.backbone).kind
    except Exception:  # noqa: BLE001 - an in-memory module of an unregistered backbone
        kind = "discriminator" if "discriminator" in str(loaded.backbone).lower() else "generator"
    if kind != "generator":
        raise ExportError(
            f"{name}: holds {loaded.backbone} weights, a {kind} used only in training; it does not "
            "upscale images, so it is not exported (export the generator's weights)"
        )
    bad = [
        k
        for k, v in loaded.module.state_dict().items()
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ExportError(
            f"{name}: weights contain NaN/Inf (in {', '.join(bad[:3])}{more}); the exported model "
            "would output only NaN, so it is not exported"
        )
