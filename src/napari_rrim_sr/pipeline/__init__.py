"""One request, one plan, one run, one record: the data path of every entry point.

``UpscaleRequest`` (what the user asked) -> :func:`plan` (every ``auto`` resolved once, with
reasons) -> :func:`run` / :func:`run_iter` (memory, files or an OME-Zarr store; progress and
cancel) -> :class:`Result` (arrays, the result-vs-input check, warnings, provenance from
:func:`build_provenance`). Plain Python: no Qt, no napari import.
"""

from napari_rrim_sr.pipeline.check import check_result, check_warnings, model_zero_offset
from napari_rrim_sr.pipeline.plan import (
    Part,
    Plan,
    engine_kwargs,
    load_model_for,
    no_weights_message,
    plan,
    resolve_normalization,
    weight_ids,
    weights_normalization,
)
from napari_rrim_sr.pipeline.provenance import KEYS as PROVENANCE_KEYS
from napari_rrim_sr.pipeline.provenance import build_provenance
from napari_rrim_sr.pipeline.request import Output, Source, UpscaleRequest
from napari_rrim_sr.pipeline.run import Result, run, run_iter

__all__ = [
    "PROVENANCE_KEYS",
    "Output",
    "Part",
    "Plan",
    "Result",
    "Source",
    "UpscaleRequest",
    "build_provenance",
    "check_result",
    "check_warnings",
    "engine_kwargs",
    "load_model_for",
    "model_zero_offset",
    "no_weights_message",
    "plan",
    "resolve_normalization",
    "run",
    "run_iter",
    "weight_ids",
    "weights_normalization",
]
