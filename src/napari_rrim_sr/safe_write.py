"""The one way this project writes a file or a folder a user will keep.

Every writer (images, reports, weights, bundles, logs a user names, exported packages) goes
through :func:`atomic_write` or :func:`atomic_dir`, so that three promises hold everywhere:

* **No input is replaced.** A target that is the same file as anything the command reads
  (same path, a symlink to it, or a hard link: compared by device and inode), lies inside a
  store it reads, or is a folder containing one, is refused, even with ``overwrite=True``.
  What the command reads is recorded by the readers in :mod:`napari_rrim_sr.read_guard`, not
  passed by hand, so a new command cannot forget an input.
* **No partial output.** Content goes to a temporary name in the target's folder and is moved
  into place with one ``os.replace`` (atomic on POSIX within one filesystem). Any failure removes
  the temporary; a killed process leaves a ``.NAME.rrimtmp-PID-XXXX`` file that the next write in
  that folder recognises (its PID is gone) and removes.
* **Normal permissions.** Files end with ``0o666 & ~umask`` (``mkstemp`` alone gives 0600),
  folders with ``0o777 & ~umask``.

Errors are :class:`~napari_rrim_sr.errors.OutputError` with one line naming the path and the
problem (exists, is an input, parent is not a folder, read-only or full filesystem...).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from napari_rrim_sr import read_guard
from napari_rrim_sr.errors import OutputError

__all__ = [
    "TMP_MARK",
    "atomic_dir",
    "atomic_write",
    "check_target",
    "clean_stale_temporaries",
    "fsync_path",
    "is_same_file",
    "remove_output",
]

#: Marker in temporary names; a later run removes ``.*.rrimtmp-PID-*`` whose PID is not alive.
TMP_MARK = "rrimtmp"
_TMP_RE = re.compile(rf"^\..*\.{TMP_MARK}-(\d+)-[0-9a-f]+")
_umask_lock = threading.Lock()

PathLike = str | os.PathLike


def _umask() -> int:
    with _umask_lock:  # os.umask can only be read by setting it
        old = os.umask(0o022)
        os.umask(old)
    return old


def is_same_file(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` name one file: same path, symlink or hard link."""
    pa, pb = Path(a), Path(b)
    try:
        return os.path.samefile(pa, pb)
    except OSError:
        pass
    try:
        return pa.resolve() == pb.resolve()
    except OSError:  # pragma: no cover - resolve rarely fails (loops)
        return os.path.abspath(pa) == os.path.abspath(pb)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def check_target(
    path: PathLike,
    *,
    overwrite: bool = False,
    protect: Iterable[PathLike] = (),
    kind: str = "file",
) -> Path:
    """Validate ``path`` as an output before any work is done; return it as a :class:`Path`.

    Everything the current command read (:mod:`napari_rrim_sr.read_guard`: data, weights, stores
    and their arrays, recorded by the readers themselves) is refused as a target, with or without
    ``overwrite``: the target may not be one of them, lie inside a store read, or be a folder
    containing one. ``protect`` adds paths an API call protects by hand (files or folders).
    ``kind`` is ``"file"`` or ``"dir"``.
    """
    p = Path(path)
    read_guard.check_write(p, kind=kind)
    for src in protect:
        if src is None:
            continue
        s = Path(src)
        if is_same_file(p, s):
            raise OutputError(p, "is an input of this command; it is never replaced, even with --overwrite")
        if s.is_dir() and _inside(p, s) and kind == "dir" and p.exists():
            raise OutputError(p, f"lies inside the input folder {s}; it is never replaced")
        if p.is_dir() and _inside(s, p):
            raise OutputError(p, f"contains the input {s}; it is never replaced, even with --overwrite")
    if p.exists() or p.is_symlink():
        if kind == "file" and p.is_dir():
            raise OutputError(p, "is a folder; expected a file name")
        if kind == "dir" and not p.is_dir():
            raise OutputError(p, "exists and is not a folder")
        if not overwrite:
            raise OutputError(p, "exists; not overwriting (use --overwrite / overwrite=True)")
    parent = p.parent
    for anc in [parent, *parent.parents]:
        if anc.exists():
            if not anc.is_dir():
                raise OutputError(p, f"cannot be created: {anc} is a file, not a folder")
            if not os.access(anc, os.W_OK | os.X_OK):
                raise OutputError(p, f"cannot be created: {anc} is not writable")
            break
    return p


def clean_stale_temporaries(folder: PathLike) -> list[Path]:
    """Remove temporaries left in ``folder`` by killed processes (their PID is not alive)."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TMP_RE.match(e.name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            pass
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _tmp_name(p: Path) -> Path:
    # Keep the suffix: writers such as tifffile and PIL choose the format from it.
    suffix = "".join(p.suffixes[-2:]) if p.name.endswith(".ome.tif") or p.name.endswith(".ome.zarr") else p.suffix
    stem = p.name[: len(p.name) - len(suffix)] if suffix else p.name
    return p.with_name(f".{stem}.{TMP_MARK}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _make_parents(parent: Path) -> list[Path]:
    """Create missing folders above a target; return the ones created (to undo on failure)."""
    created: list[Path] = []
    missing = []
    for anc in [parent, *parent.parents]:
        if anc.exists():
            break
        missing.append(anc)
    mode = 0o777 & ~_umask()
    for d in reversed(missing):
        d.mkdir(mode=mode)
        created.append(d)
    return created


def _undo_parents(created: list[Path]) -> None:
    for d in reversed(created):
        try:
            d.rmdir()  # only if still empty
        except OSError:
            break


def _os_error(p: Path, exc: OSError) -> OutputError:
    why = {
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "the filesystem is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOTDIR: "a parent is not a folder",
        errno.EXDEV: "temporary and target are on different filesystems",
        errno.EDQUOT: "disk quota exceeded",
    }.get(exc.errno) or _no_errno(exc)
    return OutputError(p, f"cannot be written: {why}")


def _no_errno(exc: OSError) -> str:
    """An OSError without a known errno: numpy's ``tofile`` (tifffile's writer) reports a full
    disk as "N requested and M written" with no errno at all."""
    text = str(exc)
    if "requested and" in text and "written" in text:
        return f"the write was cut short ({text}): the disk is probably full"
    return exc.strerror or text or type(exc).__name__


def fsync_path(path: PathLike) -> None:
    """Flush a file (or a folder's entries) to disk; errors are ignored (not every filesystem can)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: PathLike,
    content: bytes | str | Callable[[Path], object],
    *,
    overwrite: bool = False,
    protect: Iterable[PathLike] = (),
    encoding: str = "utf-8",
) -> Path:
    """Write one file atomically and return its path.

    ``content`` is bytes, text (written with ``encoding``), or a callable that writes the
    complete file at the temporary path it is given (``lambda tmp: tifffile.imwrite(tmp, a)``).
    Missing parent folders are created, and removed again if the write fails.
    """
    protect = list(protect)
    p = check_target(path, overwrite=overwrite, protect=protect, kind="file")
    try:
        created = _make_parents(p.parent)
    except OSError as exc:
        raise _os_error(p, exc) from None
    clean_stale_temporaries(p.parent)
    tmp = _tmp_name(p)
    try:
        if callable(content):
            content(tmp)
            if not tmp.exists():
                raise OutputError(p, "the writer produced no file")
        else:
            data = content.encode(encoding) if isinstance(content, str) else bytes(content)
            with open(tmp, "xb") as fh:
                fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        fsync_path(tmp)
        # Re-check just before the rename: the target may have appeared meanwhile.
        check_target(p, overwrite=overwrite, protect=protect, kind="file")
        os.replace(tmp, p)
        fsync_path(p.parent)
    except OSError as exc:
        _discard(tmp)
        _undo_parents(created)
        raise _os_error(p, exc) from None
    except BaseException:
        _discard(tmp)
        _undo_parents(created)
        raise
    return p


def atomic_dir(
    path: PathLike,
    build: Callable[[Path], object],
    *,
    overwrite: bool = False,
    protect: Iterable[PathLike] = (),
) -> Path:
    """Build a folder (a bundle, a package, a Zarr store) under a temporary name, then move it in.

    ``build`` fills the empty temporary folder it is given. With ``overwrite`` an existing
    target is moved aside first and deleted only after the new folder is in place.
    """
    protect = list(protect)
    p = check_target(path, overwrite=overwrite, protect=protect, kind="dir")
    try:
        created = _make_parents(p.parent)
    except OSError as exc:
        raise _os_error(p, exc) from None
    clean_stale_temporaries(p.parent)
    tmp = _tmp_name(p)
    old: Path | None = None
    try:
        tmp.mkdir(mode=0o777 & ~_umask())
        build(tmp)
        check_target(p, overwrite=overwrite, protect=protect, kind="dir")
        if p.exists():
            old = _tmp_name(p)
            os.replace(p, old)
        os.replace(tmp, p)
    except OSError as exc:
        if old is not None and not p.exists():
            os.replace(old, p)
            old = None
        _discard(tmp)
        _undo_parents(created)
        raise _os_error(p, exc) from None
    except BaseException:
        if old is not None and not p.exists():
            os.replace(old, p)
            old = None
        _discard(tmp)
        _undo_parents(created)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return p


def remove_output(path: PathLike, *, overwrite: bool) -> None:
    """Delete an output folder (a store about to be recreated) after the same checks as a write:
    never an input, never inside or containing one, only with ``overwrite``."""
    p = check_target(path, overwrite=overwrite, kind="dir")
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _discard(tmp: Path) -> None:
    try:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()
    except OSError:
        pass
