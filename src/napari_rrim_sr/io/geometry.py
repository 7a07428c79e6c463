"""Layer logic of the napari integration, without Qt (and without importing napari).

The widgets in :mod:`napari_rrim_sr._napari` only wire these functions to the GUI, so every
rule about result layers is testable headless:

* naming: ``"<name> RRIM x4"`` and ``"<name> bicubic x4"``;
* geometry: a source pixel ``i`` with scale ``s`` and translate ``t`` covers the world interval
  ``[t + (i - 1/2) s, t + (i + 1/2) s]``; its ``f x f`` sub-pixels must tile exactly that
  interval, so the result has ``scale = s / f`` and ``translate = t - s/2 + s/(2f)`` along each
  spatial axis (``t - s/2 + s/8`` for x4). With a rotation/shear the same offset is applied
  through the layer's linear transform; an extra ``affine`` is copied unchanged. Non-spatial
  axes keep their scale; a single processed slice is placed at its index;
* appearance: contrast limits (when the dtype is unchanged), colormap, blending, gamma,
  opacity, units and axis labels copied;
* provenance (:func:`napari_rrim_sr.pipeline.build_provenance`): what produced the layer, stored
  under ``metadata["napari_rrim_sr"]``.

Planning and running an upscale (dtype and memory checks, slices, model and normalisation, the
engine call, the check) is :mod:`napari_rrim_sr.pipeline`; metrics of layers
:mod:`napari_rrim_sr.quality.layer_metrics`.

A "source" here is a mapping (see :func:`source_info`) or any object with napari
``Image``-layer attributes.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from napari_rrim_sr.errors import InputError

#: key of our provenance dict in a layer's ``metadata`` (and in files' metadata)
META_KEY = "napari_rrim_sr"

KIND_LABELS = {"rrim": "RRIM", "bicubic": "bicubic"}
#: napari renames a repeated name "<name> [1]", "<name> [2]"…: a second run's results keep that suffix
_RESULT_NAME = re.compile(r"^(?P<base>.*) (?P<kind>RRIM|bicubic) x(?P<factor>\d+)(?P<dup> \[\d+\])?$")


# -- names ---------------------------------------------------------------------------------


def result_name(source_name: str, kind: str = "rrim", factor: int = 4) -> str:
    """``"<name> RRIM x4"`` (kind ``"rrim"``) or ``"<name> bicubic x4"`` (kind ``"bicubic"``)."""
    try:
        label = KIND_LABELS[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {sorted(KIND_LABELS)}, not {kind!r}") from None
    return f"{source_name} {label} x{int(factor)}"


def parse_result_name(name: str) -> tuple[str, str, int] | None:
    """Inverse of :func:`result_name`: ``(base, kind, factor)`` or None for other names
    (napari's `` [n]`` suffix of a repeated name is accepted and dropped)."""
    m = _RESULT_NAME.match(name)
    if not m:
        return None
    kind = "rrim" if m["kind"] == "RRIM" else "bicubic"
    return m["base"], kind, int(m["factor"])


def sibling_name(name: str, kind: str) -> str | None:
    """The name of the other result of the same run (RRIM <-> bicubic), or None; a second run's
    ``"cells RRIM x4 [1]"`` has the sibling ``"cells bicubic x4 [1]"``."""
    m = _RESULT_NAME.match(name)
    if m is None:
        return None
    return result_name(m["base"], kind, int(m["factor"])) + (m["dup"] or "")


# -- source description --------------------------------------------------------------------


def _colormap_of(layer) -> Any:
    cmap = getattr(layer, "colormap", None)
    return cmap


def source_info(layer) -> dict:
    """The attributes of a napari image layer (or a mapping with the same keys) that the result
    layers need. Works on ``napari.layers.Image`` without importing napari."""
    if isinstance(layer, Mapping):
        info = dict(layer)
        info.setdefault("ndim", len(info.get("scale", ())) or None)
        return info
    data = layer.data
    multiscale = bool(getattr(layer, "multiscale", False))
    base = data[0] if multiscale else data
    ndim = int(layer.ndim)
    info = {
        "name": str(layer.name),
        "ndim": ndim,
        "rgb": bool(getattr(layer, "rgb", False)),
        "multiscale": multiscale,
        "shape": tuple(int(n) for n in base.shape),
        "dtype": np.dtype(base.dtype),
        "scale": tuple(float(v) for v in layer.scale),
        "translate": tuple(float(v) for v in layer.translate),
        "rotate": np.asarray(getattr(layer, "rotate", np.eye(ndim)), dtype=float),
        "shear": np.asarray(getattr(layer, "shear", np.zeros(ndim * (ndim - 1) // 2)), dtype=float),
        "affine": getattr(getattr(layer, "affine", None), "affine_matrix", None),
        "contrast_limits": tuple(float(v) for v in getattr(layer, "contrast_limits", ()) or ()) or None,
        "colormap": _colormap_of(layer),
        "blending": str(getattr(layer, "blending", "translucent")),
        "gamma": float(getattr(layer, "gamma", 1.0)),
        "opacity": float(getattr(layer, "opacity", 1.0)),
        "metadata": dict(getattr(layer, "metadata", {}) or {}),
    }
    units = getattr(layer, "units", None)
    if units is not None:
        info["units"] = tuple(str(u) for u in units)
    labels = getattr(layer, "axis_labels", None)
    if labels is not None:
        info["axis_labels"] = tuple(str(a) for a in labels)
    return info


def source_from_data(data, layer_kwargs: Mapping[str, Any] | None = None) -> dict:
    """The :func:`source_info` of the layer ``viewer.add_image(data, **layer_kwargs)`` would
    make (a sample, a file read by our reader), without a viewer: the headless demo and scripts
    describe their sources with it."""
    kw = dict(layer_kwargs or {})
    rgb = bool(kw.get("rgb", False))
    ndim = int(np.ndim(data) if not hasattr(data, "ndim") else data.ndim) - (1 if rgb else 0)
    info = {
        "name": str(kw.get("name", "image")),
        "ndim": ndim,
        "rgb": rgb,
        "multiscale": False,
        "shape": tuple(int(n) for n in data.shape),
        "dtype": np.dtype(data.dtype),
        "scale": tuple(float(v) for v in kw.get("scale") or (1.0,) * ndim),
        "translate": tuple(float(v) for v in kw.get("translate") or (0.0,) * ndim),
        "colormap": kw.get("colormap"),
        "contrast_limits": tuple(float(v) for v in kw["contrast_limits"]) if kw.get("contrast_limits") else None,
        "metadata": dict(kw.get("metadata") or {}),
    }
    for key in ("units", "axis_labels"):
        if kw.get(key) is not None:
            info[key] = (
                tuple(str(u) for u in np.atleast_1d(kw[key])) if not isinstance(kw[key], str) else (kw[key],) * ndim
            )
    for key in ("blending", "gamma", "opacity", "rotate", "shear", "affine"):
        if kw.get(key) is not None:
            info[key] = kw[key]
    return info


def spatial_axes_for(ndim: int) -> tuple[int, int]:
    """Layer axes (not counting an RGB channel axis) that are upscaled: the last two."""
    if ndim < 2:
        raise InputError(f"an image layer needs at least 2 dimensions, this one has {ndim}")
    return (ndim - 2, ndim - 1)


# -- geometry ------------------------------------------------------------------------------


def linear_matrix(scale: Sequence[float], rotate=None, shear=None) -> np.ndarray:
    """``rotate @ shear @ diag(scale)`` as napari composes them (shear as napari stores it:
    an upper-triangular matrix or its above-diagonal coefficients)."""
    n = len(scale)
    r = np.eye(n) if rotate is None else np.asarray(rotate, dtype=float)
    if r.shape != (n, n):
        r = np.eye(n)
    sh = np.eye(n)
    if shear is not None:
        s = np.asarray(shear, dtype=float)
        if s.shape == (n, n):
            sh = s
        elif s.size == n * (n - 1) // 2:
            sh[np.triu_indices(n, 1)] = s.ravel()
    return r @ sh @ np.diag(np.asarray(scale, dtype=float))


def upscaled_geometry(
    scale: Sequence[float],
    translate: Sequence[float],
    factor: int = 4,
    *,
    spatial_axes: Iterable[int] | None = None,
    slice_index: Mapping[int, int] | None = None,
    rotate=None,
    shear=None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(scale, translate)`` of an ``factor``-times upscaled result so that its pixels tile the
    source pixels in world coordinates.

    ``slice_index`` maps non-spatial axes to the single source index that was processed (the
    result has length 1 there and is placed at that index). Result data coordinate ``y`` sits at
    source data coordinate ``x = offset + y / f`` on spatial axes (``offset = -(f-1)/(2f)``),
    ``x = index + y`` on sliced axes, so ``translate' = translate + L @ offset`` with
    ``L = rotate @ shear @ diag(scale)``.
    """
    scale = np.asarray(scale, dtype=float)
    translate = np.asarray(translate, dtype=float)
    n = scale.size
    if translate.size != n:
        raise ValueError(f"scale has {n} values but translate has {translate.size}")
    f = int(factor)
    if f < 1:
        raise ValueError(f"factor must be >= 1, not {factor}")
    axes = tuple(spatial_axes) if spatial_axes is not None else spatial_axes_for(n)
    axes = tuple(a % n for a in axes)
    offset = np.zeros(n)
    new_scale = scale.copy()
    for a in axes:
        offset[a] = -(f - 1) / (2 * f)
        new_scale[a] = scale[a] / f
    for a, idx in (slice_index or {}).items():
        a %= n
        if a in axes:
            raise ValueError(f"axis {a} is spatial and cannot be sliced")
        offset[a] = float(idx)
    lin = linear_matrix(scale, rotate, shear)
    new_translate = translate + lin @ offset
    return tuple(float(v) for v in new_scale), tuple(float(v) for v in new_translate)


def world_centre(scale, translate, index, rotate=None, shear=None) -> np.ndarray:
    """World coordinates of the centre of data pixel ``index`` (napari convention: pixel
    centres at integer data coordinates)."""
    lin = linear_matrix(scale, rotate, shear)
    return np.asarray(translate, dtype=float) + lin @ np.asarray(index, dtype=float)


# -- slices --------------------------------------------------------------------------------


def current_slice_index(shape: Sequence[int], ndim: int, data_point: Sequence[float]) -> dict[int, int]:
    """Indices along the non-spatial axes for the slice under ``data_point`` (the viewer's
    position in the layer's data coordinates), clamped to the data."""
    out = {}
    spatial = spatial_axes_for(ndim)
    point = list(data_point)[-ndim:] if len(data_point) >= ndim else [0] * ndim
    for axis in range(ndim):
        if axis in spatial:
            continue
        n = int(shape[axis])
        out[axis] = int(min(max(int(round(float(point[axis]))), 0), n - 1))
    return out


def slice_key(ndim: int, slice_index: Mapping[int, int]) -> tuple:
    """A numpy index keeping the sliced axes with length 1 (``i:i+1``)."""
    key = [slice(None)] * ndim
    for axis, idx in slice_index.items():
        key[axis] = slice(int(idx), int(idx) + 1)
    return tuple(key)


def is_stack(ndim: int) -> bool:
    return ndim > 2


def representative_plane(data, *, spatial_axes: tuple[int, int] | None = None, rgb: bool = False) -> np.ndarray:
    """The one representative plane of an image or stack: the middle index of every non-spatial,
    non-colour axis (the model choice measures it, a self-check scores it, training validation
    takes it from a stack file).

    Why the middle: the first/last slice of a Z stack or time-lapse is often out of focus or
    bleached; the middle one is the typical plane. Only that plane is read (dask/zarr stay lazy).
    ``data`` is YX, (..., Y, X, C) with ``rgb``, or any nD array with ``spatial_axes``.
    """
    shape = tuple(int(n) for n in np.shape(data))
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"an image needs at least 2 dimensions, got shape {shape}")
    if spatial_axes is None:
        spatial_axes = (ndim - 3, ndim - 2) if rgb else (ndim - 2, ndim - 1)
    sp = tuple(int(a) % ndim for a in spatial_axes)
    colour = ndim - 1 if rgb else None
    idx: list[Any] = [slice(None)] * ndim
    for a in range(ndim):
        if a not in sp and a != colour:
            idx[a] = shape[a] // 2
    plane = np.asarray(data[tuple(idx)])
    keep = [a for a in range(ndim) if a in sp or a == colour]  # remaining axes, original order
    want = [sp[0], sp[1]] + ([colour] if colour is not None else [])
    return np.transpose(plane, [keep.index(a) for a in want])


# -- result layers -------------------------------------------------------------------------
def result_layer_kwargs(
    source: Mapping[str, Any] | Any,
    data,
    *,
    kind: str,
    factor: int = 4,
    slice_index: Mapping[int, int] | None = None,
    record: Mapping[str, Any] | None = None,
) -> dict:
    """Keyword arguments for ``viewer.add_image(data, **kwargs)`` for a result of ``source``."""
    src = source if isinstance(source, Mapping) else source_info(source)
    ndim = int(src.get("ndim") or len(src["scale"]))
    rgb = bool(src.get("rgb", False))
    data_ndim = np.ndim(data) if not hasattr(data, "ndim") else data.ndim
    if data_ndim != ndim + (1 if rgb else 0):
        raise InputError(
            f"result has {data_ndim} dimensions, expected {ndim + rgb} like the source {src.get('name', '')!r}"
        )
    scale, translate = upscaled_geometry(
        src["scale"],
        src["translate"],
        factor,
        spatial_axes=spatial_axes_for(ndim),
        slice_index=slice_index,
        rotate=src.get("rotate"),
        shear=src.get("shear"),
    )
    kwargs: dict[str, Any] = {
        "name": result_name(src.get("name", "image"), kind, factor),
        "scale": scale,
        "translate": translate,
        "rgb": rgb,
        "blending": src.get("blending", "translucent"),
        "opacity": src.get("opacity", 1.0),
        "gamma": src.get("gamma", 1.0),
    }
    rot = src.get("rotate")
    if rot is not None and not np.allclose(rot, np.eye(ndim)):
        kwargs["rotate"] = np.asarray(rot)
    shear = src.get("shear")
    if shear is not None and np.size(shear) and not _is_identity_shear(shear, ndim):
        kwargs["shear"] = np.asarray(shear)
    aff = src.get("affine")
    if aff is not None and not np.allclose(np.asarray(aff), np.eye(ndim + 1)):
        kwargs["affine"] = np.asarray(aff)
    if not rgb and src.get("colormap") is not None:
        kwargs["colormap"] = src["colormap"]
    cl = src.get("contrast_limits")
    src_dtype = src.get("dtype")
    if cl is not None and src_dtype is not None and np.dtype(src_dtype) == np.dtype(data.dtype):
        kwargs["contrast_limits"] = tuple(float(v) for v in cl)
    for key in ("units", "axis_labels"):
        if src.get(key) is not None:
            kwargs[key] = tuple(src[key])
    kwargs["metadata"] = {META_KEY: dict(record or {})}
    return kwargs


def _is_identity_shear(shear, ndim: int) -> bool:
    s = np.asarray(shear, dtype=float)
    if s.shape == (ndim, ndim):
        return bool(np.allclose(s, np.eye(ndim)))
    return bool(np.allclose(s, 0))


# -- weights a layer asks for ---------------------------------------------------------------

#: layer-metadata key naming the weights id that suits the data better than the channel default
#: (the sample data sets it: the decimated Landsat crop asks for ``rrim-x4-rgb-real``)
SUGGESTED_WEIGHTS_KEY = "napari_rrim_sr_weights"


def suggested_weights(metadata: Mapping[str, Any] | None, available_ids: Iterable[str]) -> str | None:
    """The weights id ``metadata`` suggests, when it is among ``available_ids``; else None."""
    wid = (metadata or {}).get(SUGGESTED_WEIGHTS_KEY)
    return wid if isinstance(wid, str) and wid in set(available_ids) else None


def preselected_weights(
    metadata: Mapping[str, Any] | None, channels: int, available_ids: Iterable[str], registry
) -> str | None:
    """The weights id to preselect for a layer: what its metadata asks for, else the registry's
    default for its channel count; only ids among ``available_ids``, else None."""
    ids = set(available_ids)
    wid = suggested_weights(metadata, ids)
    if wid is None:
        entry = registry.default_weights(channels)
        wid = entry.id if entry is not None and entry.id in ids else None
    return wid


# -- error maps ----------------------------------------------------------------------------


def error_map_layer(
    err, kind: str, *, reference=None, compared=None, source=None, slice_index: Mapping[int, int] | None = None
) -> tuple[Any, dict]:
    """``(data, add_image kwargs)`` of an ``|image - HR|`` map (``kind`` ``"model"`` or
    ``"bicubic"``): on the ``reference`` layer's grid when a layer ``compared`` was scored
    against it, or (a self-check) on the ``source`` layer's grid, placed at its slice."""
    label = "RRIM" if kind == "model" else "bicubic"
    if reference is not None:
        # an RGB error map is averaged over colour: it has the layer's ndim, like its scale
        geom = {"scale": tuple(reference.scale), "translate": tuple(reference.translate)}
        name = f"|{compared.name} − {reference.name}|"
    else:
        ndim = source.ndim
        idx = dict(slice_index or {})
        scale = tuple(source.scale)[-2:]
        translate = tuple(source.translate)[-2:]
        if idx:  # place the 2-D map at its slice
            err = err.reshape((1,) * (ndim - 2) + err.shape)
            scale = tuple(source.scale)
            translate = tuple(
                float(t) + float(s) * idx.get(a, 0) if a < ndim - 2 else float(t)
                for a, (t, s) in enumerate(zip(source.translate, source.scale))
            )
        geom = {"scale": scale, "translate": translate}
        name = f"{source.name} self-check |{label} − HR|"
    return err, dict(
        name=name,
        colormap="magma",
        blending="additive",
        metadata={META_KEY: {"kind": "error_map", "of": label}},
        **geom,
    )


def current_plane(layer, point=None) -> tuple[np.ndarray, dict]:
    """The displayed 2-D (or 2-D + RGB) plane of ``layer`` at the world ``point`` and its slice index."""
    ndim = layer.ndim
    if not is_stack(ndim):
        return np.asarray(layer.data), {}
    world = point if point is not None else [0.0] * ndim
    idx = current_slice_index(layer.data.shape, ndim, layer.world_to_data(world))
    return np.asarray(layer.data[slice_key(ndim, idx)]), idx
