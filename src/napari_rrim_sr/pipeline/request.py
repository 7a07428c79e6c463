"""What the user asked for, in one object: :class:`UpscaleRequest` (source, model, settings, output).

Why one object: the CLI, the widgets, the demo and scripts used to carry the same settings in
three shapes (widget settings -> job -> engine options) and each entry point resolved the
``auto`` values on its own. Now every entry point fills an :class:`UpscaleRequest` and hands it
to :func:`napari_rrim_sr.pipeline.plan`; nothing here is resolved or checked against data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["Output", "Source", "UpscaleRequest"]


@dataclass
class Source:
    """The data to upscale and how it is laid out; ``data`` is only ever read.

    ``data``: numpy, dask or zarr array. ``spatial_axes`` (Y, X) default to the last two (before a
    trailing RGB(A) axis); ``rgb`` None = detect a trailing axis of 3 or 4 samples (``layer`` /
    ``info`` may say). ``layer``: :func:`napari_rrim_sr.io.geometry.source_info` of a napari layer (its
    geometry, colormap, metadata) for the result layers; ``info``: :func:`napari_rrim_sr.io.images.read_image`'s
    info of a file (axes, pixel size) for the written file; ``zarr``: an
    :class:`napari_rrim_sr.io.ngff.Source` when the data is a store opened by :func:`napari_rrim_sr.io.ngff.open_source`.
    """

    data: Any
    name: str = "image"
    axes: str | None = None  # file letters (TIFF "ZYX", "YXS"...) when known
    spatial_axes: tuple[int, int] | None = None
    rgb: bool | None = None
    metadata: dict = field(default_factory=dict)  # the layer's metadata (napari_rrim_sr_weights...)
    scale: tuple[float, ...] | None = None
    translate: tuple[float, ...] | None = None
    path: Path | None = None  # the file or store it came from (never written; recorded)
    layer: dict | None = None
    info: dict | None = None
    zarr: Any = None


@dataclass
class Output:
    """Where the result goes.

    ``kind``: ``"memory"`` (arrays in the :class:`~.result.Result`), ``"files"`` (``path`` and, with
    the bicubic reference, ``bicubic_path``; format from the suffix), ``"store"`` (an OME-Zarr
    store at ``path``, chunk by chunk, resumable) or ``"auto"`` (memory when the result fits in
    the memory budget, else a store at ``path``, see :func:`napari_rrim_sr.pipeline.chunked.plan_output`).
    ``protect``: more paths the command reads (never replaced; the source path and the weights
    file are always protected). ``chunk``/``halo``/``client``/``workers``/``command``/``extra``:
    the store path's settings and provenance fields.
    """

    kind: Literal["memory", "files", "store", "auto"] = "memory"
    path: Path | None = None
    bicubic_path: Path | None = None
    overwrite: bool = False
    resume: bool = False
    protect: tuple = ()
    chunk: int | None = None
    halo: int | None = None
    client: Any = None
    workers: int = 2
    command: str | None = None
    extra: dict = field(default_factory=dict)  # path-specific provenance fields (scheduler...)


@dataclass
class UpscaleRequest:
    """Everything a user chose. ``"auto"`` values are resolved by :func:`~.plan.plan`, once.

    ``model``: ``"auto"`` (from the data, the layer's metadata request, installed weights), a
    weights id, a weights file path or a loaded model. ``normalization``: ``"auto"`` (the data's
    own range, or what the weights' metadata asks, over the whole stack/store at once),
    ``"dtype"``, ``"range"``, ``"percentile"`` (``percentiles``), or a ready
    :class:`~napari_rrim_sr.engine.normalize.Normalization` (used as is: export test data). ``precision``: ``"auto"`` (fp32
    for data with more than 8 significant bits, else the engine's choice), ``fp32``/``bf16``/``fp16``.
    ``backend``: ``"auto"``/``"torch"``/``"openvino"`` (passed to the engine when it knows it).
    ``slices``: ``"all"`` or ``"current"`` (then ``slice_index`` {axis: index}). ``channel_axis``:
    an axis of ``source.data`` whose entries are upscaled one by one, each with its own model
    choice and normalisation. ``fourth_band``: a 4-sample colour image's 4th sample is ``"auto"``
    (classified), ``"alpha"`` or ``"band"``. ``check``: compare the result with the input
    (bicubic x1/scale of the result vs the input: mean shift and PSNR), on by default.
    ``metrics``: the evaluate-protocol self-check of the model on this data (slow; off).
    ``alpha``/``pair``: PSNR <-> GAN network interpolation.
    """

    source: Source
    model: Any = "auto"
    normalization: Any = "auto"
    percentiles: tuple[float, float] = (0.1, 99.9)
    bit_depth: int | None = None
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    threads: int | None = None
    tile: int | None = None
    overlap: int | None = None
    self_ensemble: bool = False
    bicubic: bool = False
    check: bool = True
    metrics: bool = False
    slices: Literal["all", "current"] = "all"
    slice_index: dict = field(default_factory=dict)
    channel_axis: int | None = None
    fourth_band: Literal["auto", "alpha", "band"] = "auto"
    alpha: float | None = None
    pair: tuple[str, str] | None = None
    output: Output = field(default_factory=Output)
