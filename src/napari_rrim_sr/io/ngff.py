"""OME-Zarr (NGFF) in and out through the ``ome-zarr`` library: open a source, write result metadata.

Why a module of its own: the chunked engine (:mod:`.chunked`) only needs "an array, its axes,
its pixel size and offset"; where those come from (an OME-Zarr multiscale, a plain Zarr array
with ``--axes``, a TIFF read lazily through tifffile's zarr interface) and how the result's
``multiscales``/``omero`` metadata is written is this module's business. The NGFF JSON is read
and written with ``ome_zarr`` (``parse_url``, ``Axes``, ``write_multiscales_metadata``,
``add_metadata``), never by hand.

Geometry: a result upscaled ``f`` times gets, on the ``y``/``x`` axes, ``scale / f`` and
``translate - scale/2 + scale/(2f)`` (:func:`napari_rrim_sr.io.geometry.upscaled_geometry`, the
rule the napari result layers use), so it overlays the source exactly. Pyramid level ``k``
(``2**k`` x ``2**k`` block means of level 0) has ``scale0 * 2**k`` and
``translate0 + scale0 * (2**k - 1) / 2`` on ``y``/``x`` (the convention ``ome-zarr`` itself
writes). Non-spatial axes (``t``, ``c``, ``z``) keep their scale and translation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_rrim_sr import read_guard
from napari_rrim_sr.engine.normalize import check_dtype
from napari_rrim_sr.errors import InputError

__all__ = [
    "TIFF_SUFFIXES",
    "Source",
    "level_transforms",
    "open_source",
    "output_name",
    "read_result_metadata",
    "write_result_metadata",
]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
_TIFF_AXES = {"T": "t", "C": "c", "Z": "z", "Y": "y", "X": "x"}
_NGFF_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def _ome_zarr():
    try:
        import ome_zarr.axes
        import ome_zarr.format
        import ome_zarr.io
        import ome_zarr.writer
    except ImportError:
        raise InputError("OME-Zarr input/output needs the 'ome-zarr' package: pip install ome-zarr") from None
    return ome_zarr


@dataclass
class Source:
    """An opened (read-only) input: where its level-0 array is and how it sits in the world."""

    path: Path
    kind: str  # "ome-zarr" | "zarr" | "tiff"
    array_path: str  # the level-0 array inside the store ("" for a plain array)
    shape: tuple[int, ...]
    dtype: np.dtype
    axes: list[dict]  # NGFF axes: {"name", "type"?, "unit"?}
    scale: list[float]
    translate: list[float]
    chunks: tuple[int, ...]
    name: str = ""
    omero: dict | None = None
    global_transforms: list | None = None  # multiscale-level coordinateTransformations, copied as is
    ngff_version: str | None = None
    series: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def axis_names(self) -> list[str]:
        return [a["name"] for a in self.axes]

    @property
    def spatial(self) -> tuple[int, int]:
        names = self.axis_names
        return names.index("y"), names.index("x")

    def open(self):
        """The level-0 array, opened read-only (zarr array; each call reopens: safe in workers)."""
        return open_array(self.kind, self.path, self.array_path, self.series)


def open_array(kind: str, path: Path | str, array_path: str = "", series: int = 0):
    """Open a source array read-only; the input store is never opened writable."""
    import zarr

    p = Path(path)
    read_guard.register_read(p)  # the store (a tree) or the TIFF: never written by this command
    if kind == "tiff":
        import tifffile

        store = tifffile.imread(str(p), aszarr=True, series=series, level=0)
        z = zarr.open(store, mode="r")
        if isinstance(z, zarr.Group):  # multi-resolution TIFF: level 0
            z = z[sorted(z.array_keys())[0]]
        return z
    target = _dataset_path(p, array_path) if array_path else p
    return zarr.open_array(str(target), mode="r")


def _dataset_path(group: Path, rel) -> Path:
    """``group / rel`` for a multiscales dataset path, refused when it leaves the group.

    An absolute path, ``..`` or a symlink pointing outside would make the command read (and its
    overlap checks miss) data elsewhere on disk."""
    s = str(rel)
    if not s or s.startswith(("/", "\\")) or os.path.isabs(s) or ".." in Path(s).parts or "\\" in s:
        raise InputError(f"{group}: dataset path {s!r}: dataset paths must stay inside their group")
    target = group / s
    try:
        target.resolve().relative_to(group.resolve())
    except ValueError:
        raise InputError(f"{group}: dataset path {s!r}: dataset paths must stay inside their group") from None
    return target


def output_name(path: Path | str) -> str:
    """``foo`` for ``foo.ome.zarr``, ``foo.zarr``, ``foo.ome.tif``, ``foo.tif``."""
    name = Path(str(path).rstrip("/")).name
    for suf in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", *TIFF_SUFFIXES):
        if name.lower().endswith(suf):
            return name[: -len(suf)] or name
    return name


def _parse_axes(axes: str, ndim: int) -> list[dict]:
    a = axes.lower()
    if len(a) != ndim:
        raise InputError(f"--axes {axes!r} has {len(a)} letters but the array has {ndim} dimensions")
    if len(set(a)) != len(a):
        raise InputError(f"--axes {axes!r} repeats a letter")
    if "s" in a:
        raise InputError(
            f"--axes {axes!r}: RGB samples (S) are not supported for Zarr output (NGFF puts "
            "channels first); convert to CYX or use the in-memory path (TIFF/PNG output)"
        )
    bad = [c for c in a if c not in _NGFF_TYPES]
    if bad:
        raise InputError(f"--axes {axes!r}: unknown axis {bad[0]!r}; use t, c, z, y, x")
    return [{"name": c, "type": _NGFF_TYPES[c]} for c in a]


def _check_axes(axes: list[dict], what: str) -> None:
    names = [a["name"] for a in axes]
    if "y" not in names or "x" not in names:
        raise InputError(f"{what}: axes {names} have no y and x axis; nothing to upscale")
    if names[-2:] != ["y", "x"]:
        raise InputError(f"{what}: axes {names}: y and x must be the last two axes (NGFF order)")


def open_source(path: Path | str, axes: str | None = None) -> Source:
    """Open an OME-Zarr image, a plain Zarr array (``axes`` needed beyond 2D) or a TIFF, read-only.

    Raises :class:`InputError` with one line for: not a Zarr/TIFF, a group without NGFF
    ``multiscales``, inconsistent multiscales (axes/shape/transform lengths, missing levels),
    unsupported dtypes, missing y/x axes.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    read_guard.register_read(p)  # the store (a tree) or the TIFF: never written by this command
    if p.is_file():
        if p.suffix.lower() not in TIFF_SUFFIXES:
            raise InputError(f"{p}: not a Zarr store or TIFF file (chunked processing reads OME-Zarr, Zarr, TIFF)")
        return _open_tiff(p, axes)
    ome_zarr = _ome_zarr()
    try:
        loc = ome_zarr.io.parse_url(str(p), mode="r")
        attrs = loc.root_attrs if loc is not None else {}
    except Exception as exc:  # noqa: BLE001 - ome_zarr trips over malformed metadata in many ways
        _check_raw_multiscales(p)
        raise InputError(f"{p}: unreadable OME-Zarr metadata ({type(exc).__name__}: {exc})") from None
    if "multiscales" in attrs:
        return _open_multiscales(p, attrs, loc.version, axes)
    import zarr

    try:
        z = zarr.open(str(p), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises many kinds for "not a store"
        raise InputError(f"{p}: not a readable Zarr store ({type(exc).__name__}: {exc})") from None
    if isinstance(z, zarr.Group):
        raise InputError(
            f"{p}: a Zarr group without NGFF 'multiscales' metadata; pass the array inside it "
            f"(e.g. {p}/<array>) with --axes"
        )
    check_dtype(z.dtype)
    if axes is None:
        if z.ndim != 2:
            raise InputError(
                f"{p}: a plain Zarr array ({z.ndim}D, no NGFF metadata) needs --axes, e.g. "
                f"--axes {'zyx' if z.ndim == 3 else 'czyx' if z.ndim == 4 else 'tczyx'}"
            )
        axes = "yx"
    ax = _parse_axes(axes, z.ndim)
    _check_axes(ax, str(p))
    return Source(
        p,
        "zarr",
        "",
        tuple(z.shape),
        np.dtype(z.dtype),
        ax,
        [1.0] * z.ndim,
        [0.0] * z.ndim,
        tuple(z.chunks),
        name=output_name(p),
    )


def _open_tiff(p: Path, axes: str | None) -> Source:
    import tifffile

    try:
        with tifffile.TiffFile(str(p)) as tf:
            s = tf.series[0]
            t_axes, shape, dtype = s.axes, tuple(s.shape), np.dtype(s.dtype)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{p}: cannot read as TIFF ({type(exc).__name__}: {exc})") from None
    check_dtype(dtype)
    if axes is None:
        if "S" in t_axes:
            raise InputError(
                f"{p}: RGB(A) TIFF (axes {t_axes}) is not supported for Zarr output; use the "
                "in-memory path (without --scheduler)"
            )
        axes = "".join(_TIFF_AXES.get(c, "?") for c in t_axes)
        if "?" in axes:
            raise InputError(f"{p}: TIFF axes {t_axes!r} have letters without an NGFF meaning; pass --axes")
    ax = _parse_axes(axes, len(shape))
    _check_axes(ax, str(p))
    z = open_array("tiff", p)
    return Source(
        p, "tiff", "", shape, dtype, ax, [1.0] * len(shape), [0.0] * len(shape), tuple(z.chunks), name=output_name(p)
    )


def _numbers(vals: list, p: Path, what: str) -> list[float]:
    """``vals`` as finite floats, or one line naming the store and the field."""
    try:
        out = [float(v) for v in vals if not isinstance(v, bool)]
    except (TypeError, ValueError):
        out = []
    if len(out) != len(vals) or not all(np.isfinite(out)):
        raise InputError(f"{p}: inconsistent multiscales: {what} must be finite numbers, got {vals!r}")
    return out


def _check_raw_multiscales(p: Path) -> None:
    """Name what is wrong in a group's ``multiscales`` when ome_zarr cannot even parse it."""
    import zarr

    try:
        attrs = dict(zarr.open_group(str(p), mode="r").attrs)
    except Exception:  # noqa: BLE001 - not a group: the caller's generic message
        return
    ms = (attrs.get("ome") or {}).get("multiscales") if isinstance(attrs.get("ome"), dict) else None
    ms = attrs.get("multiscales", ms)
    if ms is not None and (not isinstance(ms, list) or not ms or not all(isinstance(m, dict) for m in ms)):
        raise InputError(f"{p}: inconsistent multiscales: 'multiscales' is not a non-empty list of objects")


def _open_multiscales(p: Path, attrs: dict, version: str, axes_override: str | None) -> Source:
    ome_zarr = _ome_zarr()
    import zarr

    ms = attrs.get("multiscales")
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        raise InputError(f"{p}: inconsistent multiscales: 'multiscales' is not a non-empty list")
    m = ms[0]
    datasets = m.get("datasets")
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, dict) and "path" in d for d in datasets):
        raise InputError(f"{p}: inconsistent multiscales: 'datasets' must list at least one {{'path': ...}}")
    version = m.get("version", attrs.get("version", version))
    try:
        fmt = ome_zarr.format.format_from_version(str(version))
        ax = ome_zarr.axes.Axes(m.get("axes"), fmt=fmt).to_list()
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{p}: inconsistent multiscales: invalid axes ({exc})") from None
    if axes_override is not None:
        ax = _parse_axes(axes_override, len(ax))
    ax = [a if isinstance(a, dict) else {"name": a} for a in ax]
    _check_axes(ax, str(p))
    shapes = []
    for d in datasets:
        target = _dataset_path(p, d["path"])
        read_guard.register_read(target)
        try:
            z = zarr.open_array(str(target), mode="r")
        except Exception:  # noqa: BLE001
            raise InputError(f"{p}: inconsistent multiscales: dataset {d['path']!r} is not a readable array") from None
        if z.ndim != len(ax):
            raise InputError(
                f"{p}: inconsistent multiscales: dataset {d['path']!r} has {z.ndim} dimensions "
                f"but {len(ax)} axes are declared"
            )
        shapes.append(tuple(z.shape))
        if len(shapes) == 1:
            z0 = z
    for a, b in zip(shapes, shapes[1:]):
        if any(y > x for x, y in zip(a, b)):
            raise InputError(f"{p}: inconsistent multiscales: level shapes {shapes} grow instead of shrinking")
    check_dtype(z0.dtype)
    n = len(ax)
    scale, translate = [1.0] * n, [0.0] * n
    for t in datasets[0].get("coordinateTransformations") or []:
        if not isinstance(t, dict):
            continue
        vals = t.get(t.get("type"))
        if t.get("type") in ("scale", "translation"):
            if not isinstance(vals, list) or len(vals) != n:
                raise InputError(
                    f"{p}: inconsistent multiscales: {t.get('type')} of dataset "
                    f"{datasets[0]['path']!r} has {len(vals) if isinstance(vals, list) else '?'} "
                    f"values for {n} axes"
                )
            nums = _numbers(vals, p, f"{t['type']} of dataset {datasets[0]['path']!r}")
            if t["type"] == "scale":
                scale = nums
            else:
                translate = nums
    if not all(np.isfinite(scale)) or any(v <= 0 for v in scale):
        raise InputError(f"{p}: inconsistent multiscales: scale {scale} must be positive")
    return Source(
        p,
        "ome-zarr",
        str(datasets[0]["path"]),
        shapes[0],
        np.dtype(z0.dtype),
        ax,
        scale,
        translate,
        tuple(z0.chunks),
        name=str(m.get("name") or output_name(p)),
        omero=attrs.get("omero"),
        global_transforms=m.get("coordinateTransformations"),
        ngff_version=str(version),
    )


def level_transforms(
    scale: list[float], translate: list[float], spatial: tuple[int, int], factor: int, levels: int
) -> list[list[dict]]:
    """``coordinateTransformations`` of the result's levels: level 0 upscaled ``factor`` times (the
    napari overlay rule), level ``k`` a ``2**k`` block mean of level 0."""
    from napari_rrim_sr.io.geometry import upscaled_geometry

    s0, t0 = upscaled_geometry(scale, translate, factor, spatial_axes=spatial)
    out = []
    for k in range(levels):
        s, t = list(s0), list(t0)
        for a in spatial:
            s[a] = s0[a] * 2**k
            t[a] = t0[a] + s0[a] * (2**k - 1) / 2
        out.append([{"type": "scale", "scale": s}, {"type": "translation", "translation": t}])
    return out


def write_result_metadata(group_path: Path | str, src: Source, factor: int, paths: list[str], provenance: dict) -> None:
    """Write NGFF ``multiscales`` (axes, per-level transforms), ``omero`` (copied) and our provenance."""
    ome_zarr = _ome_zarr()
    import zarr

    from napari_rrim_sr.io.geometry import META_KEY
    from napari_rrim_sr.jsonable import jsonable

    group = zarr.open_group(str(group_path), mode="r+")
    fmt = ome_zarr.format.CurrentFormat()
    transforms = level_transforms(src.scale, src.translate, src.spatial, factor, len(paths))
    datasets = [{"path": pth, "coordinateTransformations": tr} for pth, tr in zip(paths, transforms)]
    axes = [dict(a) for a in src.axes]
    kw: dict[str, Any] = {}
    ome_zarr.writer.write_multiscales_metadata(group, datasets, fmt=fmt, axes=axes, name=src.name, **kw)
    if src.global_transforms:
        ms = ome_zarr.writer.get_metadata(group)["multiscales"]
        ms[0]["coordinateTransformations"] = src.global_transforms
        ome_zarr.writer.add_metadata(group, {"multiscales": ms}, fmt=fmt)
    if src.omero:
        ome_zarr.writer.add_metadata(group, {"omero": jsonable(src.omero)}, fmt=fmt)
    group.attrs[META_KEY] = jsonable(provenance)


def read_result_metadata(path: Path | str) -> dict:
    """The NGFF attributes of an output (as ``ome_zarr`` reads them) plus our provenance."""
    ome_zarr = _ome_zarr()
    import zarr

    from napari_rrim_sr.io.geometry import META_KEY

    loc = ome_zarr.io.parse_url(str(path), mode="r")
    if loc is None:
        raise InputError(f"{path}: not an OME-Zarr store")
    attrs = dict(loc.root_attrs)
    attrs[META_KEY] = dict(zarr.open_group(str(path), mode="r").attrs).get(META_KEY)
    return attrs


def is_zarr_path(path: Path | str) -> bool:
    """True for a folder that looks like a Zarr store (v2 or v3 metadata at its root)."""
    p = Path(path)
    return p.is_dir() and any(os.path.exists(p / n) for n in ("zarr.json", ".zgroup", ".zarray"))
