"""bioimage.io (spec 0.5) model packages, built with bioimageio.spec's model description API.

Package content (``OUT.zip``):

* ``rdf.yaml``: the description (written by bioimageio.spec from :class:`ModelDescr`);
* ``weights.pt``: ``pytorch_state_dict`` weights (a plain tensor dict, ``torch.load(weights_only=True)``);
* ``<backbone>_architecture.py``: the architecture, self-contained (:mod:`.standalone`);
* ``weights_torchscript.pt``, ``weights.onnx``: the same network as TorchScript and ONNX;
* ``test_input.npy`` / ``test_output.npy``: a 64x64 crop of a bundled real sample and the
  output of *our engine* on it (``bioimageio test`` reproduces it with every weights format);
* ``cover.png``: LR | bicubic | model on that crop; ``README.md``: the model card.

Normalisation. The engine maps the input's value range ``lo..hi`` (by default the dtype range)
to 0..1, runs the network, maps back and clips to ``lo..hi`` (rounding for integer dtypes). The
zoo's operators are fixed per package, so the package bakes one range (``input_range``, default
0..255: 8-bit data): preprocessing ``scale_linear(gain=1/(hi-lo), offset=-lo/(hi-lo))``,
postprocessing ``scale_linear(gain=hi-lo, offset=lo)`` then ``clip(lo, hi)``. Not expressible:
choosing the range from the dtype at run time, the final rounding to integers (the package's
output is float32, within 0.5 of ours), and the engine's 4-pixel reflect padding at the image
border and its tiling (a consumer runs the network on the whole input or on its own tiles).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_rrim_sr.export.onnx_export import OPSET, onnx_bytes, torchscript_bytes
from napari_rrim_sr.export.standalone import ExportError, architecture_callable, standalone_source

TEST_SIZE = 64
LICENSE = "BSD-3-Clause"
#: the RRIM study's lineage (see docs/architecture.md)
CITATIONS = (
    (
        (
            "Ledig et al. 2017, Photo-realistic single image super-resolution using a generative adversarial "
            "network (SRGAN), CVPR"
        ),
        "10.1109/CVPR.2017.19",
    ),
    (
        "Wang et al. 2018, ESRGAN: Enhanced super-resolution generative adversarial networks, ECCV workshops",
        "10.1007/978-3-030-11021-5_5",
    ),
    (
        "Szegedy et al. 2016, Rethinking the Inception architecture for computer vision (Inception v3), CVPR",
        "10.1109/CVPR.2016.308",
    ),
)
SAMPLES = {1: "nuclei_dsb2018_crop.tif", 3: "landsat7_rgb_crop.tif"}
SAMPLE_NOTES = {
    1: "fluorescence nuclei, 2018 Data Science Bowl (BBBC038), CC0, via stardist's sample data",
    3: "Landsat 7 RGB, U.S. public domain, via rasterio's test data",
}


def _require():
    try:
        import bioimageio.spec  # noqa: F401
        from bioimageio.spec.model import v0_5  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"bioimage.io export needs the 'export' extra (pip install 'napari-rrim-sr[export]'): {exc}"
        ) from None


def sample_crop(channels: int) -> tuple[np.ndarray, str]:
    """A ``TEST_SIZE``-pixel crop (C, H, W) of the bundled sample for ``channels``: of the windows on
    a 32-pixel grid, the one with the most contrast (so the test and the cover show structure, not
    background)."""
    import tifffile

    name = SAMPLES[channels]
    a = tifffile.imread(Path(__file__).resolve().parents[1] / "_napari" / "samples" / name)
    a = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
    h, w = a.shape[-2:]
    windows = [(y, x) for y in range(0, h - TEST_SIZE + 1, 32) for x in range(0, w - TEST_SIZE + 1, 32)]
    y, x = max(windows, key=lambda p: float(a[:, p[0] : p[0] + TEST_SIZE, p[1] : p[1] + TEST_SIZE].std()))
    return np.ascontiguousarray(a[:, y : y + TEST_SIZE, x : x + TEST_SIZE]), f"{name} ({SAMPLE_NOTES[channels]})"


def engine_output(loaded, chw: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Our pipeline's float32 output on ``chw`` under the package's normalisation (untiled, no border pad)."""
    from napari_rrim_sr.engine.normalize import Normalization
    from napari_rrim_sr.pipeline import Source, UpscaleRequest, plan, run

    norm = Normalization(lo, hi, np.dtype(np.float32), "explicit", None, lo, hi)
    x = chw.astype(np.float32)
    img = x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1)
    request = UpscaleRequest(
        Source(img, name="test input", rgb=x.shape[0] == 3),
        model=loaded,
        normalization=norm,
        tile=0,
        overlap=0,
        device="cpu",
        precision="fp32",
        check=False,
    )
    y = run(plan(request)).data
    y = y[None] if y.ndim == 2 else np.moveaxis(y, -1, 0)
    return np.ascontiguousarray(y.astype(np.float32))


def cover_png(chw: np.ndarray, sr: np.ndarray, scale: int, lo: float, hi: float, path: Path) -> None:
    """LR (nearest) | bicubic | model, side by side, cropped to a 2:1 picture."""
    from PIL import Image

    from napari_rrim_sr.engine.api import upscale_bicubic

    x = chw.astype(np.float32)
    bic = upscale_bicubic(x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1), scale)
    bic = bic[None] if bic.ndim == 2 else np.moveaxis(bic, -1, 0)
    lr = np.repeat(np.repeat(x, scale, axis=1), scale, axis=2)
    H = sr.shape[1]
    w = (2 * H) // 3
    x0 = (sr.shape[2] - w) // 2
    panels = [p[:, :, x0 : x0 + w] for p in (lr, bic, sr)]
    sep = np.full((x.shape[0], H, 2), hi, np.float32)
    img = np.concatenate([panels[0], sep, panels[1], sep, panels[2]], axis=2)
    if lo == 0 and x.shape[0] == 1:  # stretch dim fluorescence for display only
        hi = max(float(np.percentile(img, 99.8)), 1.0)
    u8 = np.clip((img - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    Image.fromarray(u8[0] if u8.shape[0] == 1 else np.moveaxis(u8, 0, -1)).save(path)


def model_card(weights_id: str) -> str:
    """The ``### `weights_id``` section of docs/models.md (checkout or packaged copy), or ''."""
    here = Path(__file__).resolve()
    for cand in (here.parents[3] / "docs" / "models.md", here.parents[1] / "docs" / "models.md"):
        if cand.is_file():
            text = cand.read_text(encoding="utf-8")
            m = re.search(
                rf"^### `{re.escape(weights_id)}`\s*$(.*?)(?=^##+ )", text + "\n## end", re.DOTALL | re.MULTILINE
            )
            if m:
                return m.group(1).strip()
    return ""


def _readme(loaded, card: str, sample: str, lo: float, hi: float) -> str:
    s = loaded.scale
    return f"""# {loaded.id}: x{s} super-resolution ({loaded.backbone})

Exported by napari-rrim-sr from the weights `{loaded.id}` (file sha256 `{loaded.sha256}`,
tensors sha256 `{loaded.metadata.get("tensors_sha256", "")}`).

Input: `{loaded.in_channels}` channel(s), any height/width; values in {lo:g}..{hi:g}. Output: {s}x the
height and width, float32 in {lo:g}..{hi:g}. Pre/postprocessing map {lo:g}..{hi:g} to the network's 0..1
and back (scale_linear, clip). napari-rrim-sr itself also pads the border by reflection, tiles large
images and rounds integer outputs; these steps are not part of this package.

Test tensors: a {TEST_SIZE}x{TEST_SIZE} crop of {sample}; the test output is napari-rrim-sr's engine output.

## Model card

{card or loaded.metadata.get("description", "")}

## Validation

`bioimageio test` reproduces `test_output.npy` from `test_input.npy` with each weights format. Validation
metrics of the weights (convention, data): the model card above and napari-rrim-sr's docs/models.md.
"""


def build_package(
    loaded,
    out_zip: Path,
    *,
    input_range: tuple[float, float] = (0.0, 255.0),
    progress: Callable[[str], Any] | None = None,
    registry=None,
) -> Path:
    """Build the package of ``loaded`` at ``out_zip`` (a fresh path; the caller moves it into place)."""
    _require()
    import torch
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as b

    say = progress or (lambda msg: None)
    callable_name = architecture_callable(loaded.backbone)  # refuse before any work
    c, s = loaded.in_channels, loaded.scale
    if c not in SAMPLES or loaded.out_channels != c:
        raise ExportError(f"{loaded.id}: bioimage.io export needs a 1- or 3-channel model with equal in/out channels")
    lo, hi = (float(v) for v in input_range)
    if not hi > lo:
        raise ExportError(f"input range must have lo < hi, got {lo:g}..{hi:g}")
    spec = _backbone_spec(loaded, registry)
    step = max(1, int(getattr(spec, "size_multiple", 1)), loaded.size_multiple)
    min_size = max(step, -(-int(getattr(spec, "min_size", 1)) // step) * step)

    with tempfile.TemporaryDirectory(prefix="rrim-bioimageio-") as tmpdir:
        d = Path(tmpdir)
        say("architecture and weights")
        arch = d / f"{loaded.backbone}_architecture.py"
        # the package is assembled in this private temporary folder, then written atomically
        src_text = standalone_source(loaded.backbone)
        arch.write_text(src_text, encoding="utf-8")  # direct-write: private temporary folder
        torch.save(
            {k: v.detach().cpu().float().contiguous() for k, v in loaded.module.state_dict().items()}, d / "weights.pt"
        )
        say("torchscript")
        ts = torchscript_bytes(loaded)
        (d / "weights_torchscript.pt").write_bytes(ts)  # direct-write: private temporary folder
        say("onnx")
        ox = onnx_bytes(loaded)
        (d / "weights.onnx").write_bytes(ox)  # direct-write: private temporary folder
        say("test tensors")
        chw, sample = sample_crop(c)
        test_in = chw.astype(np.float32)[None]
        test_out = engine_output(loaded, chw, lo, hi)[None]
        np.save(d / "test_input.npy", test_in)
        np.save(d / "test_output.npy", test_out)
        cover_png(chw, test_out[0], s, lo, hi, d / "cover.png")
        readme = _readme(loaded, model_card(loaded.id), sample, lo, hi)
        (d / "README.md").write_text(readme, encoding="utf-8")  # direct-write: private temporary folder

        names = [b.Identifier("gray")] if c == 1 else [b.Identifier(n) for n in ("red", "green", "blue")]
        space_in = [
            b.SpaceInputAxis(id=b.AxisId(a), size=b.ParameterizedSize(min=min_size, step=step), scale=1.0)
            for a in ("y", "x")
        ]
        # spec: size = ref.size * ref.scale / axis.scale; the output pixel is 1/s of the input pixel
        space_out = [
            b.SpaceOutputAxis(
                id=b.AxisId(a), scale=1.0 / s, size=b.SizeReference(tensor_id=b.TensorId("input"), axis_id=b.AxisId(a))
            )
            for a in ("y", "x")
        ]
        span = hi - lo
        inp = b.InputTensorDescr(
            id=b.TensorId("input"),
            description=f"image, values {lo:g}..{hi:g} (the engine's dtype range for this package)",
            axes=[b.BatchAxis(), b.ChannelAxis(channel_names=names), *space_in],
            test_tensor=b.FileDescr(source=d / "test_input.npy"),
            data=b.IntervalOrRatioDataDescr(type="float32", range=(lo, hi)),
            preprocessing=[
                b.EnsureDtypeDescr(kwargs=b.EnsureDtypeKwargs(dtype="float32")),
                b.ScaleLinearDescr(kwargs=b.ScaleLinearKwargs(gain=1.0 / span, offset=0.0 - lo / span + 0.0)),
                b.EnsureDtypeDescr(kwargs=b.EnsureDtypeKwargs(dtype="float32")),
            ],
        )
        outp = b.OutputTensorDescr(
            id=b.TensorId("output"),
            description=f"x{s} super-resolved image, values {lo:g}..{hi:g}",
            axes=[b.BatchAxis(), b.ChannelAxis(channel_names=names), *space_out],
            test_tensor=b.FileDescr(source=d / "test_output.npy"),
            data=b.IntervalOrRatioDataDescr(type="float32", range=(lo, hi)),
            postprocessing=[
                b.ScaleLinearDescr(kwargs=b.ScaleLinearKwargs(gain=span, offset=lo)),
                b.ClipDescr(kwargs=b.ClipKwargs(min=lo, max=hi)),
                b.EnsureDtypeDescr(kwargs=b.EnsureDtypeKwargs(dtype="float32")),
            ],
        )
        torch_version = b.Version(torch.__version__.split("+")[0])
        weights = b.WeightsDescr(
            pytorch_state_dict=b.PytorchStateDictWeightsDescr(
                source=d / "weights.pt",
                architecture=b.ArchitectureFromFileDescr(
                    source=arch, callable=b.Identifier(callable_name), kwargs=_jsonable_kwargs(loaded.hparams)
                ),
                pytorch_version=torch_version,
                comment=f"napari-rrim-sr weights {loaded.id}, file sha256 {loaded.sha256}",
            ),
            torchscript=b.TorchscriptWeightsDescr(
                source=d / "weights_torchscript.pt",
                pytorch_version=torch_version,
                parent="pytorch_state_dict",
                comment="torch.jit.trace",
            ),
            onnx=b.OnnxWeightsDescr(
                source=d / "weights.onnx",
                opset_version=OPSET,
                parent="pytorch_state_dict",
                comment="torch.onnx.export, dynamic batch/height/width",
            ),
        )
        kind = "gray" if c == 1 else "RGB"
        descr = b.ModelDescr(
            name=f"napari-rrim-sr {loaded.id}",
            description=f"x{s} super-resolution of {kind} images with the {loaded.backbone.upper()} generator "
            "(SRGAN/ESRGAN lineage with Inception modules), trained by napari-rrim-sr.",
            authors=[b.Author(name="napari-rrim-sr developers")],
            cite=[b.CiteEntry(text=text, doi=b.Doi(doi)) for text, doi in CITATIONS],
            license=b.LicenseId(LICENSE),
            documentation=b.FileDescr(source=d / "README.md"),
            covers=[b.FileDescr(source=d / "cover.png")],
            tags=[
                "super-resolution",
                "image-restoration",
                "2d",
                "pytorch",
                "napari",
                "fluorescence-light-microscopy" if c == 1 else "rgb",
            ],
            inputs=[inp],
            outputs=[outp],
            weights=weights,
            config=b.Config(napari_rrim_sr=_provenance(loaded)),
        )
        say("writing package")
        save_bioimageio_package(descr, output_path=out_zip)
    return out_zip


def _provenance(loaded) -> dict:
    """The weights' provenance without the exporting machine's local path."""
    prov = dict(loaded.provenance())
    prov.pop("weights_path", None)
    prov["weights_file"] = loaded.path.name if loaded.path else None
    return _jsonable_kwargs(prov)


def _jsonable_kwargs(d) -> dict:
    from napari_rrim_sr.jsonable import jsonable

    return jsonable(dict(d))


def _backbone_spec(loaded, registry=None):
    from napari_rrim_sr.errors import RegistryError
    from napari_rrim_sr.registry.core import get_registry

    try:
        return (registry or get_registry()).backbone(loaded.backbone)
    except RegistryError:
        return None
