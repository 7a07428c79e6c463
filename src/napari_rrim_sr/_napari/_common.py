"""What both dock widgets share: worker plumbing, layer lists, weights lists, progress text.

Only wiring lives here (Qt, napari); every rule that the CLI also needs is in the core
(:mod:`napari_rrim_sr.pipeline`, :mod:`napari_rrim_sr.registry.choice`, :mod:`napari_rrim_sr.io.geometry`).
"""

from __future__ import annotations

import logging
import traceback
import weakref
from dataclasses import dataclass
from pathlib import Path

from magicgui.widgets import Container, Label
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QObject, Signal

from napari_rrim_sr._napari.upscale.progress_text import ProgressText, eta_text  # noqa: F401 - Qt-free; the metrics widget shows it
from napari_rrim_sr.errors import RRIMError
from napari_rrim_sr.io import geometry as L

log = logging.getLogger(__name__)


def notify_error(msg: str) -> None:
    """A notification (tests replace :func:`show_error` here to record them)."""
    show_error(msg)


def notify_info(msg: str) -> None:
    show_info(msg)


@dataclass
class Failure:
    """An exception caught in a worker thread (superqt swallows RuntimeErrors, e.g. CUDA OOM,
    as "worker deleted" warnings, so the worker returns failures instead of raising them)."""

    exc: BaseException
    traceback: str


def drive(gen):
    """Worker body: run ``gen`` to its return value; never raise."""
    try:
        return (yield from gen)
    except Exception as exc:  # noqa: BLE001 - reported to the user in the GUI thread
        release_memory()
        return Failure(exc, traceback.format_exc())


def release_memory() -> None:
    try:
        from napari_rrim_sr.engine.devices import release_memory as _release

        _release(None)
    except Exception:  # pragma: no cover - best effort
        log.debug("could not release device memory", exc_info=True)


def registry():
    from napari_rrim_sr.registry.core import get_registry

    return get_registry()


def image_layers(viewer) -> list:
    return [lay for lay in viewer.layers if isinstance(lay, Image)]


def is_our_result(layer) -> bool:
    """A layer this plugin made (an RRIM/bicubic result or an error map): never offered as a
    source to upscale or self-check (it would be our output fed back as if it were data)."""
    rec = (getattr(layer, "metadata", None) or {}).get(L.META_KEY)
    return isinstance(rec, dict) and rec.get("kind") in ("rrim", "bicubic", "error_map")


class ScrollableContainer(Container):
    """A magicgui ``Container(scrollable=True)`` whose ``native`` is its QScrollArea.

    Why: napari docks ``widget.native``; for a scrollable magicgui container that is the inner
    widget, so the scroll area would be dropped and a tall widget pushes its buttons off the
    screen (issue 19 #5). Docking the scroll area keeps it scrolling.
    """

    def __init__(self, **kwargs):
        super().__init__(scrollable=True, **kwargs)
        inner = self.root_native_widget.widget()
        if inner is not None and inner.layout() is not None:
            inner.layout().addStretch(1)  # pack the controls at the top (compact), not spread out

    @property
    def native(self):
        return self.root_native_widget


def fit_dock(widget: Container, min_height: int = 160) -> None:
    """Let a scrollable widget shrink below its content's height (it scrolls), so that two
    docked widgets fit a 1600x1000 screen: a QScrollArea otherwise asks for its content's
    height as its minimum."""
    try:
        widget.native.setMinimumHeight(min_height)
    except AttributeError:  # pragma: no cover - non-Qt backend
        pass


def wrap_label(label: Label) -> Label:
    try:
        label.native.setWordWrap(True)
    except AttributeError:  # pragma: no cover - non-Qt backend
        pass
    return label


class LayerChoices:
    """Keeps ComboBoxes of image layers in sync with the viewer (insert/remove/rename).

    ``sources_only``: leave out the layers this plugin made (see :func:`is_our_result`).
    """

    def __init__(self, viewer, widget: Container):
        self._viewer = viewer
        self._widget = widget
        ev = viewer.layers.events
        ev.inserted.connect(self._on_inserted)
        ev.removed.connect(self._refresh)
        ev.moved.connect(self._refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self._refresh)

    def _on_inserted(self, event=None):
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self._refresh)
        self._refresh()

    def _refresh(self, event=None):
        try:
            self._widget.reset_choices()
        except RuntimeError:  # pragma: no cover - Qt object already deleted
            pass

    def choices(self, _widget=None):
        return [(lay.name, lay) for lay in image_layers(self._viewer)]

    def source_choices(self, _widget=None):
        return [(lay.name, lay) for lay in image_layers(self._viewer) if not is_our_result(lay)]


# -- weights ---------------------------------------------------------------------------------

_PARAMS: dict[str, int | None] = {}


def param_count(path) -> int | None:
    """Parameters in a weights file (from the tensor shapes; cached per path)."""
    key = str(path)
    if key in _PARAMS:
        return _PARAMS[key]
    n = None
    try:
        p = Path(key)
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as fh:
                n = 0
                for k in fh.keys():  # noqa: SIM118 - safe_open is not iterable
                    shape = fh.get_slice(k).get_shape()
                    size = 1
                    for d in shape:
                        size *= int(d)
                    n += size
        else:
            from napari_rrim_sr.registry.loading import load_state_dict

            sd, _ = load_state_dict(p)
            n = int(sum(int(v.numel()) for v in sd.values() if hasattr(v, "numel")))
    except Exception:
        log.debug("could not count parameters of %s", key, exc_info=True)
    _PARAMS[key] = n
    return n


def format_params(n: int | None) -> str:
    if n is None:
        return "? parameters"
    return f"{n / 1e6:.2f} M parameters" if n >= 1e5 else f"{n / 1e3:.1f} k parameters"


def entry_label(e) -> str:
    """The combo text of a weights entry: id, architecture, scale, channels."""
    return f"{e.id}  ({e.backbone}, x{e.scale}, {e.in_channels}→{e.out_channels} ch)"


def describe_entry(e) -> str:
    """The details line below the model box: architecture, scale, channels, parameters, file."""
    desc = e.description or "no description"
    untrained = ""
    if not (e.metadata.get("recipe") or e.metadata.get("metrics")) and e.source in ("shipped", "user"):
        untrained = " (no training recipe or metrics recorded)"
    return (
        f"{e.backbone} · x{e.scale} · {e.in_channels}→{e.out_channels} channels · "
        f"{format_params(param_count(e.path))} · {e.source}: {Path(e.path).name} — {desc}{untrained}"
    )


class RegistryWatch(QObject):
    """Turns :func:`napari_rrim_sr.registry.core.on_change` (called in any thread) into a Qt signal
    delivered in the GUI thread."""

    changed = Signal()

    def __init__(self):
        super().__init__()
        from napari_rrim_sr.registry.core import on_change

        self._unsubscribe = on_change(lambda _reg: self.changed.emit())

    def close(self) -> None:
        self._unsubscribe()


class _DetachFilter(QObject):
    """Calls ``callback`` when the watched widget loses its parent or is destroyed: napari's
    ``remove_dock_widget`` (the dock's close button) reparents the widget to None."""

    def __init__(self, callback):
        super().__init__()
        self._callback = callback

    def eventFilter(self, obj, event):
        if event.type() == QEvent.ParentChange and obj.parent() is None:
            self._callback()
        return False


def on_detached(widget: Container, callback) -> QObject:
    """Install a filter on ``widget.native`` that calls ``callback`` when the dock is closed."""
    filt = _DetachFilter(callback)
    widget.native.installEventFilter(filt)
    widget.native.destroyed.connect(lambda *_: callback())
    return filt


# -- one shared model selection per viewer (upscale -> metrics self-check) -------------------

_UPSCALE_WIDGETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register_upscale_widget(viewer, widget) -> None:
    _UPSCALE_WIDGETS[viewer] = widget


def upscale_widget_of(viewer):
    """The upscale widget made for ``viewer`` (None if none is open)."""
    w = _UPSCALE_WIDGETS.get(viewer)
    if w is None:
        return None
    try:
        w.native.objectName()  # raises when Qt has deleted it
    except RuntimeError:
        return None
    return w


def check_error(exc: BaseException) -> bool:
    """Whether an exception is one of ours (a plain message) rather than a bug to log."""
    return isinstance(exc, (RRIMError, MemoryError))
