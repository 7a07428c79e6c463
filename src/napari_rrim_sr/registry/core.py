"""Backbone and weights registry, filled through the pluggy hooks of :mod:`.hookspecs`.

Discovery order: the built-in plugin, then every entry point of the ``napari_rrim_sr`` group.
``NAPARI_RRIM_SR_PLUGINS`` restricts discovery (for reproducible tests and debugging):

* unset: all installed plugins;
* ``none`` or empty: built-in backbones only;
* ``a,b``: only the entry points named ``a`` and ``b``.

Weights come from three places: the shipped ``weights/`` folder, the per-user data folder
(``NAPARI_RRIM_SR_WEIGHTS_DIR`` or platformdirs' user data dir), and plugins' weights hook.
Only headers and metadata are read here (fully validated by :mod:`.weights_format`); a file
that fails is kept in :attr:`Registry.broken` with its one-line problem and skipped, so one
bad file never hides the others. :class:`BackboneSpec` and :class:`WeightsEntry` live in
:mod:`.spec` and are re-exported here, the import path plugins use.
"""

from __future__ import annotations

import logging
import os
import threading
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import pluggy

from napari_rrim_sr.errors import RegistryError, WeightsError
from napari_rrim_sr.registry import builtin as builtin_backbones
from napari_rrim_sr.registry import hookspecs
from napari_rrim_sr.registry import public as public_backbones
from napari_rrim_sr.registry.file_format import read_metadata
from napari_rrim_sr.registry.spec import BackboneSpec, BrokenWeights, WeightsEntry

__all__ = [
    "BUILTIN_PLUGIN_NAME",
    "PUBLIC_PLUGIN_NAME",
    "PLUGINS_ENV",
    "SHIPPED_ENV",
    "WEIGHTS_DIR_ENV",
    "BackboneSpec",
    "BrokenWeights",
    "Registry",
    "WeightsEntry",
    "entry_from_file",
    "get_registry",
    "reset_registry",
    "shipped_weights_dir",
    "shipped_weights_enabled",
    "user_weights_dir",
]

log = logging.getLogger(__name__)

PLUGINS_ENV = "NAPARI_RRIM_SR_PLUGINS"
SHIPPED_ENV = "NAPARI_RRIM_SR_SHIPPED_WEIGHTS"
WEIGHTS_DIR_ENV = "NAPARI_RRIM_SR_WEIGHTS_DIR"
BUILTIN_PLUGIN_NAME = "builtin"
PUBLIC_PLUGIN_NAME = "public"  # ESRGAN (original layout), Compact, SPAN, SwinIR: public_backbones.py


def shipped_weights_enabled() -> bool:
    """False when ``NAPARI_RRIM_SR_SHIPPED_WEIGHTS`` is 0/off/no/false (tests, or users who want
    only their own weights listed)."""
    return os.environ.get(SHIPPED_ENV, "1").strip().lower() not in ("0", "off", "no", "false", "none")


def shipped_weights_dir() -> Path:
    """The package's ``weights/`` folder (root ``weights/`` in a checkout, inside the wheel)."""
    return Path(__file__).resolve().parents[1] / "weights"


def user_weights_dir(create: bool = False) -> Path:
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        path = Path(env).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("napari-rrim-sr", appauthor=False)) / "weights"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _allowed_plugins() -> set[str] | None:
    """Entry-point names allowed by ``NAPARI_RRIM_SR_PLUGINS``; None means all."""
    raw = os.environ.get(PLUGINS_ENV)
    if raw is None:
        return None
    raw = raw.strip()
    if raw.lower() in ("", "none", "0", "builtin"):
        return set()
    return {p.strip() for p in raw.split(",") if p.strip()}


class Registry:
    """Collects backbones and weights from the built-in plugin and installed plugins."""

    def __init__(self, discover: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        #: (plugin name, message) for plugins that failed to load or to answer a hook.
        self.failed: list[tuple[str, str]] = []
        #: weights files found but not listed (unreadable, corrupt, incomplete metadata).
        self.broken: list[BrokenWeights] = []
        self._lock = threading.RLock()
        self._backbones: dict[str, BackboneSpec] | None = None
        self._weights: list[WeightsEntry] | None = None
        self.pm.register(builtin_backbones, name=BUILTIN_PLUGIN_NAME)
        self.pm.register(public_backbones, name=PUBLIC_PLUGIN_NAME)
        if discover:
            self.discover()

    # -- plugins -------------------------------------------------------------------------
    def discover(self) -> None:
        """Load the ``napari_rrim_sr`` entry points allowed by the environment."""
        allowed = _allowed_plugins()
        for ep in importlib_metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            if allowed is not None and ep.name not in allowed:
                continue
            if self.pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not break the product
                msg = f"could not import plugin {ep.name!r} ({ep.value}): {type(exc).__name__}: {exc}"
                log.warning(msg)
                self.failed.append((ep.name, msg))
                continue
            self.register_plugin(plugin, name=ep.name)

    def register_plugin(self, plugin: Any, name: str | None = None) -> str:
        """Register a module or object with hook implementations at run time."""
        with self._lock:
            registered = self.pm.register(plugin, name=name)
            if registered is None:
                raise RegistryError(f"plugin {name!r} is already registered")
            self._backbones = None
            self._weights = None
            return registered

    def unregister_plugin(self, name: str) -> None:
        with self._lock:
            self.pm.unregister(name=name)
            self._backbones = None
            self._weights = None

    def _call(self, hook_name: str):
        """Call a hook on each plugin separately so one failure names its plugin."""
        for name, plugin in list(self.pm.list_name_plugin()):
            impls = [impl for impl in getattr(self.pm.hook, hook_name).get_hookimpls() if impl.plugin is plugin]
            for impl in impls:
                try:
                    result = impl.function()
                except Exception as exc:
                    msg = f"plugin {name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
                    log.warning(msg)
                    self.failed.append((name, msg))
                    continue
                yield name, list(result or [])

    # -- backbones -----------------------------------------------------------------------
    def backbones(self) -> dict[str, BackboneSpec]:
        with self._lock:
            if self._backbones is None:
                found: dict[str, BackboneSpec] = {}
                for plugin_name, specs in self._call("napari_rrim_sr_backbones"):
                    for spec in specs:
                        if not isinstance(spec, BackboneSpec):
                            raise RegistryError(
                                f"plugin {plugin_name!r} returned {type(spec).__name__}, "
                                "expected napari_rrim_sr.registry.core.BackboneSpec"
                            )
                        if spec.id in found:
                            raise RegistryError(
                                f"backbone id {spec.id!r} is registered twice: by plugin "
                                f"{found[spec.id].source!r} and by plugin {plugin_name!r}"
                            )
                        found[spec.id] = _with_source(spec, plugin_name)
                self._backbones = found
            return dict(self._backbones)

    def backbone(self, backbone_id: str) -> BackboneSpec:
        specs = self.backbones()
        try:
            return specs[backbone_id]
        except KeyError:
            raise RegistryError(f"unknown backbone {backbone_id!r}; registered: {', '.join(sorted(specs))}") from None

    def build(self, backbone_id: str, **hparams: Any):
        return self.backbone(backbone_id).build(**hparams)

    # -- weights -------------------------------------------------------------------------
    def weights(self, refresh: bool = False) -> list[WeightsEntry]:
        """All known weights: shipped, then user, then plugin-contributed (broken files skipped)."""
        with self._lock:
            if self._weights is None or refresh:
                entries: list[WeightsEntry] = []
                seen: dict[str, WeightsEntry] = {}
                broken: list[BrokenWeights] = []

                def add(path: Path, source: str) -> None:
                    try:
                        entry = entry_from_file(path, source)
                    except WeightsError as exc:
                        problem = exc.problem
                    except Exception as exc:  # a bug in a check must not hide the other files
                        problem = f"unexpected {type(exc).__name__}: {exc}"
                    else:
                        if entry.id in seen:
                            other = seen[entry.id]
                            log.warning(
                                "weights id %r from %s (%s) shadows %s (%s)",
                                entry.id,
                                source,
                                path,
                                other.source,
                                other.path,
                            )
                            entries.remove(other)
                        seen[entry.id] = entry
                        entries.append(entry)
                        return
                    log.warning("skipping weights file %s: %s", path, problem)
                    broken.append(BrokenWeights(path=Path(path), problem=problem, source=source))

                def scan(folder: Path, source: str) -> None:
                    try:
                        paths = _weights_files(folder)
                    except OSError as exc:
                        broken.append(BrokenWeights(folder, f"cannot list folder ({exc.strerror or exc})", source))
                        return
                    for path in paths:
                        add(path, source)
                    for path in _unsupported_files(folder):  # e.g. a .pth dropped there: say why it is not used
                        broken.append(
                            BrokenWeights(
                                path,
                                f"unsupported: only .safetensors files in this folder are used; load the "
                                f"{path.suffix} checkpoint with the napari widget's 'Weights file…' button "
                                "('keep a copy': it is checked and installed as .safetensors)",
                                source,
                            )
                        )

                if shipped_weights_enabled():
                    scan(shipped_weights_dir(), "shipped")
                scan(user_weights_dir(), "user")
                for plugin_name, paths in self._call("napari_rrim_sr_weights"):
                    for path in paths:
                        add(Path(path), plugin_name)
                before = None if self._weights is None else [(e.id, str(e.path)) for e in self._weights]
                self._weights = entries
                self.broken = broken
                if before is not None and before != [(e.id, str(e.path)) for e in entries]:
                    _notify_change(self)
            return list(self._weights)

    def find_weights(self, weights_id: str) -> WeightsEntry:
        entries = self.weights()
        for entry in entries:
            if entry.id == weights_id:
                return entry
        known = ", ".join(e.id for e in entries) or "none installed"
        raise RegistryError(f"unknown weights {weights_id!r}; available: {known}")

    def default_weights(self, channels: int, scale: int = 4) -> WeightsEntry | None:
        """The preferred weights for ``channels``-channel input (see issue: defaults)."""
        preferred = {1: "rrim-x4-gray", 3: "rrim-x4-rgb-psnr"}.get(channels)
        entries = [e for e in self.weights() if e.scale == scale]
        for entry in entries:
            if entry.id == preferred:
                return entry
        for entry in entries:
            if entry.in_channels == channels and not entry.id.endswith("-gan"):
                return entry
        for entry in entries:  # a 3-channel model on gray data, or the reverse, per channel
            if not entry.id.endswith("-gan"):
                return entry
        return entries[0] if entries else None


def _with_source(spec: BackboneSpec, source: str) -> BackboneSpec:
    from dataclasses import replace

    return replace(spec, source=source)


def _weights_files(folder: Path) -> list[Path]:
    """The ``.safetensors`` files in ``folder`` (a dangling link or a folder of that name too,
    so that it is reported as broken rather than silently ignored)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == ".safetensors" and not p.name.startswith("."))


#: weights_io.PICKLE_SUFFIXES (weights_io imports this module, so not imported from there)
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


def _unsupported_files(folder: Path) -> list[Path]:
    """Checkpoint files (``.pth``, ``.pt``, ``.ckpt``, ``.bin``) in ``folder``: never loaded from
    there, but listed so that they are not silently ignored."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in CHECKPOINT_SUFFIXES and not p.name.startswith("."))


def entry_from_file(path: Path, source: str) -> WeightsEntry:
    """Read a weights file's metadata (not its tensors) into a :class:`WeightsEntry`."""
    meta = read_metadata(path)
    if not meta:
        raise WeightsError(path, "no napari-rrim-sr metadata; load it explicitly with a backbone id")
    missing = [k for k in ("backbone", "scale", "in_channels", "out_channels") if k not in meta]
    if missing:
        raise WeightsError(path, f"incomplete metadata (no {', '.join(missing)})")
    return WeightsEntry(
        id=str(meta.get("name") or Path(path).stem),
        backbone=meta["backbone"],
        scale=meta["scale"],
        in_channels=meta["in_channels"],
        out_channels=meta["out_channels"],
        path=Path(path),
        source=source,
        description=str(meta.get("description", "")),
        metadata=meta,
    )


_registry: Registry | None = None
_registry_lock = threading.Lock()

#: callbacks run when a refresh finds a different set of weights (any registry, any thread)
_change_listeners: list = []


def on_change(callback) -> Any:
    """Call ``callback(registry)`` whenever a refresh of a registry's weights finds a different list
    (weights installed by *Weights file...*, a fine-tune, ``models --add``). Why: a widget listing
    weights must show new ones at once. The callback runs in the thread that refreshed (GUI code
    must hand it over to its own thread). Returns a function that unsubscribes."""
    _change_listeners.append(callback)

    def unsubscribe() -> None:
        if callback in _change_listeners:
            _change_listeners.remove(callback)

    return unsubscribe


def _notify_change(registry: Registry) -> None:
    for cb in tuple(_change_listeners):  # a callback may unsubscribe itself
        try:
            cb(registry)
        except Exception:  # a listener's bug must not break a refresh
            log.warning("registry change listener %r failed", cb, exc_info=True)


def get_registry() -> Registry:
    """The process-wide registry (discovered once)."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = Registry()
        return _registry


def reset_registry() -> None:
    """Forget the process-wide registry (tests, or after installing a plugin)."""
    global _registry
    with _registry_lock:
        _registry = None
