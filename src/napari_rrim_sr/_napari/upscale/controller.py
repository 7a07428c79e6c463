"""The Upscale widget's controller: plan, run and results, without Qt (tests drive it headless).

The view's values come in as one :class:`FormValues`; for each source layer (or each channel /
band of it, :mod:`napari_rrim_sr._napari.channel_views`) the controller fills one
:class:`napari_rrim_sr.pipeline.UpscaleRequest`, plans it with :func:`napari_rrim_sr.pipeline.plan`
(every ``auto`` resolved there: model, normalisation, including a fine-tuned model's own),
runs all plans as ONE generator (:meth:`UpscaleController.run_iter`, what the widget's single
worker drives: progress per tile or chunk, closing it cancels) and describes the results as
layers to add (:meth:`UpscaleController.result_layers`) and one status line.

Nothing here imports Qt or napari: layers are duck-typed (``data``, ``rgb``, ``ndim``,
``scale``, ``translate``, ``metadata``, ``world_to_data``).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from napari_rrim_sr._napari import channel_views
from napari_rrim_sr.engine.progress import Progress
from napari_rrim_sr.errors import InputError, RRIMError
from napari_rrim_sr.io import geometry as layer_logic
from napari_rrim_sr.registry.interpolation import interpolation_pair

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "FormValues",
    "RegistryWithFiles",
    "ItemProgress",
    "ResultLayer",
    "RunItem",
    "UpscaleController",
    "plain_choice",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: inference backends (the engine decides what "auto" means; openvino needs its extra)
BACKENDS = ("auto", "torch", "openvino")
STORE_MODES = ("new", "resume", "replace")


@dataclass
class FormValues:
    """What the user set in the widget, as plain values (the view reads its controls into it)."""

    weights_id: str | None = None  # the model box (the automatic choice while ``user_model`` is False)
    user_model: bool = False  # picked by hand: run exactly that; False: the planner chooses from the data
    alpha: float | None = None  # PSNR <-> GAN slider (used when the weights have a partner)
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    tile: int = 0  # 0: the engine's default
    normalization: str = "auto"
    percentiles: tuple[float, float] = (0.1, 99.9)
    current_slice: bool = True
    self_ensemble: bool = False
    bicubic: bool = True
    metrics: bool = False
    channels: bool = False  # "leading axis is channels" (when the layer can have it)
    fourth_band: str | None = None  # "alpha" | "band" for a 4-sample layer; None: from the data
    one_set: bool = True  # hide the source, bicubic and earlier results after a run


@dataclass
class RunItem:
    """One planned piece of a run: a request for a layer or one of its channels/bands."""

    request: Any  # pipeline.UpscaleRequest
    layer: Any  # the source layer (to check it still exists, to hide it)
    label: str  # the view's name ("cells", "ixm [C1]")
    layer_extra: dict = field(default_factory=dict)  # display of its result layers (channel colormap…)
    plan: Any = None  # pipeline.Plan (planned in the GUI thread for memory, in the worker for stores)


@dataclass
class ItemProgress(Progress):
    """An engine :class:`~napari_rrim_sr.engine.progress.Progress` of item ``item`` of ``items``."""

    item: int = 0
    items: int = 1


@dataclass
class ResultLayer:
    """One layer to add: ``viewer.add_image(data, **kwargs)``; ``kind`` "rrim" or "bicubic"."""

    data: Any
    kwargs: dict
    kind: str
    item: RunItem


def plain_choice(choice) -> tuple[str, str]:
    """``(sentence, numbers)`` of a model choice: one sentence a microscopist would say, and the
    measured numbers for a tooltip. Uses the choice's own plain ``reason`` and ``details``
    where :class:`~napari_rrim_sr.registry.choice.ModelChoice` has them, else words it here."""
    reason = str(getattr(choice, "reason", "") or "")
    if hasattr(choice, "details"):
        return reason, str(choice.details or reason)
    if getattr(choice, "condition", None) is None:
        return reason, reason
    if getattr(choice, "robust", False):
        text = (
            "The image looks like raw data (noise or pixel-sharp detail), so the model trained on "
            "real, degraded images is used."
        )
    else:
        text = "The image looks clean and smooth, so the model trained on clean images is used."
    return text, reason


class RegistryWithFiles:
    """The registry plus weights files the user loaded without copying (listed by path)."""

    def __init__(self, base, files: dict):
        self._base = base
        self._files = files

    def weights(self, refresh: bool = False):
        return self._base.weights(refresh) + list(self._files.values())

    def find_weights(self, weights_id: str):
        if weights_id in self._files:
            return self._files[weights_id]
        return self._base.find_weights(weights_id)

    def __getattr__(self, name):
        return getattr(self._base, name)


class UpscaleController:
    """Plan, run and describe upscale runs; holds the state the view does not show."""

    def __init__(self, registry_fn=None):
        self._registry_fn = registry_fn
        #: weights files loaded without a copy (listed by path)
        self.file_entries: dict[str, Any] = {}
        #: the user picked a model by hand (else: the automatic choice from the data)
        self.model_touched = False
        #: bytes a lazy layer's result may take in memory; None: half the free memory
        self.memory_budget: int | None = None

    # -- weights -----------------------------------------------------------------------------
    def base_registry(self):
        if self._registry_fn is not None:
            return self._registry_fn()
        from napari_rrim_sr.registry.core import get_registry

        return get_registry()

    def registry(self):
        """The registry, plus the weights files loaded for this session."""
        base = self.base_registry()
        return RegistryWithFiles(base, self.file_entries) if self.file_entries else base

    def entry(self, wid):
        if not wid:
            return None
        try:
            return self.registry().find_weights(wid)
        except RRIMError:
            return None

    def factor(self, wid) -> int:
        e = self.entry(wid)
        return int(e.scale) if e is not None else 4

    # -- layers, channels, the automatic choice ----------------------------------------------
    @staticmethod
    def can_channels(layer) -> bool:
        return layer is not None and not layer.rgb and layer.ndim >= 3

    def channel_mode(self, layer, form: FormValues | None = None) -> str | None:
        """``"samples"`` (4 bands), ``"leading"`` (channel stack) or None, from the form's answers
        (``form`` None: from the data and metadata, for other layers of a batch)."""
        if layer is None:
            return None
        if form is None:
            return channel_views.channel_mode(layer)
        return channel_views.channel_mode(
            layer, fourth_band=form.fourth_band, channels=bool(form.channels and self.can_channels(layer))
        )

    def views(self, layer, form: FormValues | None = None) -> list:
        return channel_views.channel_views(layer, self.channel_mode(layer, form))

    def auto_choice(self, layer, form: FormValues | None, available_ids: Iterable[str]):
        """The automatic choice for ``layer`` as the view shows it (its first channel/band)."""
        from napari_rrim_sr.registry.choice import ModelChoice, choose_for_layer

        ids = list(available_ids)
        views = self.views(layer, form)
        rgb = bool(getattr(views[0], "rgb", False))
        kw = {}
        if len(views) > 1 and "kind" in inspect.signature(choose_for_layer).parameters:
            kw["kind"] = "multiband" if self.channel_mode(layer, form) == "samples" else "microscopy"
        try:
            choice = choose_for_layer(views[0].data, rgb=rgb, available_ids=ids, metadata=layer.metadata, **kw)
        except Exception as exc:  # noqa: BLE001 - a choice never blocks the widget
            log.debug("automatic model choice failed", exc_info=True)
            choice, reason = None, f"could not measure the data ({exc})"
        else:
            reason = choice.reason
        if choice is None or choice.weights_id not in ids:
            wid = layer_logic.preselected_weights(layer.metadata, 3 if rgb else 1, ids, self.base_registry())
            more = f"; using the default for {3 if rgb else 1}-channel data" if choice else ""
            choice = ModelChoice(wid, f"{reason}{more}")
        return choice

    def choice_text(self, choice, shown_id: str | None) -> tuple[str, str]:
        """``(label text, tooltip)`` of the choice line."""
        if choice is None:
            return "", ""
        plain, numbers = plain_choice(choice)
        if self.model_touched:
            auto = choice.weights_id or "none"
            return f"Chosen by you ({shown_id}). Automatic would be {auto}: {plain}", numbers
        return f"Automatic: {plain}", numbers

    @staticmethod
    def details_text(text: str, entry, choice=None, *, kind: str | None = None) -> str:
        """The line below the model box (``text``: the entry described), the model worded for
        the data: a NAIP tile's bands (``kind`` "multiband") or an RGB image (``kind`` "rgb") are
        not "native microscopy". Uses the choice's own wording (``model_text``) when it has one."""
        words = getattr(choice, "model_text", "") if choice is not None else ""
        if words and choice.weights_id == entry.id and entry.description:
            return text.replace(entry.description, words)
        if kind in ("multiband", "rgb"):
            what = "satellite or multiband images" if kind == "multiband" else "photos and RGB images"
            text = text.replace("for native microscopy", f"for native (noisy, pixel-sharp) {what}")
        return text

    # -- output kind of lazy layers -----------------------------------------------------------
    @staticmethod
    def is_lazy(layer) -> bool:
        """A layer whose data is dask/zarr-backed (not already in memory)."""
        data = getattr(layer, "data", None)
        if data is None or isinstance(data, np.ndarray) or getattr(layer, "multiscale", False):
            return False
        return type(data).__module__.startswith(("dask", "zarr"))

    def output_plan(self, layer, form: FormValues) -> tuple[str, str] | None:
        """``("memory" | "store", reason)`` for a lazy source, else None."""
        if layer is None or not self.is_lazy(layer) or layer.rgb:
            return None
        from napari_rrim_sr.pipeline.chunked import plan_output

        shape = tuple(layer.data.shape)
        if form.current_slice and layer_logic.is_stack(layer.ndim):
            shape = shape[-2:]
        return plan_output(shape, layer.data.dtype, self.factor(form.weights_id), budget=self.memory_budget)

    # -- requests and plans --------------------------------------------------------------------
    def _request(self, view, layer, form: FormValues, *, point, model, output, bicubic: bool):
        from napari_rrim_sr.pipeline import Source, UpscaleRequest

        slices, index = "all", {}
        if form.current_slice and layer_logic.is_stack(view.ndim):
            world = point if point is not None else [0.0] * view.ndim
            shape = tuple(view.data.shape)
            index = layer_logic.current_slice_index(shape, view.ndim, view.world_to_data(world))
            slices = "current"
        pair = alpha = None
        ids = [e.id for e in self.registry().weights()]
        wid = form.weights_id if model == "auto" or model is None else model
        found = interpolation_pair(wid, ids) if wid else None
        if found is not None and form.alpha is not None:
            end = 0.0 if wid == found[0] else 1.0
            if abs(float(form.alpha) - end) > 1e-9:  # the slider was moved: interpolate
                pair, alpha = found, float(form.alpha)
        source = Source(
            data=view.data,
            name=view.name,
            rgb=bool(view.rgb),
            metadata=dict(layer.metadata or {}),
            scale=tuple(view.scale),
            translate=tuple(view.translate),
            layer=layer_logic.source_info(view),
        )
        return UpscaleRequest(
            source=source,
            model=model if model is not None else "auto",
            normalization=form.normalization,
            percentiles=tuple(float(p) for p in form.percentiles),
            device=form.device,
            precision=form.precision,
            backend=form.backend,
            tile=int(form.tile) or None,
            self_ensemble=bool(form.self_ensemble),
            bicubic=bicubic,
            metrics=bool(form.metrics),
            slices=slices,
            slice_index=index,
            alpha=alpha,
            pair=pair,
            output=output,
        )

    def items_for(self, layers: list, form: FormValues, *, point=None, current=None) -> list[RunItem]:
        """One :class:`RunItem` per layer (or channel/band) of an in-memory run; checks what can
        be checked without the model (raises :class:`InputError`, one line)."""
        from napari_rrim_sr.pipeline import Output

        if not layers or layers[0] is None:
            raise InputError(
                "No image layer to upscale: open an image (File ▸ Open, or File ▸ "
                "Open Sample ▸ RRIM super-resolution) and pick it as source."
            )
        if not form.weights_id:
            from napari_rrim_sr.pipeline import no_weights_message

            raise InputError(no_weights_message())
        items = []
        for layer in layers:
            if not hasattr(layer, "rgb") or not hasattr(layer, "data"):
                raise InputError(f"'{layer.name}' is not an image layer; Upscale (RRIM x4) works on image layers")
            if getattr(layer, "multiscale", False):
                raise InputError(
                    f"'{layer.name}' is a multiscale (pyramid) layer; open its full-resolution level "
                    "as a plain layer or crop it first"
                )
            mine = layer is current
            for view in self.views(layer, form if mine else None):
                sub = form
                if view is not layer and view.ndim == 2:
                    sub = FormValues(**{**form.__dict__, "current_slice": False})
                model = form.weights_id if form.user_model else "auto"
                req = self._request(
                    view, layer, sub, point=point, model=model, output=Output("memory"), bicubic=form.bicubic
                )
                extra = {}
                if isinstance(view, channel_views.ChannelView):
                    extra = {"colormap": view.colormap, "blending": "additive"}
                    if view.axis == "samples" and view.index == 3:
                        extra["visible"] = False  # NIR over true colour would wash it out
                items.append(RunItem(req, layer, view.name, extra))
                self._check_memory(req, view, form)
        return items

    def _check_memory(self, req, view, form: FormValues) -> None:
        """Refuse a result that cannot fit, in the widget's words ("Current slice only")."""
        from napari_rrim_sr.engine.memory import check_fits_in_memory, output_nbytes

        shape = list(view.data.shape)
        for a in req.slice_index:
            shape[int(a)] = 1
        stack = layer_logic.is_stack(view.ndim) and not req.slice_index
        factor = self.factor(form.weights_id)
        needed = int(output_nbytes(tuple(shape), view.data.dtype, factor) * (2 if req.bicubic else 1) * 1.25)
        what = f"Upscaling all slices of '{view.name}'" if stack else f"Upscaling '{view.name}'"
        check_fits_in_memory(
            needed,
            what,
            suggestion="tick 'Current slice only' or crop the stack"
            if stack
            else "crop the layer first, or open it lazily (dask/zarr) to write an OME-Zarr store",
        )

    def plan_items(self, items: list[RunItem]) -> list[RunItem]:
        """Plan the items of in-memory layers now (model, normalisation…:
        :func:`napari_rrim_sr.pipeline.plan`; errors before anything runs). Items of lazy
        (dask/zarr) layers are planned by :meth:`run_iter`, in the worker: their whole-stack
        statistics read all the data."""
        from napari_rrim_sr.pipeline import plan

        reg = self.registry()
        for it in items:
            if not self.is_lazy(it.layer):
                it.plan = plan(it.request, registry=reg)
        return items

    def store_item(self, layer, form: FormValues, path, mode: str = "new", *, point=None) -> RunItem:
        """The item of a store run: the layer chunk by chunk into the OME-Zarr store ``path``;
        ``mode``: ``"new"``, ``"resume"`` (keep the finished chunks) or ``"replace"``. The
        bicubic comparison is not made (it would not fit in memory either)."""
        from napari_rrim_sr.pipeline import Output

        if mode not in STORE_MODES:
            raise ValueError(f"store mode must be one of {STORE_MODES}, not {mode!r}")
        if not form.weights_id:
            from napari_rrim_sr.pipeline import no_weights_message

            raise InputError(no_weights_message())
        out = Output("store", path=Path(path), resume=mode == "resume", overwrite=mode == "replace")
        model = form.weights_id if form.user_model else "auto"
        req = self._request(layer, layer, form, point=point, model=model, output=out, bicubic=False)
        return RunItem(req, layer, layer.name)

    @staticmethod
    def store_exists(path) -> bool:
        p = Path(path)
        return p.exists() and (not p.is_dir() or any(p.iterdir()))

    # -- run -----------------------------------------------------------------------------------
    def run_iter(self, items: list[RunItem]):
        """Generator of :class:`ItemProgress` over every item (planning stores first, in this
        thread: their statistics read the whole lazy data); returns the ``Result`` list.
        Closing it cancels between tiles/chunks."""
        from dataclasses import asdict

        from napari_rrim_sr.pipeline import plan, run_iter

        n = len(items)
        results = []
        for i, it in enumerate(items):
            yield ItemProgress(0, 0, 0, 0, "starting", item=i, items=n)
            if it.plan is None:
                yield ItemProgress(0, 0, 0, 0, "measuring the data and loading the model", item=i, items=n)
                it.plan = plan(it.request, registry=self.registry())
            gen = run_iter(it.plan)
            try:
                while True:
                    try:
                        p = next(gen)
                    except StopIteration as stop:
                        results.append(stop.value)
                        break
                    yield ItemProgress(**asdict(p), item=i, items=n)
            finally:
                gen.close()
        return results

    # -- results -------------------------------------------------------------------------------
    @staticmethod
    def result_layers(items: list[RunItem], results: list, present: list) -> tuple[list[ResultLayer], list[str]]:
        """``(layers to add, labels of items whose source was deleted during the run)``; per
        item the bicubic comparison first, then the model result."""
        out: list[ResultLayer] = []
        dropped: list[str] = []
        for it, res in zip(items, results):
            if not any(lay is it.layer for lay in present):
                dropped.append(it.label)
                continue
            kinds = (["bicubic"] if res.bicubic is not None else []) + ["rrim"]
            for kind in kinds:
                kw = res.layer_kwargs(kind)
                kw.update(it.layer_extra)
                if getattr(res, "store", None) is not None:  # where the lazy layer's data lives
                    kw["metadata"][layer_logic.META_KEY]["store"] = str(res.store)
                out.append(ResultLayer(res.data if kind == "rrim" else res.bicubic, kw, kind, it))
        return out, dropped

    @staticmethod
    def layers_to_hide(all_layers: list, sources: list, keep: list) -> list:
        """The visible layers to hide after a run so that one comparable set shows (issue 24 #5):
        the sources, and every result of ours made from them, except ``keep`` (the new model
        results). Additive channel layers on top of each other wash out to white."""
        names = {s.name for s in sources}
        keep_ids = {id(k) for k in keep}
        hide = []
        for lay in all_layers:
            if id(lay) in keep_ids or not getattr(lay, "visible", False):
                continue
            rec = (getattr(lay, "metadata", None) or {}).get(layer_logic.META_KEY)
            src = rec.get("source_layer") if isinstance(rec, dict) else None
            if isinstance(src, dict):
                src = src.get("name")
            ours = isinstance(rec, dict) and rec.get("kind") in ("rrim", "bicubic")
            from_source = isinstance(src, str) and any(src == n or src.startswith(n + " [") for n in names)
            if any(lay is s for s in sources) or (ours and from_source):
                hide.append(lay)
        return hide

    @staticmethod
    def summary(rr_names: list[str], bic_names: list[str], results: list, *, dropped=(), hidden=False) -> str:
        """The status line after a run (names as napari gave them: "… RRIM x4 [1]" the second time)."""
        text = f"Added '{rr_names[-1]}'" if len(rr_names) == 1 else f"Added {len(rr_names)} upscaled layers"
        if bic_names:
            text += f" and '{bic_names[-1]}'" if len(bic_names) == 1 else " and their bicubic comparisons"
        last = results[-1]
        text += f" in {sum(r.elapsed_s for r in results):.1f} s ({last.device}, {last.precision})."
        if hidden:
            text += " Hid the source and the bicubic/earlier results (tick their eye to compare)."
        if dropped:
            text += f" Skipped {', '.join(dropped)} (deleted during the run)."
        if last.metrics:
            m, b = last.metrics.get("model", {}), last.metrics.get("bicubic", {})
            if "psnr" in m and "psnr" in b:
                text += f" Self-check PSNR: model {float(m['psnr']):.2f} dB vs bicubic {float(b['psnr']):.2f} dB."
        warns = [w for r in results for w in (r.warnings or [])]
        if warns:
            text += " ⚠ " + warns[0]
        return text

    @staticmethod
    def gui_message(text: str) -> str:
        """A core message worded for the widget (no command-line flags)."""
        return (
            text.replace("use --overwrite to start over", "choose Replace to start over")
            .replace("or --overwrite to start over", "or choose Replace to start over")
            .replace("--overwrite", "Replace")
        )
