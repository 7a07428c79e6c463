"""Reading and writing images for the CLI: PNG/JPEG via pillow (16-bit RGB(A) PNG via
imagecodecs), TIFF (multi-page, OME, ImageJ, 16-bit, float, any compression imagecodecs
decodes) via tifffile, keeping dtype, axes, pixel size and our provenance.

Why here and not in the engine: the engine works on arrays; files add axes metadata (which
axes are Z/T/C, whether 4 samples are RGBA or RGB+NIR), physical pixel sizes that must shrink
by the upscaling factor, and the rule that an output never silently replaces a file.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from napari_rrim_sr import read_guard
from napari_rrim_sr.errors import InputError
from napari_rrim_sr.jsonable import jsonable
from napari_rrim_sr.safe_write import atomic_write

PROVENANCE_KEY = "napari_rrim_sr"
PIL_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
TIFF_SUFFIXES = {".tif": "tiff", ".tiff": "tiff"}
SUFFIXES = tuple(PIL_SUFFIXES) + tuple(TIFF_SUFFIXES)
#: read (lossless WebP packs for training, BMP) but never written: outputs keep PNG/JPEG/TIFF
READ_ONLY_SUFFIXES = {".webp": "webp", ".bmp": "bmp"}
#: TIFF tags that make a file a GeoTIFF (ModelPixelScale, ModelTiepoint, GeoKeyDirectory)
_GEOTIFF_TAGS = (33550, 33922, 34735)
#: GeoTIFF and GDAL tags carried over to outputs (code -> TIFF type), georeferencing kept
_GEOTIFF_TAG_TYPES = {33550: 12, 33922: 12, 34264: 12, 34735: 3, 34736: 12, 34737: 2, 42112: 2, 42113: 2}
_MICRO = {"µm", "um", "micron", "microns", "micrometer", "\\u00B5m"}


def format_for(path, *, reading: bool = False) -> str:
    """The format name for ``path``'s suffix; ``reading`` also admits the read-only formats."""
    suffix = Path(path).suffix.lower()
    fmt = PIL_SUFFIXES.get(suffix) or TIFF_SUFFIXES.get(suffix)
    if fmt is None and reading:
        fmt = READ_ONLY_SUFFIXES.get(suffix)
    if fmt is None:
        known = SUFFIXES + (tuple(READ_ONLY_SUFFIXES) if reading else ())
        raise InputError(f"{path}: unsupported file type {suffix or '(none)'!r}; use one of {', '.join(known)}")
    return fmt


# ---------------------------------------------------------------------------------------
# reading


def read_image(path) -> tuple[np.ndarray, dict]:
    """Read an image file into an array and an ``info`` dict.

    ``info`` holds: ``path``, ``format``, ``shape``, ``dtype``, ``axes`` (tifffile letters such
    as ``"YX"``, ``"ZYX"``, ``"YXS"``; S = colour samples), ``spatial_axes`` and ``rgb`` (what
    the engine should use), ``pixel_size`` ((y, x) or None) and ``unit``, ``dpi`` (PNG/JPEG),
    ``provenance`` (ours, if the file was written by napari-rrim-sr), ``photometric``,
    ``extrasamples`` and ``warnings`` (things the user should know, e.g. a mode conversion),
    ``stored_axes`` / ``stored_shape`` (the file's own layout) and ``stored_order`` (the array is
    ``np.transpose(stored, stored_order)``), against which ``--axes`` is read (:func:`apply_axes`).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file")
    if not p.is_file():
        raise InputError(f"{path}: not a file")
    read_guard.register_read(p, tree=False)  # never replaced by this command's writes
    fmt = format_for(p, reading=True)
    try:
        if fmt == "tiff":
            arr, info = _read_tiff(p)
        else:
            arr, info = _read_pil(p)
    except InputError:
        raise
    except Exception as exc:  # corrupt / truncated / not what the suffix says
        raise InputError(f"{path}: cannot read as {fmt.upper()} ({type(exc).__name__}: {exc})") from None
    info.update(path=str(p), format=fmt, shape=tuple(arr.shape), dtype=str(arr.dtype))
    if arr.size == 0:
        raise InputError(f"{path}: the image is empty (shape {arr.shape})")
    axes = info.get("axes") or ""
    if "Y" in axes and "X" in axes:
        info["spatial_axes"] = (axes.index("Y"), axes.index("X"))
    else:
        info.setdefault("spatial_axes", None)
    return arr, info


def decode_image(path) -> tuple[np.ndarray, dict]:
    """The project's one image decoder (CLI, napari reader and training read files through it).

    Same as :func:`read_image`. Decisions every caller shares: palette images become RGB(A);
    gray + alpha (PNG ``LA``) becomes RGBA with the gray value in R, G and B and the alpha kept
    as the 4th sample (so a colour model sees the gray image and alpha stays alpha); 16-bit
    files stay 16-bit (pillow's 32-bit ``I`` mode is narrowed back to uint16); TIFF colour
    samples are moved to the last axis (``info["stored_axes"]`` keeps the file's own order).
    Use :func:`as_planes` for a stack of 2-D planes.
    """
    return read_image(path)


def as_planes(arr: np.ndarray, info: dict) -> tuple[np.ndarray, bool]:
    """``(planes, color)``: the image as ``(N, H, W, C)`` with C = colour samples (RGB/RGBA,
    ``color=True``) or 1 (every other axis - Z, T, bands - becomes planes). A trailing alpha
    band of a gray image (2 samples, gray + alpha) is dropped: it is not image content."""
    axes = str(info.get("axes") or "")
    if len(axes) != arr.ndim or "Y" not in axes or "X" not in axes:
        raise InputError(f"{info.get('path', 'image')}: axes {axes!r} have no Y/X plane for shape {arr.shape}")
    color = bool(info.get("rgb")) and axes.endswith("S")
    if (
        not color
        and axes.endswith("C")
        and arr.shape[-1] == 2
        and any("alpha" in str(e) for e in info.get("extrasamples") or ())
    ):
        arr, axes = arr[..., 0], axes[:-1]
    order = [i for i, a in enumerate(axes) if a not in "YXS"] + [axes.index("Y"), axes.index("X")]
    if color:
        order.append(axes.index("S"))
    t = np.transpose(arr, order)
    h, w = t.shape[-3:-1] if color else t.shape[-2:]
    c = t.shape[-1] if color else 1
    return np.ascontiguousarray(t.reshape(-1, h, w, c)), color


def apply_axes(arr: np.ndarray, info: dict, axes: str) -> tuple[np.ndarray, str, tuple[int, int], bool]:
    """Apply a user's axes string (``--axes``) to an image from :func:`read_image`.

    The letters describe the file **as stored** (``info["stored_axes"]`` order, e.g. ``CYX`` or
    ``SYX`` for a planar RGB TIFF), not the array after the reader moved colour samples last.
    Returns ``(array, array_axes, spatial_axes, rgb)``: S (samples) is moved to the last axis and
    is run through the colour model when it holds 3 or 4 samples; any other S, and C, are bands
    (each upscaled on its own, like C). Y and X are required once each; letters may not repeat.
    Stored X before Y (``XY``, ``ZXY``) is transposed to Y before X (the returned axes say so).
    """
    a = str(axes).strip().upper()
    stored = tuple(info.get("stored_shape") or arr.shape)
    order = tuple(info.get("stored_order") or range(arr.ndim))
    if len(a) != len(stored):
        raise InputError(
            f"--axes {axes!r} has {len(a)} letters but the file stores {len(stored)} dimensions "
            f"{stored} (as {info.get('stored_axes') or '?'})"
        )
    if a.count("Y") != 1 or a.count("X") != 1:
        raise InputError(f"--axes {axes!r} must contain Y and X exactly once")
    if len(set(a)) != len(a):
        raise InputError(f"--axes {axes!r} repeats a letter")
    if not a.isalpha():
        raise InputError(f"--axes {axes!r}: one letter per dimension (e.g. ZYX, CYX, YXS)")
    arr_axes = "".join(a[i] for i in order)
    if "S" in arr_axes and not arr_axes.endswith("S"):
        k = arr_axes.index("S")
        arr = np.ascontiguousarray(np.moveaxis(arr, k, -1))
        arr_axes = arr_axes[:k] + arr_axes[k + 1 :] + "S"
    y, x = arr_axes.index("Y"), arr_axes.index("X")
    if x < y:  # stored X before Y (e.g. XY, ZXY): the engine works on (..., Y, ..., X), so swap them
        arr = np.ascontiguousarray(np.swapaxes(arr, y, x))
        swapped = list(arr_axes)
        swapped[x], swapped[y] = "Y", "X"
        arr_axes = "".join(swapped)
    rgb = arr_axes.endswith("S") and arr.shape[-1] in (3, 4)
    if arr_axes.endswith("S") and not rgb:
        arr_axes = arr_axes[:-1] + "C"
    return arr, arr_axes, (arr_axes.index("Y"), arr_axes.index("X")), rgb


def _read_pil(p: Path) -> tuple[np.ndarray, dict]:
    from PIL import Image

    warnings: list[str] = []
    with Image.open(p) as im:
        im.load()
        mode = im.mode
        meta = dict(im.info)
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > 1:
            warnings.append(f"{n_frames} frames: only the first is read")
        if mode == "1":
            im = im.convert("L")
        elif mode == "P":
            im = im.convert("RGBA" if "transparency" in meta else "RGB")
            warnings.append("palette image converted to RGB(A)")
        elif mode in ("LA", "PA"):
            im = im.convert("RGBA")
            warnings.append(f"{mode} image converted to RGBA")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
            im = im.convert("RGB")
            warnings.append(f"{mode} image converted to RGB")
        arr = np.asarray(im)
    if im.mode == "I" and arr.dtype.kind in "iu" and (arr.size == 0 or (arr.min() >= 0 and arr.max() <= 65535)):
        arr = arr.astype(np.uint16)  # pillow's 32-bit mode for 16-bit gray files: the file is 16-bit
    if mode in ("RGB", "RGBA") and is_rgb16_png(p):
        # pillow would drop the low byte of every sample; its decode above is still what
        # gives us the text chunks that follow the image data (foreign files put them there)
        arr = read_png16(p)
    if not arr.flags.writeable:
        arr = arr.copy()
    rgb = arr.ndim == 3
    info: dict[str, Any] = {
        "axes": "YXS" if rgb else "YX",
        "rgb": rgb,
        "mode": mode,
        "dpi": tuple(float(v) for v in meta["dpi"]) if "dpi" in meta else None,
        "pixel_size": None,
        "unit": None,
        "photometric": "rgb" if rgb else "minisblack",
        "extrasamples": ("unassalpha",) if rgb and arr.shape[-1] == 4 else (),
        "warnings": warnings,
        "provenance": _parse_provenance(meta.get(PROVENANCE_KEY), wrapped=False)
        or _parse_provenance(meta.get("comment"), wrapped=True),
    }
    info["stored_axes"], info["stored_shape"] = info["axes"], tuple(arr.shape)
    info["stored_order"] = tuple(range(arr.ndim))
    if info["dpi"]:
        info["pixel_size"] = (2.54 / info["dpi"][1], 2.54 / info["dpi"][0])
        info["unit"] = "cm"
    return arr, info


def read_png16(path) -> np.ndarray:
    """Decode a 16-bit PNG (any colour type) at full depth with imagecodecs' libpng.

    Pillow opens 16-bit RGB(A) PNGs as 8-bit (it keeps only the high byte), so those files
    are decoded here instead; gray and gray+alpha PNGs come back as (H, W) and (H, W, 2).
    """
    import imagecodecs

    arr = imagecodecs.png_decode(Path(path).read_bytes())
    if arr.dtype != np.uint16:
        raise InputError(f"{path}: expected a 16-bit PNG, libpng decoded {arr.dtype}")
    return arr


def is_rgb16_png(path) -> bool:
    """True for a 16-bit RGB or RGBA PNG (IHDR bit depth 16, colour type 2 or 6): the PNGs
    pillow decodes to 8 bits, read here with :func:`read_png16` instead."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 6)


def _parse_provenance(raw, wrapped: bool) -> dict | None:
    """Our provenance from a PNG text chunk (the JSON itself) or a JPEG comment (JSON with our
    key at the top level: a foreign JSON comment is not ours)."""
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        obj = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if not isinstance(obj, dict):
        return None
    if wrapped:
        inner = obj.get(PROVENANCE_KEY)
        return inner if isinstance(inner, dict) else None
    return obj


#: Where to go when a file does not fit in memory: the chunked, lazy path.
LAZY_HINT = (
    "use the lazy path: 'napari-rrim-sr upscale FILE.tif -o OUT --scheduler threads' reads it chunk "
    "by chunk into an OME-Zarr store (or convert it to OME-Zarr)"
)


def _check_eager_read(p: Path, shape: tuple, dtype) -> None:
    """Refuse an eager read the available memory cannot hold (bounded by what is available, not
    by what a crafted header declares), naming the lazy path that works."""
    from napari_rrim_sr.engine.memory import check_fits_in_memory

    n = 1
    for s in shape:
        n *= int(s)
    check_fits_in_memory(
        n * np.dtype(dtype).itemsize, f"{p}: reading {shape} {np.dtype(dtype)}", suggestion=LAZY_HINT, fraction=0.5
    )


def _read_tiff(p: Path) -> tuple[np.ndarray, dict]:
    import tifffile

    warnings: list[str] = []
    with tifffile.TiffFile(p) as tf:
        if not tf.series:
            raise InputError(f"{p}: TIFF has no image data")
        series = tf.series[0]
        if len(tf.series) > 1:
            warnings.append(f"{len(tf.series)} image series: only the first is read")
        _check_eager_read(p, tuple(series.shape), series.dtype)  # a 2 MB file may declare 32768^2
        arr = series.asarray()
        axes = series.axes
        page = tf.pages[0]
        photometric = getattr(page.photometric, "name", str(page.photometric)).lower()
        compression = getattr(page.compression, "name", str(page.compression)).lower()
        if photometric == "ycbcr" and compression == "jpeg":
            photometric = "rgb"  # the JPEG codec hands back RGB samples (tifffile's default)
        extrasamples = tuple(getattr(e, "name", str(e)).lower() for e in (page.extrasamples or ()))
        is_geo = any(t in page.tags for t in _GEOTIFF_TAGS)
        pixel_size, unit = _tiff_pixel_size(tf, page)
        provenance = None
        if tf.shaped_metadata:
            shaped = tf.shaped_metadata[0]
            provenance = shaped.get(PROVENANCE_KEY)
            if shaped.get("pixel_size") and shaped.get("unit"):  # ours: exact, with its unit
                ours = _pixel_size_field(shaped["pixel_size"], shaped["unit"])
                if ours is None:
                    warnings.append(
                        f"ignoring invalid pixel_size {shaped['pixel_size']!r} / unit "
                        f"{shaped['unit']!r} in the metadata"
                    )
                else:
                    pixel_size, unit = ours
        geotags = []
        for code, dtype in _GEOTIFF_TAG_TYPES.items():
            tag = page.tags.get(code)
            if tag is not None:
                value = tag.value
                geotags.append((code, dtype, value))
        info: dict[str, Any] = {
            "ome": bool(tf.is_ome),
            "imagej": bool(tf.is_imagej),
            "geotiff": is_geo,
            "geotags": geotags,
            "photometric": photometric,
            "extrasamples": extrasamples,
            "compression": compression,
            "pixel_size": pixel_size,
            "unit": unit,
            "provenance": provenance,
            "warnings": warnings,
            "dpi": None,
        }
    if len(axes) != arr.ndim:  # should not happen; fall back to the shape
        axes = "Q" * (arr.ndim - 2) + "YX"
    info["stored_axes"], info["stored_shape"] = axes, tuple(arr.shape)
    order = tuple(range(arr.ndim))
    # colour samples must be the last axis for the engine (planar TIFFs come as SYX)
    if "S" in axes and axes.index("S") != len(axes) - 1:
        k = axes.index("S")
        order = order[:k] + order[k + 1 :] + (k,)
        arr = np.ascontiguousarray(np.moveaxis(arr, k, -1))
        axes = axes[:k] + axes[k + 1 :] + "S"
    info["stored_order"] = order
    n_s = arr.shape[-1] if axes.endswith("S") else 0
    rgb = axes.endswith("S") and n_s in (3, 4) and photometric == "rgb"
    if rgb and n_s == 4 and is_geo:
        # remote-sensing products store NIR as a 4th sample and often tag it as alpha:
        # treat the samples as independent bands (per-channel upscaling) rather than RGBA
        rgb = False
        warnings.append("GeoTIFF with 4 samples: treated as 4 bands (e.g. RGB+NIR), not RGBA")
    if axes.endswith("S") and not rgb:
        axes = axes[:-1] + "C"
    info["axes"] = axes
    info["rgb"] = rgb
    return arr, info


def _pixel_size_field(ps, unit) -> tuple[tuple[float, float], str] | None:
    """Our stored ``pixel_size`` (two finite positive numbers) and ``unit`` (a string), or None."""
    if not isinstance(unit, str) or not isinstance(ps, (list, tuple)) or len(ps) != 2:
        return None
    try:
        y, x = (float(v) for v in ps)
    except (TypeError, ValueError):
        return None
    if isinstance(ps[0], bool) or isinstance(ps[1], bool) or not (np.isfinite([y, x]).all() and y > 0 and x > 0):
        return None
    return (y, x), unit


def _tiff_pixel_size(tf, page) -> tuple[tuple[float, float] | None, str | None]:
    """(y, x) pixel size and unit from OME, ImageJ or the resolution tags, if stated."""
    try:
        if tf.is_ome and tf.ome_metadata:
            import re

            xml = tf.ome_metadata
            px = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml)
            py = re.search(r'PhysicalSizeY="([0-9.eE+-]+)"', xml)
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
            if px and py:
                return (float(py.group(1)), float(px.group(1))), (unit.group(1) if unit else "µm")
        xr = page.tags.get("XResolution")
        yr = page.tags.get("YResolution")
        if xr is None or yr is None:
            return None, None
        xres = xr.value[0] / xr.value[1]
        yres = yr.value[0] / yr.value[1]
        if xres <= 0 or yres <= 0 or (xres == 1 and yres == 1):
            return None, None  # tifffile's default (1, 1) carries no information
        unit = None
        if tf.is_imagej and tf.imagej_metadata:
            unit = tf.imagej_metadata.get("unit")
            if isinstance(unit, str):
                unit = unit.encode().decode("unicode_escape") if "\\u" in unit else unit
        if unit is None:
            ru = page.tags.get("ResolutionUnit")
            code = int(ru.value) if ru is not None else 2
            unit = {2: "inch", 3: "cm"}.get(code)
            if unit is None:
                return None, None
        return (1.0 / yres, 1.0 / xres), unit
    except Exception:  # metadata is a courtesy: never fail a read over it
        return None, None


# ---------------------------------------------------------------------------------------
# writing


def write_image(
    path,
    array,
    *,
    like: dict | None = None,
    metadata: dict | None = None,
    scale: int | float | None = None,
    overwrite: bool = False,
    axes: str | None = None,
    rgb: bool | None = None,
    protect: Iterable = (),
) -> Path:
    """Write ``array`` in the format of ``path``'s suffix, keeping its dtype.

    ``like`` is the ``info`` of the source image (from :func:`read_image`): its axes, colour
    interpretation and pixel size are carried over, the pixel size divided by ``scale``.
    ``metadata`` (our provenance) goes into the TIFF ImageDescription JSON, a PNG text chunk or
    a JPEG comment, under the key ``napari_rrim_sr``.

    Written through :func:`napari_rrim_sr.safe_write.atomic_write`: an existing file is kept
    unless ``overwrite=True``; the source named by ``like["path"]`` and every path in
    ``protect`` (what the command reads) is never replaced, even through a symlink or hard link;
    missing folders are created, and removed again if the write fails
    (:class:`~napari_rrim_sr.errors.OutputError`).
    """
    p = Path(path)
    fmt = format_for(p)
    arr = np.asarray(array)
    like = dict(like or {})
    if arr.size == 0:
        raise InputError(f"{p}: refusing to write an empty image (shape {arr.shape})")
    if arr.dtype.kind in "bcOUSV":
        raise InputError(f"{p}: cannot write dtype {arr.dtype}")
    prov = jsonable(metadata) if metadata else None
    guarded = [*([like["path"]] if like.get("path") else []), *protect]

    def write(tmp: Path) -> None:
        if fmt == "tiff":
            _write_tiff(tmp, arr, like, prov, scale, axes, rgb)
        else:
            _write_pil(tmp, arr, fmt, like, prov, scale)

    return atomic_write(p, write, overwrite=overwrite, protect=guarded)


def _scaled_pixel_size(like: dict, scale) -> tuple[tuple[float, float] | None, str | None]:
    ps, unit = like.get("pixel_size"), like.get("unit")
    if not ps:
        return None, unit
    f = float(scale or 1)
    return (float(ps[0]) / f, float(ps[1]) / f), unit


def _write_pil(tmp: Path, arr: np.ndarray, fmt: str, like: dict, prov, scale) -> None:
    from PIL import Image, PngImagePlugin

    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    ok_shape = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))
    if not ok_shape:
        raise InputError(f"{fmt.upper()} holds a 2-D gray, RGB or RGBA image, not shape {arr.shape}; write a .tif")
    if fmt == "jpeg":
        if arr.dtype != np.uint8 or (arr.ndim == 3 and arr.shape[-1] == 4):
            raise InputError(
                f"JPEG holds 8-bit gray or RGB only (got {arr.dtype}, shape {arr.shape}); write a .tif or .png"
            )
    elif arr.dtype == np.uint16 and arr.ndim == 3:
        _write_png16(tmp, arr, like, prov, scale)  # pillow cannot write 16-bit RGB(A)
        return
    elif arr.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{fmt.upper()} cannot hold {arr.dtype} data; write a .tif to keep the dtype")
    im = Image.fromarray(np.ascontiguousarray(arr))
    kw: dict[str, Any] = {}
    dpi = like.get("dpi")
    if dpi and scale:
        kw["dpi"] = (float(dpi[0]) * float(scale), float(dpi[1]) * float(scale))
    text = json.dumps({PROVENANCE_KEY: prov}) if prov else None
    if fmt == "png":
        if text:
            info = PngImagePlugin.PngInfo()
            info.add_text(PROVENANCE_KEY, json.dumps(prov))
            kw["pnginfo"] = info
        im.save(tmp, format="PNG", **kw)
    else:
        if text:
            kw["comment"] = text.encode("utf-8")
        im.save(tmp, format="JPEG", quality=95, subsampling=0, **kw)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _write_png16(tmp: Path, arr: np.ndarray, like: dict, prov, scale) -> None:
    """16-bit RGB(A) PNG via imagecodecs, with the dpi (pHYs) and provenance (tEXt) chunks
    pillow would have written, inserted after IHDR so any PNG reader finds them."""
    import imagecodecs

    png = bytes(imagecodecs.png_encode(np.ascontiguousarray(arr)))
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
    extra = b""
    dpi = like.get("dpi")
    if dpi and scale:
        ppm = [int(round(float(d) * float(scale) / 0.0254)) for d in dpi]
        extra += _png_chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1))
    if prov:
        text = json.dumps(prov)  # ASCII (ensure_ascii), so tEXt's Latin-1 is enough
        extra += _png_chunk(b"tEXt", PROVENANCE_KEY.encode("latin-1") + b"\0" + text.encode("latin-1"))
    tmp.write_bytes(png[:ihdr_end] + extra + png[ihdr_end:])  # direct-write: atomic_write's temporary


def _write_tiff(tmp: Path, arr: np.ndarray, like: dict, prov, scale, axes, rgb) -> None:
    import tifffile

    if axes is None:
        axes = like.get("axes") if like.get("shape") is not None and len(like["shape"]) == arr.ndim else None
    if rgb is None:
        rgb = bool(like.get("rgb")) if like else (arr.ndim >= 3 and arr.shape[-1] in (3, 4))
    if axes is not None and len(axes) != arr.ndim:
        raise InputError(f"axes {axes!r} do not match an array with {arr.ndim} dimensions")
    rgb = bool(rgb) and arr.ndim >= 3 and arr.shape[-1] in (3, 4)
    if rgb and axes is not None and not axes.endswith("S"):
        axes = axes[:-1] + "S"
    meta: dict[str, Any] = {}
    if axes:
        meta["axes"] = axes
    kw: dict[str, Any] = {"photometric": "rgb" if rgb else "minisblack"}
    if rgb and arr.shape[-1] == 4:
        extra = tuple(like.get("extrasamples") or ()) or ("unassalpha",)
        kw["extrasamples"] = [e for e in extra][:1]
    elif not rgb and arr.ndim >= 3 and like.get("photometric") == "rgb" and arr.shape[-1] in (3, 4):
        # bands written as separate planes would lose the sample layout: keep them contig
        kw["photometric"] = "minisblack"
    ps, unit = _scaled_pixel_size(like, scale)
    if ps:
        meta["pixel_size"] = list(ps)
        meta["unit"] = unit
        u = (unit or "").strip()
        if u in _MICRO:
            kw["resolution"] = (1e4 / ps[1], 1e4 / ps[0])
            kw["resolutionunit"] = "CENTIMETER"
        elif u in ("cm", "centimeter"):
            kw["resolution"] = (1.0 / ps[1], 1.0 / ps[0])
            kw["resolutionunit"] = "CENTIMETER"
        elif u in ("inch", "in"):
            kw["resolution"] = (1.0 / ps[1], 1.0 / ps[0])
            kw["resolutionunit"] = "INCH"
    if scale:
        meta["upscaled_by"] = scale
    extratags = []
    for code, dtype, value in like.get("geotags") or ():
        if code == 33550 and scale:  # ModelPixelScale: ground size of a pixel shrinks
            value = (float(value[0]) / float(scale), float(value[1]) / float(scale)) + tuple(value[2:])
        elif code == 34264 and scale:  # ModelTransformation: scale the raster->model matrix
            v = list(value)
            for i in (0, 1, 4, 5):
                v[i] = float(v[i]) / float(scale)
            value = tuple(v)
        if isinstance(value, str):
            extratags.append((code, dtype, 0, value, True))
        else:
            vals = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else (value,)
            extratags.append((code, dtype, len(vals), vals, True))
    if extratags:
        kw["extratags"] = extratags
    if prov:
        meta[PROVENANCE_KEY] = prov
    tifffile.imwrite(tmp, arr, metadata=meta, **kw)
