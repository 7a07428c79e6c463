"""Layer TIFFs and comparison bundles (Qt-free, napari-free).

**Layer TIFF**: one image layer written by :func:`napari_rrim_sr.image_io.write_image` (dtype
kept; TIFF ImageDescription JSON under the key ``napari_rrim_sr``) with::

    {"format": "napari-rrim-sr-layer", "version": 1,
     "layer": {name, scale, translate, rotate, shear, contrast_limits, colormap, blending,
               gamma, opacity, rgb, units, axis_labels},
     "provenance": {...},          # metadata["napari_rrim_sr"] of a result layer (model id,
                                   # weights sha256, device, precision, tile, metrics, ...)
     "metadata": {...}}            # the layer's other JSON-able metadata

plus the pixel size (the layer's scale on the last two axes, with its unit) where image_io
stores it. TIFFs written by the CLI (provenance but no ``layer``) are read too.

**Comparison bundle**: a folder holding ``bundle.json`` (the manifest: format, version, files and
their roles), one layer TIFF per layer (``sr.tif``, ``bicubic.tif``, ``source.tif``, others by
name), ``metrics.json`` (the self-check metrics recorded by the upscale run and, when a layer has
the SR layer's shape, the SR and bicubic layers scored against it) and ``provenance.json``.

Readers here return napari "layer data" tuples ``(data, kwargs, "image")`` and return None -
never raise - for files they do not own.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import InputError
from .layers import META_KEY, jsonable

log = logging.getLogger(__name__)

LAYER_FORMAT = "napari-rrim-sr-layer"
BUNDLE_FORMAT = "napari-rrim-sr-bundle"
FORMAT_VERSION = 1
MANIFEST = "bundle.json"
METRICS_FILE = "metrics.json"
PROVENANCE_FILE = "provenance.json"
TIFF_SUFFIXES = (".tif", ".tiff")
#: layer attributes stored in and restored from a layer TIFF
LAYER_KEYS = ("name", "scale", "translate", "rotate", "shear", "contrast_limits", "colormap",
              "blending", "gamma", "opacity", "rgb", "units", "axis_labels")

LayerData = tuple  # (data, kwargs, layer_type)


# -- layer attributes <-> JSON -----------------------------------------------------------------

def _colormap_name(cmap) -> str | None:
    if cmap is None:
        return None
    if isinstance(cmap, str):
        return cmap
    if isinstance(cmap, Mapping):
        return cmap.get("name")
    return getattr(cmap, "name", None)


def layer_attributes(meta: Mapping[str, Any], ndim: int) -> dict:
    """The JSON-able layer attributes of a napari layer-data ``meta`` dict (as a writer gets)."""
    out: dict[str, Any] = {}
    for key in LAYER_KEYS:
        if key not in meta or meta[key] is None:
            continue
        val = meta[key]
        if key == "colormap":
            val = _colormap_name(val)
            if val is None:
                continue
        elif key in ("rotate", "shear"):
            arr = np.asarray(val, dtype=float)
            if key == "rotate" and arr.shape == (ndim, ndim) and np.allclose(arr, np.eye(ndim)):
                continue
            if key == "shear" and (np.allclose(arr, 0) or (arr.shape == (ndim, ndim) and np.allclose(arr, np.eye(ndim)))):
                continue
            val = arr.tolist()
        elif key in ("units", "axis_labels"):
            val = [str(v) for v in val]
        out[key] = val
    return jsonable(out)


def _user_metadata(meta: Mapping[str, Any]) -> dict:
    md = dict(meta.get("metadata") or {})
    md.pop(META_KEY, None)
    return jsonable(md)


def _pixel_size_like(attrs: Mapping[str, Any]) -> dict:
    """image_io's ``like`` giving the pixel size (last two axes of the scale) and its unit."""
    scale = attrs.get("scale")
    if not scale or len(scale) < 2:
        return {}
    units = attrs.get("units") or []
    unit = str(units[-1]) if units else "pixel"
    if unit in ("pixel", "px", "None", ""):
        return {}
    if unit in ("micrometer", "micron"):
        unit = "µm"
    elif unit == "centimeter":
        unit = "cm"
    return {"pixel_size": (float(scale[-2]), float(scale[-1])), "unit": unit}


# -- layer TIFFs ---------------------------------------------------------------------------

def write_layer_tiff(path, data, meta: Mapping[str, Any] | None = None, *, overwrite: bool = False) -> Path:
    """Write one image layer (``data`` + napari layer ``meta``) as a TIFF, keeping dtype,
    geometry, appearance and provenance."""
    from .image_io import write_image

    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise InputError(f"{path}: layer files are written as .tif / .tiff")
    meta = dict(meta or {})
    if meta.get("multiscale"):
        raise InputError("multiscale layers cannot be written as one TIFF; save the full-"
                         "resolution level as a plain layer first")
    arr = np.asarray(data)
    rgb = bool(meta.get("rgb", False))
    ndim = arr.ndim - (1 if rgb else 0)
    attrs = layer_attributes(meta, ndim)
    attrs["rgb"] = rgb
    record = {
        "format": LAYER_FORMAT,
        "version": FORMAT_VERSION,
        "layer": attrs,
        "provenance": jsonable(dict((meta.get("metadata") or {}).get(META_KEY) or {})) or None,
        "metadata": _user_metadata(meta),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    like = _pixel_size_like(attrs)
    return write_image(path, arr, like=like, metadata=record, overwrite=overwrite, rgb=rgb)


def _tiff_record(path) -> dict | None:
    """Our metadata of a TIFF, read from its first page's description only (cheap); None for
    TIFFs that are not ours. Never raises."""
    try:
        import tifffile

        with tifffile.TiffFile(str(path)) as tf:
            shaped = tf.shaped_metadata
            if not shaped:
                return None
            rec = shaped[0].get(META_KEY)
        return rec if isinstance(rec, dict) else None
    except Exception:  # noqa: BLE001 - foreign or broken files are simply not ours
        return None


def is_layer_tiff(path) -> bool:
    p = Path(str(path))
    return p.suffix.lower() in TIFF_SUFFIXES and p.is_file() and _tiff_record(p) is not None


def read_layer_tiff(path) -> LayerData:
    """``(data, kwargs, "image")`` of a TIFF written by napari-rrim-sr (layer writer or CLI)."""
    from .image_io import read_image

    data, info = read_image(path)
    rec = info.get("provenance")
    if not isinstance(rec, dict):
        raise InputError(f"{path}: not a napari-rrim-sr TIFF (no {META_KEY} metadata)")
    kwargs: dict[str, Any] = {}
    if rec.get("format") == LAYER_FORMAT:
        attrs = dict(rec.get("layer") or {})
        for key in LAYER_KEYS:
            if key in attrs and attrs[key] is not None:
                val = attrs[key]
                if key in ("scale", "translate", "contrast_limits", "units", "axis_labels"):
                    val = tuple(val)
                elif key in ("rotate", "shear"):
                    val = np.asarray(val, dtype=float)
                kwargs[key] = val
        metadata = dict(rec.get("metadata") or {})
        if rec.get("provenance"):
            metadata[META_KEY] = rec["provenance"]
    else:  # a CLI output: our provenance, geometry from the pixel size
        metadata = {META_KEY: rec}
        rgb = bool(info.get("rgb"))
        kwargs["rgb"] = rgb
        ps = info.get("pixel_size")
        if ps:
            nd = data.ndim - (1 if rgb else 0)
            kwargs["scale"] = (1.0,) * (nd - 2) + (float(ps[0]), float(ps[1]))
            if info.get("unit"):
                kwargs["units"] = ("pixel",) * (nd - 2) + (info["unit"],) * 2
        kwargs["name"] = Path(path).stem
    kwargs["metadata"] = metadata
    kwargs.setdefault("name", Path(path).stem)
    _check_units(kwargs)
    return data, kwargs, "image"


def _check_units(kwargs: dict) -> None:
    """Drop units napari/pint would not parse (a file must open even if its units are odd)."""
    units = kwargs.get("units")
    if not units:
        return
    try:
        import pint

        reg = pint.get_application_registry()
        for u in units:
            reg.Unit(str(u).replace("µ", "u"))
    except ImportError:
        return
    except Exception:  # noqa: BLE001
        log.info("dropping units %r that cannot be parsed", units)
        kwargs.pop("units", None)


# -- bundles -------------------------------------------------------------------------------

def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return s or "layer"


def _role(meta: Mapping[str, Any]) -> str:
    rec = (meta.get("metadata") or {}).get(META_KEY) or {}
    kind = rec.get("kind") if isinstance(rec, Mapping) else None
    return {"rrim": "sr", "bicubic": "bicubic", "error_map": "error_map"}.get(kind, "source")


def write_bundle(path, layers: Sequence[LayerData], *, overwrite: bool = False,
                 compute_metrics: bool = True) -> list[str]:
    """Write image layers (napari layer-data tuples) into a bundle folder; returns the paths
    written (the folder first). The folder must not exist or be empty (or ``overwrite``)."""
    folder = Path(path)
    if folder.suffix.lower() in TIFF_SUFFIXES:
        raise InputError(f"{folder}: a bundle is a folder; give a name without .tif")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise InputError(f"{folder}: folder exists and is not empty; choose a new name")
    images = [(d, dict(m), t) for d, m, t in layers if t == "image"]
    if not images:
        raise InputError("a comparison bundle needs at least one image layer")
    folder.mkdir(parents=True, exist_ok=True)

    used: set[str] = set()
    entries = []
    written = [str(folder)]
    for data, meta, _ in images:
        role = _role(meta)
        base = {"sr": "sr", "bicubic": "bicubic", "source": "source"}.get(role, _slug(meta.get("name", "layer")))
        stem = base
        k = 2
        while stem in used:
            stem = f"{base}-{k}" if role == "error_map" else f"{base}-{_slug(meta.get('name', str(k)))}"
            if stem in used:
                stem = f"{base}-{k}"
            k += 1
        used.add(stem)
        fname = f"{stem}.tif"
        write_layer_tiff(folder / fname, data, meta, overwrite=overwrite)
        written.append(str(folder / fname))
        entries.append({"file": fname, "role": role, "name": meta.get("name", stem),
                        "shape": list(np.shape(data)), "dtype": str(np.asarray(data).dtype)})

    provenance = {e["name"]: jsonable((m.get("metadata") or {}).get(META_KEY))
                  for e, (_, m, _) in zip(entries, images) if (m.get("metadata") or {}).get(META_KEY)}
    metrics = _bundle_metrics(images, entries) if compute_metrics else {}
    from . import __version__

    manifest = {
        "format": BUNDLE_FORMAT,
        "version": FORMAT_VERSION,
        "software": f"napari-rrim-sr {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "layers": entries,
        "metrics": METRICS_FILE,
        "provenance": PROVENANCE_FILE,
    }
    for name, obj in ((METRICS_FILE, metrics), (PROVENANCE_FILE, provenance), (MANIFEST, manifest)):
        (folder / name).write_text(json.dumps(jsonable(obj), indent=2) + "\n", encoding="utf-8")
        written.append(str(folder / name))
    return written


def _bundle_metrics(images, entries) -> dict:
    """Self-check metrics recorded in result layers, and SR/bicubic scored against any layer of
    the SR layer's shape (a high-resolution reference)."""
    from .layers import compare_arrays, metrics_data_range

    out: dict[str, Any] = {"self_check": {}, "against_reference": {}}
    for e, (_, meta, _) in zip(entries, images):
        rec = (meta.get("metadata") or {}).get(META_KEY) or {}
        if isinstance(rec, Mapping) and rec.get("metrics"):
            out["self_check"][e["name"]] = rec["metrics"]
    srs = [(e, d, m) for e, (d, m, _) in zip(entries, images) if e["role"] == "sr"]
    bics = [(e, d, m) for e, (d, m, _) in zip(entries, images) if e["role"] == "bicubic"]
    refs = [(e, d, m) for e, (d, m, _) in zip(entries, images) if e["role"] == "source"]
    for e_sr, d_sr, m_sr in srs:
        for e_ref, d_ref, m_ref in refs:
            if tuple(np.shape(d_ref)) != tuple(np.shape(d_sr)):
                continue
            try:
                ref = np.asarray(d_ref)
                rgb = bool(m_ref.get("rgb", False))
                dr = metrics_data_range(ref.dtype, ref)
                res = {"model": compare_arrays(d_sr, ref, rgb=rgb, data_range=dr, border=4,
                                               y_channel=rgb)}
                conv = res["model"].pop("convention")
                for e_b, d_b, _ in bics:
                    if tuple(np.shape(d_b)) == tuple(np.shape(d_sr)):
                        res["bicubic"] = compare_arrays(d_b, ref, rgb=rgb, data_range=dr,
                                                        border=4, y_channel=rgb)
                        res["bicubic"].pop("convention", None)
                        break
                res["convention"] = conv
                out["against_reference"][f"{e_sr['name']} vs {e_ref['name']}"] = res
            except Exception as exc:  # noqa: BLE001 - metrics are a bonus, never block a save
                log.warning("could not score %s against %s: %s", e_sr["name"], e_ref["name"], exc)
    return out


def _manifest(folder: Path) -> dict | None:
    try:
        mf = folder / MANIFEST
        if not mf.is_file() or mf.stat().st_size > 10 * 2**20:
            return None
        obj = json.loads(mf.read_text(encoding="utf-8"))
        return obj if isinstance(obj, dict) and obj.get("format") == BUNDLE_FORMAT else None
    except Exception:  # noqa: BLE001
        return None


def is_bundle(path) -> bool:
    try:
        p = Path(str(path))
        return p.is_dir() and _manifest(p) is not None
    except Exception:  # noqa: BLE001
        return False


def read_bundle(path) -> list[LayerData]:
    """The layers of a bundle folder (in the order they were written), with its metrics in
    each layer's ``metadata["bundle_metrics"]``."""
    folder = Path(path)
    manifest = _manifest(folder)
    if manifest is None:
        raise InputError(f"{folder}: not a napari-rrim-sr comparison bundle (no valid {MANIFEST})")
    metrics = {}
    try:
        metrics = json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    out = []
    for entry in manifest.get("layers", []):
        f = folder / str(entry.get("file", ""))
        if f.parent.resolve() != folder.resolve():
            raise InputError(f"{folder}: bundle entry {entry.get('file')!r} points outside the folder")
        data, kwargs, kind = read_layer_tiff(f)
        kwargs["metadata"]["bundle_role"] = entry.get("role")
        if metrics:
            kwargs["metadata"]["bundle_metrics"] = metrics
        out.append((data, kwargs, kind))
    return out


def _png_is_ours(p: Path) -> bool:
    """PNGs this plugin opens: 16-bit RGB(A) (napari's builtin reader keeps 8 of the 16 bits)
    and PNGs carrying our provenance (so it reaches the layer's metadata)."""
    from PIL import Image

    from .image_io import PROVENANCE_KEY, is_rgb16_png

    if is_rgb16_png(p):
        return True
    with Image.open(p) as im:  # parses the chunks before IDAT only, where ours are written
        return PROVENANCE_KEY in im.info


def read_png(path) -> LayerData:
    """``(data, kwargs, "image")`` of a PNG at full bit depth, with our provenance if present."""
    from .image_io import read_image

    data, info = read_image(path)
    kwargs: dict[str, Any] = {"rgb": bool(info.get("rgb")), "name": Path(path).stem, "metadata": {}}
    if isinstance(info.get("provenance"), dict):
        kwargs["metadata"][META_KEY] = info["provenance"]
    return data, kwargs, "image"


def owned_reader_target(path) -> str | None:
    """"bundle", "tiff", "png" or None for a path napari asks about (never raises)."""
    try:
        p = Path(str(path))
        if p.is_dir():
            return "bundle" if is_bundle(p) else None
        if p.suffix.lower() in TIFF_SUFFIXES and p.is_file() and _tiff_record(p) is not None:
            return "tiff"
        if p.suffix.lower() == ".png" and p.is_file() and _png_is_ours(p):
            return "png"
    except Exception:  # noqa: BLE001
        return None
    return None
