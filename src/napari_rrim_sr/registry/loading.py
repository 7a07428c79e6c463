"""Reading, checking, loading and writing weights files.

The steps, each in its own function (spandrel's split): **read** a file into a flat state dict
(:func:`load_state_dict`: ``.safetensors`` after :mod:`.weights_format` has validated the whole
header; ``.pth``/``.pt`` only through ``torch.load(..., weights_only=True)``, so no pickled code
ever runs), **canonicalise** it (unwrap ``params_ema``/``params``/``state_dict``/``model``,
strip ``module.`` prefixes), **detect** the architecture (:func:`detect_backbone`, asking every
registered backbone), then **load** (:func:`load_model`): hyper-parameters from the metadata
or the caller are checked against what the tensor shapes say, the module is built on
``torch.device("meta")`` and every parameter/buffer shape compared with the file's, and only
then is it built for real. So crafted metadata (``num_feat=100000``) cannot make it allocate.

Every failure is one :class:`~napari_rrim_sr.errors.WeightsError` naming the file and the
problem. The file format itself (header, metadata, hashes) is :mod:`.weights_format`; its names
are re-exported here for existing callers.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_rrim_sr import read_guard
from napari_rrim_sr.errors import RegistryError, WeightsError
from napari_rrim_sr.jsonable import jsonable
from napari_rrim_sr.registry.core import get_registry, user_weights_dir
from napari_rrim_sr.registry.file_format import (  # re-exported: the public import path of these names
    DEFAULT_NORMALIZATION,
    FORMAT_VERSION,
    METADATA_KEY,
    check_file,
    file_sha256,
    parse_metadata,
    read_header,
    read_metadata,
    tensors_sha256,
)
from napari_rrim_sr.registry.spec import BackboneSpec, WeightsEntry
from napari_rrim_sr.safe_write import atomic_write

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
#: hyper-parameters also stored at the top level of our metadata (the registry lists them).
_TOP_LEVEL = ("scale", "in_channels", "out_channels")
#: how many names an error message shows before "... (N in all)".
_SHOW = 3

__all__ = [
    "DEFAULT_NORMALIZATION",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "PICKLE_SUFFIXES",
    "LoadedModel",
    "canonical_state_dict",
    "detect_backbone",
    "file_sha256",
    "install_weights",
    "load_model",
    "load_state_dict",
    "read_metadata",
    "save_weights",
    "tensors_sha256",
]


@dataclass
class LoadedModel:
    """A generator ready for inference: the module (eval mode, CPU) plus what describes it."""

    module: Any
    backbone: str
    hparams: dict
    metadata: dict = field(default_factory=dict)
    path: Path | None = None
    sha256: str = ""
    id: str = ""

    @property
    def scale(self) -> int:
        return int(self.hparams.get("scale", getattr(self.module, "scale", 4)))

    @property
    def in_channels(self) -> int:
        return int(self.hparams.get("in_channels", getattr(self.module, "in_channels", 3)))

    @property
    def out_channels(self) -> int:
        return int(self.hparams.get("out_channels", getattr(self.module, "out_channels", 3)))

    @property
    def size_multiple(self) -> int:
        return int(getattr(self.module, "size_multiple", 1))

    @classmethod
    def from_module(cls, module, backbone: str, hparams: Mapping[str, Any] | None = None, id: str = ""):
        """Wrap an in-memory module (tests, training validation)."""
        hp = dict(hparams or {})
        for key in ("scale", "in_channels", "out_channels"):
            if key not in hp and hasattr(module, key):
                hp[key] = getattr(module, key)
        module.eval()
        return cls(module=module, backbone=backbone, hparams=hp, id=id or f"{backbone} (in memory)")

    def provenance(self) -> dict:
        """A JSON-able summary for layer metadata and output files."""
        return {
            "model_id": self.id,
            "backbone": self.backbone,
            "hparams": self.hparams,
            "weights_path": str(self.path) if self.path else None,
            "weights_sha256": self.sha256 or None,
            # the tensors' identity whatever the file's metadata says (a re-packed file keeps it)
            "tensors_sha256": self.metadata.get("tensors_sha256") or None,
            "scale": self.scale,
        }


# -- writing -------------------------------------------------------------------------------


def save_weights(
    path,
    state_dict_or_module,
    *,
    backbone: str,
    hparams: Mapping[str, Any],
    name: str | None = None,
    description: str = "",
    recipe: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    normalization: str = DEFAULT_NORMALIZATION,
    dtype: str | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    protect=(),
) -> Path:
    """Write a ``.safetensors`` file with full napari-rrim-sr metadata, atomically.

    ``dtype`` ("fp16", "bf16", "fp32") casts floating tensors to shrink the file; loading casts
    back to fp32. Refuses to overwrite an existing file unless ``overwrite=True``, and never
    replaces a file listed in ``protect`` (what the command reads). Permissions follow the umask.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(path, "weights are written as .safetensors only")
    if path.exists() and not overwrite:
        raise WeightsError(path, "file exists; pass overwrite=True to replace it")
    casts = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, None: None}
    if dtype not in casts:
        raise WeightsError(path, f"unknown storage dtype {dtype!r}; use fp16, bf16 or fp32")
    cast = casts[dtype]
    sd = state_dict_or_module
    if hasattr(sd, "state_dict"):
        sd = sd.state_dict()
    tensors = {}
    for k, v in sd.items():
        v = v.detach().cpu()
        if cast is not None and v.is_floating_point():
            v = v.to(cast)
        tensors[k] = v.contiguous()
    hp = jsonable(dict(hparams))
    meta = {
        "format": FORMAT_VERSION,
        "name": name or path.stem,
        "backbone": backbone,
        "hparams": hp,
        "scale": int(hp.get("scale", 4)),
        "in_channels": int(hp.get("in_channels", 3)),
        "out_channels": int(hp.get("out_channels", 3)),
        "value_range": [0.0, 1.0],
        "normalization": normalization,
        "description": description,
        "recipe": dict(recipe or {}),
        "metrics": dict(metrics or {}),
        "tensors_sha256": tensors_sha256(tensors),
        "stored_dtype": dtype or "as trained",
    }
    meta.update(dict(extra or {}))
    text = json.dumps(jsonable(meta), allow_nan=False)
    return atomic_write(
        path,
        lambda tmp: save_file(tensors, str(tmp), metadata={METADATA_KEY: text}),
        overwrite=overwrite,
        protect=protect,
    )


def install_weights(path, *, overwrite: bool = False) -> Path:
    """Copy a weights file into the user weights folder so the registry lists it."""
    path = Path(path)
    meta = read_metadata(path)  # validates the whole header
    if not meta:
        raise WeightsError(path, "has no napari-rrim-sr metadata; cannot be registered")
    name = str(meta.get("name") or path.stem)
    if Path(name).name != name or name.startswith(".") or "\\" in name:
        raise WeightsError(path, f"metadata name {name!r} is not a plain file name; cannot be registered")
    dest = user_weights_dir(create=True) / f"{name}.safetensors"
    if dest.exists():
        if dest.resolve() == path.resolve() or file_sha256(dest) == file_sha256(path):
            get_registry().weights(refresh=True)
            return dest
        if not overwrite:
            raise WeightsError(dest, "a different weights file with this name is installed")
    atomic_write(dest, lambda tmp: shutil.copyfile(path, tmp), overwrite=True, protect=[path])
    get_registry().weights(refresh=True)
    return dest


# -- reading -------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _checkpoint_problem(path: Path, exc: BaseException) -> str:
    """Why a ``.pth`` did not load, in our words: torch's own message suggests loading with
    ``weights_only=False`` (running the file's code), which this package never advises."""
    import re

    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # a zip archive or a pickle (protocol 2+)
        return "is not a torch checkpoint (neither a zip archive nor a pickle); weights are .safetensors or .pth files"
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"GLOBAL ([\w.]+)", text)
    if found or "weights_only" in text or "Unpickler" in text:
        what = f" ({found.group(1)})" if found else ""
        return (
            f"holds pickled Python objects{what} besides plain tensors; they are never unpickled here. "
            "Use a .safetensors copy of the weights (many projects publish one)"
        )
    first = _first_line(exc)
    return f"is a damaged or unsupported torch checkpoint ({first})"


def canonical_state_dict(obj: Any, path) -> dict:
    """The flat ``{name: tensor}`` dict inside a loaded checkpoint (see
    :func:`napari_rrim_sr.models.common.clean_state_dict`), or a :class:`WeightsError`."""
    from napari_rrim_sr.models.common import clean_state_dict

    try:
        return clean_state_dict(obj)
    except Exception as exc:
        raise WeightsError(path, f"no state dict found in checkpoint ({_first_line(exc)})") from None


def load_state_dict(path) -> tuple[dict, dict]:
    """Load tensors (floats as fp32) and metadata, without unpickling anything.

    For ``.safetensors`` the header is validated first, so what is read is bounded by the
    file's size whatever the header claims.
    """
    import torch

    path = Path(path)
    check_file(path)
    read_guard.register_read(path, tree=False)  # never replaced by this command's writes
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        header = read_header(path)
        meta = parse_metadata(path, header.metadata)
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(path, f"cannot read tensors: {_first_line(exc)}") from None
        sd = canonical_state_dict(sd, path)  # converted checkpoints keep a `module.` prefix too
    elif suffix in PICKLE_SUFFIXES:
        meta = {}
        _check_pth_archive(path)
        try:
            import warnings

            with warnings.catch_warnings():  # torch's notes on pickle protocols: not the user's business
                warnings.simplefilter("ignore", UserWarning)
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(path, _checkpoint_problem(path, exc)) from None
        sd = canonical_state_dict(obj, path)
    else:
        raise WeightsError(path, f"unknown weights format {suffix!r}; use .safetensors (or .pth)")
    if not sd:
        raise WeightsError(path, "contains no tensors")
    _check_real_storage(sd, path)  # before .float(): an expanded float64 view would become gigabytes
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    return sd, meta


#: Slack over a file's size that its tensors may claim (zip directory, pickle, alignment).
_STORAGE_SLACK = 1 << 20


def _check_pth_archive(path: Path) -> None:
    """A ``.pth`` zip may not declare more bytes than it holds: ``torch.save`` stores entries
    uncompressed, so a deflated archive expanding to gigabytes is refused before it is read."""
    import zipfile

    size = path.stat().st_size
    try:
        if not zipfile.is_zipfile(path):
            return  # legacy format: torch.load(weights_only=True) reads what the file holds
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (OSError, zipfile.BadZipFile):
        return  # torch.load reports it
    declared = sum(i.file_size for i in infos)
    if declared > size + _STORAGE_SLACK:
        raise WeightsError(
            path,
            f"its archive declares {declared:,} bytes uncompressed in a {size:,}-byte file "
            "(torch.save does not compress); refused before reading",
        )


def _check_real_storage(sd: Mapping[str, Any], path: Path) -> None:
    """Every tensor must own the bytes it claims: a stride-0 view (``torch.zeros(1).expand(...)``)
    is 4 bytes on disk and gigabytes once copied, so the memory a checkpoint may claim is bounded
    by its real size on disk (storage bytes, not view shapes)."""
    size = path.stat().st_size
    storages: dict[int, int] = {}
    claimed = 0
    for k, v in sd.items():
        if not hasattr(v, "untyped_storage"):
            continue
        need = int(v.numel()) * int(v.element_size())
        st = v.untyped_storage()
        have = int(st.nbytes())
        if need > have:
            raise WeightsError(
                path,
                f"tensor {k!r} claims {need:,} bytes over a storage of {have:,} bytes (an expanded / "
                "stride-0 view); not a plain checkpoint",
            )
        storages[st.data_ptr()] = have
        claimed += need
    real = sum(storages.values())
    if real > size + _STORAGE_SLACK or claimed > max(real, size) * 4 + _STORAGE_SLACK:
        raise WeightsError(
            path,
            f"its tensors claim {claimed:,} bytes ({real:,} in storages) from a {size:,}-byte file; "
            "not a plain checkpoint",
        )


# -- detecting -----------------------------------------------------------------------------


def _detect(spec: BackboneSpec, sd: Mapping[str, Any]) -> dict | None:
    """``spec.detect(sd)``, where a detector that raises counts as "not mine"."""
    if spec.detect is None:
        return None
    try:
        hp = spec.detect(sd)
    except Exception as exc:
        log.debug("detector of %r raised %s: %s", spec.id, type(exc).__name__, exc)
        return None
    return dict(hp) if hp else None


def detect_backbone(sd: Mapping[str, Any], registry=None) -> tuple[str, dict] | None:
    """Ask every registered generator's detector whether ``sd`` is one of its state dicts."""
    registry = registry or get_registry()
    for spec in registry.backbones().values():
        hp = _detect(spec, sd)
        if hp:
            return spec.id, hp
    return None


def _some(names, n: int = _SHOW) -> str:
    names = list(names)
    shown = ", ".join(names[:n])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > n else shown


# -- loading -------------------------------------------------------------------------------


def load_model(source, *, registry=None, backbone: str | None = None, hparams=None) -> LoadedModel:
    """Load a generator from a registry id, a :class:`WeightsEntry` or a file path.

    ``backbone``/``hparams`` override or complete what the metadata or detection says; they
    must agree with the tensor shapes like the metadata's.
    """
    registry = registry or get_registry()
    if isinstance(source, WeightsEntry):
        path, wid = source.path, source.id
    else:
        p = Path(str(source)).expanduser()
        if p.suffix.lower() in (".safetensors",) + PICKLE_SUFFIXES or p.exists():
            path, wid = p, ""
        else:
            entry = registry.find_weights(str(source))
            path, wid = entry.path, entry.id
    sd, meta = load_state_dict(path)
    given = {k: v for k, v in dict(hparams or {}).items() if v is not None}
    bb = backbone or meta.get("backbone")
    if bb is None:
        found = detect_backbone(sd, registry)
        if found is None:
            supported = sorted(s.id for s in registry.backbones().values() if s.detect is not None)
            raise WeightsError(
                path,
                "unknown architecture: no registered backbone recognises its tensors "
                f"(supported: {', '.join(supported) or 'none'}; its keys: {_some(sorted(sd), 5)})",
            )
        bb = found[0]
    spec = _spec(registry, bb, path)
    hp = _agreed_hparams(spec, sd, meta, given, path)
    module = _build_checked(spec, hp, sd, path)
    module.eval()
    return LoadedModel(
        module=module,
        backbone=bb,
        hparams=spec.resolve_hparams(**hp),
        metadata=meta,
        path=path,
        sha256=file_sha256(path),
        id=wid or str(meta.get("name") or path.stem),
    )


def _spec(registry, backbone_id: str, path) -> BackboneSpec:
    try:
        return registry.backbone(backbone_id)
    except RegistryError as exc:
        raise WeightsError(path, str(exc)) from None


#: Sane architectural limits, checked before anything is built (shipped and public models use
#: num_feat <= 64, embed_dim <= 240, window 8-16, <= 23 blocks); a crafted file declaring
#: num_feat 4096 or window 100 would otherwise build gigabytes of layers or attention masks.
HPARAM_LIMITS: dict[str, int] = {
    "num_feat": 512,
    "num_grow_ch": 512,
    "embed_dim": 1024,
    "window_size": 32,
    "num_block": 256,
    "num_conv": 256,
    "in_channels": 16,
    "out_channels": 16,
    "scale": 16,
    "depths": 64,
    "num_heads": 64,
    "img_size": 1024,
    "mlp_ratio": 16,
}


def check_hparam_limits(hp: Mapping[str, Any], path) -> None:
    """A :class:`WeightsError` when a hyper-parameter exceeds :data:`HPARAM_LIMITS` (lists: each
    value, and at most 32 stages)."""
    for key, limit in HPARAM_LIMITS.items():
        if key not in hp:
            continue
        val = hp[key]
        vals = list(val) if isinstance(val, (list, tuple)) else [val]
        if len(vals) > 32:
            raise WeightsError(path, f"hyper-parameter {key} lists {len(vals)} stages (at most 32)")
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if v > limit or v < 0:
                raise WeightsError(
                    path, f"hyper-parameter {key}={val!r} is outside sane limits (0..{limit}); refused before building"
                )


def _agreed_hparams(
    spec: BackboneSpec, sd: Mapping[str, Any], meta: Mapping[str, Any], given: Mapping[str, Any], path
) -> dict:
    hp = _agreed_hparams_unchecked(spec, sd, meta, given, path)
    check_hparam_limits(hp, path)
    return hp


def _agreed_hparams_unchecked(
    spec: BackboneSpec, sd: Mapping[str, Any], meta: Mapping[str, Any], given: Mapping[str, Any], path
) -> dict:
    """The hyper-parameters to build with, checked against what the tensors say.

    With a detector, every value the metadata or the caller states must equal the detected one
    (so ``num_block=10**6`` is refused before anything is built); without one, the metadata and
    the caller are trusted and the meta-device comparison in :func:`_build_checked` decides.
    """
    stated = dict(meta.get("hparams") or {})
    top = {k: meta[k] for k in _TOP_LEVEL if k in meta}
    detected = _detect(spec, sd)
    if spec.detect is None:
        return {**top, **stated, **given}
    if detected is None:
        # Not this architecture's layout: name what it expected, built from trusted values only
        # (defaults and the caller's), never from the file's claims.
        module = _meta_build(spec, dict(given), path)
        problems = _mismatches(module.state_dict(), sd) if module is not None else []
        detail = ": " + ", ".join(problems) if problems else ""
        raise WeightsError(path, f"does not match backbone {spec.id!r}{detail}")
    clashes = []
    for label, values in (("metadata", {**top, **stated}), ("given", given)):
        for key, value in values.items():
            if key in detected and value != detected[key]:
                clashes.append(f"{key}={value!r} ({label}) but the tensors say {detected[key]!r}")
    if clashes:
        raise WeightsError(
            path,
            f"does not match backbone {spec.id!r}: its hyper-parameters contradict the "
            f"tensor shapes ({'; '.join(clashes[:_SHOW])})",
        )
    return {**top, **stated, **given, **detected}


def _meta_build(spec: BackboneSpec, hp: Mapping[str, Any], path):
    """``spec.build(**hp)`` on the meta device (shapes only, no memory), or None if the builder
    cannot build there."""
    import torch

    try:
        with torch.device("meta"):
            return spec.build(**hp)
    except RegistryError as exc:
        raise WeightsError(path, str(exc)) from None
    except Exception as exc:
        log.debug("backbone %r cannot be built on the meta device: %s", spec.id, exc)
        return None


def _mismatches(own: Mapping[str, Any], sd: Mapping[str, Any]) -> list[str]:
    """Missing, unexpected, wrong-shape and wrong-kind tensors of ``sd`` against a module's."""
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    kind = [
        f"{k} is {str(sd[k].dtype).replace('torch.', '')}, expected floating point"
        for k in own
        if k in sd and own[k].is_floating_point() and (not sd[k].is_floating_point() or sd[k].is_complex())
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:_SHOW])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:_SHOW])})")
    if wrong:
        parts.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:2])})")
    if kind:
        parts.append(f"{len(kind)} wrong dtypes (e.g. {'; '.join(kind[:2])})")
    return parts


def _build_checked(spec: BackboneSpec, hp: Mapping[str, Any], sd: Mapping[str, Any], path):
    """Compare shapes on a meta-device build, then build for real and load ``sd`` strictly."""

    def check(module) -> None:
        problems = _mismatches(module.state_dict(), sd)
        if problems:
            raise WeightsError(path, f"does not match backbone {spec.id!r}: " + ", ".join(problems))

    shadow = _meta_build(spec, hp, path)
    if shadow is not None:
        check(shadow)
        del shadow
    try:
        module = spec.build(**hp)
    except RegistryError as exc:
        raise WeightsError(path, str(exc)) from None
    except Exception as exc:
        raise WeightsError(
            path, f"cannot build backbone {spec.id!r} with {dict(hp)}: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    check(module)
    try:
        module.load_state_dict(sd, strict=True)
    except Exception as exc:
        raise WeightsError(path, f"does not load into backbone {spec.id!r}: {_first_line(exc)}") from None
    return module
