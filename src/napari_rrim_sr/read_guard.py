"""What the running command reads, recorded in one place so that the one writer never destroys it.

Why a registry and not a ``protect=`` list per call: a list is only as good as the command that
remembered to fill it (issue 23 found six commands that forgot: ``--json`` onto the training
image, onto the ``--init`` weights, onto the bench weights, an output store holding the weights,
dataset paths outside their group, an in-memory store given to the napari API). Here the
*readers* record what they open (:mod:`.image_io`, :mod:`.weights_io`, :mod:`.ngff`,
:mod:`.bundle`, the training data and pair loaders), and the *writer*
(:func:`napari_rrim_sr.safe_write.check_target`, hence ``atomic_write``/``atomic_dir`` and the
chunked store's creation/deletion) asks :func:`check_write` before it replaces, deletes or
writes inside anything. A new command inherits the guarantee without doing anything.

Scope: :func:`reading` opens a *read scope* for one command or API call (the CLI ``main``s, the
training CLI, :func:`napari_rrim_sr.pipeline.chunked.upscale_to_store`...). It lives in a
:class:`contextvars.ContextVar`, so two commands in two threads (or two napari workers) never see
each other's reads; a nested :func:`reading` joins the enclosing scope. Outside any scope
:func:`register_read` records nothing, so a long-lived napari process does not accumulate paths;
the scope is dropped when its ``with`` block ends. Entries per scope are capped
(:data:`MAX_ENTRIES`; beyond it a file is recorded by its folder, whose existing files are then
all protected: coarser, still safe, and bounded by the number of folders).

Two kinds of entries:

* ``"file"`` (an image, a weights file): the target may not be that file (same path, symlink or
  hard link), nor a folder containing it that would be replaced or deleted.
* ``"tree"`` (a Zarr store, a bundle, an array inside a store): additionally nothing may be
  written *inside* it.

Public API: :func:`reading`, :func:`register_read`, :func:`register_array`, :func:`check_write`,
:func:`current_reads`, :func:`active`.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from napari_rrim_sr.errors import OutputError

__all__ = [
    "MAX_ENTRIES",
    "ReadEntry",
    "Scope",
    "active",
    "check_write",
    "current_reads",
    "guarded",
    "guarded_method",
    "reading",
    "register_array",
    "register_read",
]

#: Beyond this many entries a scope records folders instead of files (bounded memory).
MAX_ENTRIES = 200_000


@dataclass(frozen=True)
class ReadEntry:
    """One path a command read: resolved path, device/inode (hard links), file or tree."""

    path: Path
    kind: str  # "file" | "tree"
    dev_ino: tuple[int, int] | None


class _Scope:
    """Indexed so that a check costs O(stores + folders), not O(files read): a training run over
    10^5 images checks each of its writes in microseconds."""

    def __init__(self) -> None:
        self.entries: dict[Path, ReadEntry] = {}
        self.ids: set[tuple[int, int]] = set()
        self.trees: dict[Path, ReadEntry] = {}
        self.folders: set[Path] = set()  # overflow: every existing file directly in these is protected
        self.lock = threading.Lock()

    def add(self, entry: ReadEntry) -> None:
        with self.lock:
            old = self.entries.get(entry.path)
            if old is not None and (old.kind == "tree" or entry.kind == "file"):
                return
            if len(self.entries) >= MAX_ENTRIES and entry.kind == "file":
                self.folders.add(entry.path.parent)
                return
            self.entries[entry.path] = entry
            if entry.dev_ino:
                self.ids.add(entry.dev_ino)
            if entry.kind == "tree":
                self.trees[entry.path] = entry

    def snapshot(self) -> list[ReadEntry]:
        with self.lock:
            return list(self.entries.values()) + [ReadEntry(f, "folder", None) for f in self.folders]


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("napari_rrim_sr_read_scope", default=None)


class Scope(_Scope):
    """A read scope an object can keep across calls (a ``Trainer`` reads in ``__init__`` and
    writes in ``run``): pass it to :func:`reading` each time."""


@contextlib.contextmanager
def reading(scope: _Scope | None = None) -> Iterator[_Scope]:
    """Record what is read inside the ``with`` block and protect it from every write there.

    Nested blocks share the outermost scope (what an inner call reads stays protected until the
    outer command ends). ``scope`` resumes a :class:`Scope` kept by the caller; when a scope is
    already active, ``scope``'s entries are added to it. Cheap: entering costs one ContextVar set.
    """
    current = _SCOPE.get()
    if current is not None:
        if scope is not None and scope is not current:
            for e in scope.snapshot():
                current.add(e)
        yield current
        return
    token = _SCOPE.set(scope if scope is not None else _Scope())
    try:
        yield _SCOPE.get()
    finally:
        _SCOPE.reset(token)


def guarded(func):
    """Decorator: run ``func`` inside :func:`reading` (API calls that read and then write)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with reading():
            return func(*args, **kwargs)

    return wrapper


def guarded_method(func):
    """Decorator for methods of an object that reads in one call and writes in another (a
    ``Trainer``): every decorated call runs in the object's own :class:`Scope`."""
    import functools

    @functools.wraps(func)
    def wrapper(self, *args, **kwargs):
        scope = self.__dict__.get("_read_scope")
        if scope is None:
            scope = self.__dict__["_read_scope"] = Scope()
        with reading(scope):
            return func(self, *args, **kwargs)

    return wrapper


def active() -> bool:
    """True inside a :func:`reading` block."""
    return _SCOPE.get() is not None


def _resolve(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # pragma: no cover - loops
        return Path(os.path.abspath(p))


def register_read(path, *, tree: bool | None = None) -> None:
    """Record ``path`` as read by the current command (no-op outside a scope or if it is missing).

    ``tree`` (default: True for folders) protects everything inside the folder too; a folder of
    images given as ``--data`` should register its files instead (a run may write new files there).
    """
    scope = _SCOPE.get()
    if scope is None or path is None:
        return
    p = Path(os.fspath(path))
    try:
        st = os.stat(p)
    except (OSError, ValueError):
        return
    is_dir = os.path.isdir(p)
    kind = "tree" if (tree if tree is not None else is_dir) else "file"
    scope.add(ReadEntry(_resolve(p), kind, (st.st_dev, st.st_ino)))


def register_array(array) -> list[Path]:
    """Record the stores behind an array (zarr, dask of zarr, tifffile's zarr view); return them.

    Walks a dask graph for the zarr arrays it reads, so an in-memory napari layer backed by a store
    protects that store. Works outside a scope too (returns the paths) for callers that protect
    a single call.
    """
    found: list[Path] = []
    seen: set[int] = set()

    def visit(obj, depth: int = 0) -> None:
        if obj is None or depth > 6 or id(obj) in seen:
            return
        seen.add(id(obj))
        path = _store_path(obj)
        if path is not None:
            found.append(path)
            return
        mod = type(obj).__module__
        if mod.startswith("dask"):
            graph = getattr(obj, "dask", None)
            if graph is not None:
                try:
                    values = list(dict(graph).values())
                except Exception:  # noqa: BLE001 - a graph we cannot list has no stores we know
                    values = []
                for v in values:
                    visit(v, depth + 1)
            return
        if mod.startswith("dask._task_spec") or type(obj).__name__ in ("Task", "DataNode", "Alias"):
            for name in ("value", "args", "kwargs", "func"):
                sub = getattr(obj, name, None)
                if sub is not None:
                    visit(sub, depth + 1)
            return
        if isinstance(obj, (tuple, list)):
            for v in obj[:64]:
                visit(v, depth + 1)
        elif isinstance(obj, dict):
            for v in list(obj.values())[:64]:
                visit(v, depth + 1)
        else:
            for name in ("_array", "array", "base", "obj"):  # wrappers (dask's getter, numpy views)
                sub = getattr(obj, name, None)
                if sub is not None and sub is not obj:
                    visit(sub, depth + 1)

    visit(array)
    found = [_enclosing_group(p) for p in found]
    for p in found:
        register_read(p, tree=p.is_dir())
    return found


def _is_zarr_group(folder: Path) -> bool:
    if (folder / ".zgroup").is_file():
        return True
    meta = folder / "zarr.json"
    try:
        return meta.is_file() and '"group"' in meta.read_text(encoding="utf-8", errors="replace")[:100_000]
    except OSError:
        return False


def _enclosing_group(p: Path) -> Path:
    """The outermost Zarr group holding the array at ``p`` (an OME-Zarr image is one input: its
    levels, labels and metadata, not only the level a layer shows)."""
    p = _resolve(p)
    top = p
    for parent in list(p.parents)[:32]:
        if not _is_zarr_group(parent):
            break
        top = parent
    return top


def _store_path(obj) -> Path | None:
    """The filesystem path of a zarr array's store root (or of a tifffile-backed store)."""
    mod = type(obj).__module__
    if not (mod.startswith("zarr") or mod.startswith("tifffile")):
        return None
    store = getattr(obj, "store", None)
    if store is None and mod.startswith("tifffile"):
        store = obj
    for attr in ("root", "path", "_path", "filename", "_filename"):
        val = getattr(store, attr, None)
        if isinstance(val, (str, os.PathLike)) and str(val):
            p = Path(os.fspath(val))
            if p.exists():
                return p
    fh = getattr(store, "_filehandle", None) or getattr(getattr(store, "_data", None), "filehandle", None)
    name = getattr(fh, "path", None) or getattr(fh, "name", None)
    if isinstance(name, str) and os.path.exists(name):
        return Path(name)
    return None


def current_reads() -> list[ReadEntry]:
    """The entries of the current scope (empty outside one)."""
    scope = _SCOPE.get()
    return scope.snapshot() if scope is not None else []


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def check_write(target, *, kind: str = "file", extra=()) -> None:
    """Raise :class:`OutputError` when writing ``target`` would replace, delete or write inside
    something the current command reads (or something in ``extra``: paths an API call protects
    without a scope). ``kind`` is ``"file"`` (one file replaced) or ``"dir"`` (a folder replaced,
    deleted or filled)."""
    scope = _SCOPE.get()
    if scope is None:
        scope = _Scope()
    elif extra:
        snap = _Scope()
        for e in scope.snapshot():
            if e.kind == "folder":
                snap.folders.add(e.path)
            else:
                snap.add(e)
        scope = snap
    for e in extra:
        if e is None:
            continue
        p = Path(os.fspath(e))
        try:
            st = os.stat(p)
        except OSError:
            continue
        scope.add(ReadEntry(_resolve(p), "tree" if p.is_dir() else "file", (st.st_dev, st.st_ino)))
    with scope.lock:
        if not scope.entries and not scope.folders:
            return
        _check(scope, Path(os.fspath(target)), kind)


def _check(scope: _Scope, t: Path, kind: str) -> None:
    rt = _resolve(t)
    try:
        st = os.stat(t)
        t_id = (st.st_dev, st.st_ino)
    except OSError:
        t_id = None
    is_dir = t_id is not None and os.path.isdir(t)
    if rt in scope.entries or (t_id is not None and t_id in scope.ids and not is_dir):
        raise OutputError(t, "is an input of this command; it is never replaced, even with --overwrite")
    for anc in rt.parents:
        if anc in scope.trees:
            raise OutputError(t, f"lies inside the input {anc}; an input is never written into, even with --overwrite")
    if rt in scope.folders or (rt.parent in scope.folders and t_id is not None and not is_dir):
        raise OutputError(
            t, f"is or replaces a file the command reads (in {rt if is_dir else rt.parent}); never replaced"
        )
    if kind != "dir" and not is_dir:
        return
    # a folder that would be replaced or deleted: it may contain nothing the command reads
    for p in list(scope.entries) + list(scope.folders):
        if _inside(p, rt):
            raise OutputError(t, f"contains the input {p}; it is never replaced, even with --overwrite")
    if is_dir and scope.ids:  # hard links to an input inside it
        budget = 20_000  # bounded: an output store with millions of chunks is not walked whole
        for root, _dirs, files in os.walk(t):
            budget -= len(files)
            if budget < 0:
                break
            for f in files:
                try:
                    s = os.stat(os.path.join(root, f))
                except OSError:
                    continue
                if (s.st_dev, s.st_ino) in scope.ids:
                    raise OutputError(t, f"contains a hard link to an input ({f}); it is never replaced")
