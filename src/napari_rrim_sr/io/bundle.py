"""Layer TIFFs and comparison bundles (Qt-free, napari-free).

**Layer TIFF**: one image layer written by :func:`napari_rrim_sr.io.images.write_image` (dtype
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
import math
import re
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from napari_rrim_sr import read_guard
from napari_rrim_sr.errors import InputError, OutputError
from napari_rrim_sr.io.images import PROVENANCE_KEY as META_KEY
from napari_rrim_sr.jsonable import jsonable

log = logging.getLogger(__name__)

LAYER_FORMAT = "napari-rrim-sr-layer"
BUNDLE_FORMAT = "napari-rrim-sr-bundle"
FORMAT_VERSION = 1
MANIFEST = "bundle.json"
MAX_BUNDLE_LAYERS = 256  # bundles we write hold a handful (input, results, references)
METRICS_FILE = "metrics.json"
PROVENANCE_FILE = "provenance.json"
TIFF_SUFFIXES = (".tif", ".tiff")
#: layer attributes stored in and restored from a layer TIFF
LAYER_KEYS = (
    "name",
    "scale",
    "translate",
    "rotate",
    "shear",
    "contrast_limits",
    "colormap",
    "blending",
    "gamma",
    "opacity",
    "rgb",
    "units",
    "axis_labels",
)

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
            if key == "shear" and (
                np.allclose(arr, 0) or (arr.shape == (ndim, ndim) and np.allclose(arr, np.eye(ndim)))
            ):
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
    from napari_rrim_sr.io.images import write_image

    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise InputError(f"{path}: layer files are written as .tif / .tiff")
    meta = dict(meta or {})
    if meta.get("multiscale"):
        raise InputError(
            "multiscale layers cannot be written as one TIFF; save the full-resolution level as a plain layer first"
        )
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


def _warn(message: str) -> None:
    """A problem in a file that still opens: a Python warning (napari shows it) and a log line."""
    log.warning(message)
    warnings.warn(message, UserWarning, stacklevel=3)


def _numbers(val, n: int | None = None) -> tuple[float, ...] | None:
    """``val`` as a tuple of finite floats (of length ``n`` if given), else None."""
    if isinstance(val, (str, bytes, Mapping)) or not isinstance(val, (list, tuple)):
        return None
    out = []
    for v in val:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        out.append(float(v))
    if not out or (n is not None and len(out) != n):
        return None
    return tuple(out)


def _matrix(val, nd: int, key: str) -> np.ndarray | None:
    """A rotate/shear value napari accepts: an (nd, nd) matrix, a 2-D rotation angle, or a
    shear vector of nd * (nd - 1) / 2 numbers; finite. Else None."""
    if isinstance(val, (str, bytes, Mapping)):
        return None
    try:
        arr = np.asarray(val, dtype=float)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(arr).all():
        return None
    if arr.shape == (nd, nd) or (key == "rotate" and arr.ndim == 0 and nd == 2):
        return arr
    if key == "shear" and arr.shape == (nd * (nd - 1) // 2,):
        return arr
    return None


def validate_layer_record(rec: Mapping[str, Any], data, rgb_default: bool = False) -> tuple[dict, dict, list[str]]:
    """The typed schema of a layer TIFF's record: ``(layer kwargs, metadata, problems)``.

    Every field of ``rec["layer"]`` is checked for its type and, where it describes axes, its
    length against the data (``scale``/``translate``: ``ndim`` finite numbers; ``contrast_limits``:
    two finite numbers, low <= high; ``opacity`` in 0..1; ``gamma`` > 0; strings for names,
    lists of strings for ``units``/``axis_labels``). Invalid fields are left out and named in
    ``problems``, so a file with damaged metadata still opens (plainly) instead of failing.
    """
    bad: list[str] = []
    layer = rec.get("layer")
    if layer is None:
        layer = {}
    if not isinstance(layer, Mapping):
        bad.append(f"'layer' is {type(layer).__name__}, not an object")
        layer = {}
    rgb = layer.get("rgb", rgb_default)
    if not isinstance(rgb, bool):
        bad.append(f"'rgb' is {rgb!r}, not true/false")
        rgb = rgb_default
    shape = np.shape(data)
    if rgb and not (len(shape) >= 3 and shape[-1] in (3, 4)):
        bad.append(f"'rgb' is true but the data has shape {shape}")
        rgb = False
    nd = len(shape) - (1 if rgb else 0)
    kwargs: dict[str, Any] = {"rgb": rgb}
    for key in LAYER_KEYS:
        if key == "rgb" or key not in layer or layer[key] is None:
            continue
        val = layer[key]
        good: Any = None
        if key in ("name", "colormap", "blending"):
            good = val if isinstance(val, str) else None
        elif key in ("scale", "translate"):
            good = _numbers(val, nd)
            if good is not None and key == "scale" and any(v == 0 for v in good):
                good = None
        elif key == "contrast_limits":
            good = _numbers(val, 2)
            if good is not None and good[0] > good[1]:
                good = None
        elif key in ("rotate", "shear"):
            good = _matrix(val, nd, key)
        elif key == "opacity":
            ok = not isinstance(val, bool) and isinstance(val, (int, float)) and 0 <= val <= 1
            good = float(val) if ok else None
        elif key == "gamma":
            ok = not isinstance(val, bool) and isinstance(val, (int, float)) and math.isfinite(val) and val > 0
            good = float(val) if ok else None
        elif key in ("units", "axis_labels"):
            ok = isinstance(val, (list, tuple)) and len(val) == nd and all(isinstance(v, str) for v in val)
            good = tuple(val) if ok else None
        if good is None:
            bad.append(f"{key!r} = {_short(val)}")
            continue
        kwargs[key] = good
    metadata = rec.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        bad.append(f"'metadata' is {type(metadata).__name__}, not an object")
        metadata = {}
    metadata = dict(metadata)
    prov = rec.get("provenance")
    if prov:
        if isinstance(prov, Mapping):
            metadata[META_KEY] = dict(prov)
        else:
            bad.append(f"'provenance' is {type(prov).__name__}, not an object")
    return kwargs, metadata, bad


def _short(val) -> str:
    text = repr(val)
    return text if len(text) <= 40 else text[:37] + "..."


def read_layer_tiff(path) -> LayerData:
    """``(data, kwargs, "image")`` of a TIFF written by napari-rrim-sr (layer writer or CLI)."""
    from napari_rrim_sr.io.images import read_image

    data, info = read_image(path)
    rec = info.get("provenance")
    if not isinstance(rec, dict):
        raise InputError(f"{path}: not a napari-rrim-sr TIFF (no {META_KEY} metadata)")
    kwargs: dict[str, Any] = {}
    if rec.get("format") == LAYER_FORMAT:
        rgb_default = bool(info.get("rgb"))
        kwargs, metadata, bad = validate_layer_record(rec, data, rgb_default)
        if bad:
            _warn(f"{path}: ignoring invalid layer metadata ({'; '.join(bad)}); the pixels open plainly")
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


def write_bundle(
    path, layers: Sequence[LayerData], *, overwrite: bool = False, compute_metrics: bool = True
) -> list[str]:
    """Write image layers (napari layer-data tuples) into a bundle folder; returns the paths
    written (the folder first). The folder must not exist or be empty (or ``overwrite``)."""
    from napari_rrim_sr.safe_write import atomic_dir

    folder = Path(path)
    if folder.suffix.lower() in TIFF_SUFFIXES:
        raise InputError(f"{folder}: a bundle is a folder; give a name without .tif")
    if folder.exists() and not folder.is_dir():
        raise OutputError(folder, "exists and is not a folder")
    empty = folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir())
    if folder.is_dir() and not empty and not overwrite:
        raise OutputError(folder, "folder exists and is not empty; choose a new name")
    images = [(d, dict(m), t) for d, m, t in layers if t == "image"]
    if not images:
        raise InputError("a comparison bundle needs at least one image layer")

    used: set[str] = set()
    plan = []
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
        plan.append((f"{stem}.tif", role, stem))
    entries = [
        {
            "file": fname,
            "role": role,
            "name": meta.get("name", stem),
            "shape": list(np.shape(data)),
            "dtype": str(np.asarray(data).dtype),
        }
        for (fname, role, stem), (data, meta, _) in zip(plan, images)
    ]
    provenance = {
        e["name"]: jsonable((m.get("metadata") or {}).get(META_KEY))
        for e, (_, m, _) in zip(entries, images)
        if (m.get("metadata") or {}).get(META_KEY)
    }
    metrics = _bundle_metrics(images, entries) if compute_metrics else {}
    from napari_rrim_sr import __version__

    manifest = {
        "format": BUNDLE_FORMAT,
        "version": FORMAT_VERSION,
        "software": f"napari-rrim-sr {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "layers": entries,
        "metrics": METRICS_FILE,
        "provenance": PROVENANCE_FILE,
    }
    names = [e["file"] for e in entries] + [METRICS_FILE, PROVENANCE_FILE, MANIFEST]

    def build(tmp: Path) -> None:
        # layers first, the manifest last: a folder with bundle.json is complete
        for e, (data, meta, _) in zip(entries, images):
            write_layer_tiff(tmp / e["file"], data, meta)
        for name, obj in ((METRICS_FILE, metrics), (PROVENANCE_FILE, provenance), (MANIFEST, manifest)):
            text = json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n"
            (tmp / name).write_text(text, encoding="utf-8")  # direct-write: inside atomic_dir's temporary

    # the whole folder appears at once (an old one is replaced only with overwrite, or if empty)
    atomic_dir(folder, build, overwrite=overwrite or empty)
    return [str(folder)] + [str(folder / n) for n in names]


def _bundle_metrics(images, entries) -> dict:
    """Self-check metrics recorded in result layers, and SR/bicubic scored against any layer of
    the SR layer's shape (a high-resolution reference)."""
    from napari_rrim_sr.quality.layer_metrics import compare_arrays, metrics_data_range

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
                res = {"model": compare_arrays(d_sr, ref, rgb=rgb, data_range=dr, border=4, y_channel=rgb)}
                conv = res["model"].pop("convention")
                for e_b, d_b, _ in bics:
                    if tuple(np.shape(d_b)) == tuple(np.shape(d_sr)):
                        res["bicubic"] = compare_arrays(d_b, ref, rgb=rgb, data_range=dr, border=4, y_channel=rgb)
                        res["bicubic"].pop("convention", None)
                        break
                res["convention"] = conv
                out["against_reference"][f"{e_sr['name']} vs {e_ref['name']}"] = res
            except Exception as exc:  # noqa: BLE001 - metrics are a bonus, never block a save
                log.warning("could not score %s against %s: %s", e_sr["name"], e_ref["name"], exc)
    return out


def _inside_file(folder: Path, name) -> Path | None:
    """``folder / name`` when ``name`` is a plain file name whose file (after symlinks) lies in
    ``folder``; None for names with separators, ``..``, or links pointing out of the bundle."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return None
    f = folder / name
    try:
        real, root = f.resolve(), folder.resolve()
    except (OSError, RuntimeError):
        return None
    if real.parent != root:
        return None
    return f


def _manifest(folder: Path) -> dict | None:
    try:
        mf = _inside_file(folder, MANIFEST)
        if mf is None or not mf.is_file() or mf.stat().st_size > 10 * 2**20:
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
    each layer's ``metadata["bundle_metrics"]``.

    The manifest is validated: ``layers`` must be a list of objects whose ``file`` is a plain
    file name in the folder. An entry that is malformed, missing, or a symlink pointing out of
    the bundle is skipped with a warning naming it (never followed); a bundle with no readable
    layer is an :class:`InputError`.
    """
    folder = Path(path)
    manifest = _manifest(folder)
    if manifest is None:
        raise InputError(f"{folder}: not a napari-rrim-sr comparison bundle (no valid {MANIFEST})")
    read_guard.register_read(folder, tree=True)
    metrics: Any = {}
    mfile = _inside_file(folder, METRICS_FILE)
    if mfile is not None and mfile.is_file():
        try:
            metrics = json.loads(mfile.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metrics = {}
        if not isinstance(metrics, dict):
            _warn(f"{mfile}: not a JSON object; bundle metrics ignored")
            metrics = {}
    elif (folder / METRICS_FILE).is_symlink():
        _warn(f"{folder / METRICS_FILE}: a link out of the bundle; not followed")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise InputError(f"{folder / MANIFEST}: 'layers' is {type(layers).__name__}, not a list of layers")
    if len(layers) > MAX_BUNDLE_LAYERS:
        raise InputError(f"{folder / MANIFEST}: lists {len(layers)} layers; a bundle holds at most {MAX_BUNDLE_LAYERS}")
    out = []
    seen: set[Path] = set()
    repeats = 0
    total = 0
    budget = _bundle_budget()
    for i, entry in enumerate(layers):
        if not isinstance(entry, dict):
            _warn(f"{folder / MANIFEST}: layer {i} is {type(entry).__name__}, not an object; skipped")
            continue
        name = entry.get("file")
        f = _inside_file(folder, name)
        if f is None:
            _warn(
                f"{folder}: layer {i} file {_short(name)} is not a file inside the bundle "
                "(a path or a link pointing out of it); skipped, not followed"
            )
            continue
        key = f  # the name listed (a link inside the bundle is its own layer)
        if key in seen:  # a crafted manifest listing one file many times must not cost memory each time
            repeats += 1
            continue
        seen.add(key)
        try:
            total += f.stat().st_size
        except OSError:
            pass
        if total > budget:
            raise InputError(
                f"{folder}: its layers need more than {budget >> 20} MiB (the memory available to read "
                "a bundle); open its TIFF files one by one"
            )
        try:
            data, kwargs, kind = read_layer_tiff(f)
        except InputError as exc:
            _warn(f"{exc}; layer skipped")
            continue
        total += max(0, int(getattr(data, "nbytes", 0)) - f.stat().st_size)
        if total > budget:
            raise InputError(
                f"{folder}: its layers need more than {budget >> 20} MiB (the memory available to read "
                "a bundle); open its TIFF files one by one"
            )
        role = entry.get("role")
        kwargs["metadata"]["bundle_role"] = role if isinstance(role, str) else None
        if metrics:
            kwargs["metadata"]["bundle_metrics"] = metrics
        out.append((data, kwargs, kind))
    if repeats:
        _warn(f"{folder / MANIFEST}: {repeats} layer entries repeat a file already listed; read once")
    if not out:
        raise InputError(f"{folder}: no readable layer in the bundle")
    return out


def _bundle_budget() -> int:
    """Bytes a bundle's layers may take together: half the available memory (2 GiB if unknown)."""
    from napari_rrim_sr.engine.memory import available_memory

    avail = available_memory()
    return int(0.5 * avail) if avail else 2 << 30


def _png_is_ours(p: Path) -> bool:
    """PNGs this plugin opens: 16-bit RGB(A) (napari's builtin reader keeps 8 of the 16 bits)
    and PNGs carrying our provenance (so it reaches the layer's metadata)."""
    from PIL import Image

    from napari_rrim_sr.io.images import PROVENANCE_KEY, is_rgb16_png

    if is_rgb16_png(p):
        return True
    with Image.open(p) as im:  # parses the chunks before IDAT only, where ours are written
        return PROVENANCE_KEY in im.info


def read_png(path) -> LayerData:
    """``(data, kwargs, "image")`` of a PNG at full bit depth, with our provenance if present."""
    from napari_rrim_sr.io.images import read_image

    data, info = read_image(path)
    kwargs: dict[str, Any] = {"rgb": bool(info.get("rgb")), "name": Path(path).stem, "metadata": {}}
    if isinstance(info.get("provenance"), dict):
        kwargs["metadata"][META_KEY] = info["provenance"]
    return data, kwargs, "image"


def owned_reader_target(path) -> str | None:
    """ "bundle", "tiff", "png" or None for a path napari asks about (never raises)."""
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
