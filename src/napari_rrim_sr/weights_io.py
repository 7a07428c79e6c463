"""Reading and writing weights safely.

Format: ``.safetensors`` with one metadata entry, ``napari_rrim_sr``, holding JSON::

    {"format": 1, "name": "rrim-x4-rgb-psnr", "backbone": "rrim",
     "hparams": {...}, "scale": 4, "in_channels": 3, "out_channels": 3,
     "value_range": [0, 1], "normalization": "...", "description": "...",
     "recipe": {...}, "metrics": {...}, "tensors_sha256": "..."}

Loading never unpickles. ``.pth``/``.pt`` files (e.g. a user's ESRGAN checkpoint) are read with
``torch.load(..., weights_only=True)`` and their architecture is detected from the state dict.
Every failure is a :class:`~napari_rrim_sr.errors.WeightsError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from .errors import RegistryError, WeightsError

METADATA_KEY = "napari_rrim_sr"
FORMAT_VERSION = 1
DEFAULT_NORMALIZATION = (
    "input scaled to 0..1 (dtype range by default); output in 0..1, clipped by the engine"
)
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


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


# -- hashing -------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _file_sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path) -> str:
    """sha256 of a file's bytes (cached on path, size and mtime)."""
    st = os.stat(path)
    return _file_sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def tensors_sha256(state_dict: Mapping[str, Any]) -> str:
    """A hash of the tensors' names, dtypes, shapes and bytes, independent of file layout."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(_byte_dtype()).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _byte_dtype():
    import torch

    return torch.uint8


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
) -> Path:
    """Write a ``.safetensors`` file with full napari-rrim-sr metadata.

    ``dtype`` ("fp16", "bf16", "fp32") casts floating tensors to shrink the file; loading casts
    back to fp32. Refuses to overwrite an existing file unless ``overwrite=True``.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(path, "weights are written as .safetensors only")
    if path.exists() and not overwrite:
        raise WeightsError(path, "file exists; pass overwrite=True to replace it")
    sd = state_dict_or_module
    if hasattr(sd, "state_dict"):
        sd = sd.state_dict()
    cast = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, None: None}[dtype]
    tensors = {}
    for k, v in sd.items():
        v = v.detach().cpu()
        if cast is not None and v.is_floating_point():
            v = v.to(cast)
        tensors[k] = v.contiguous()
    hp = {k: _jsonable(v) for k, v in dict(hparams).items()}
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta, default=_jsonable)})
    os.replace(tmp, path)  # never leave a truncated file under the final name
    return path


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    try:
        return v.item()  # numpy / torch scalars
    except Exception:
        return str(v)


# -- reading -------------------------------------------------------------------------------

def _check_file(path: Path) -> None:
    if not path.exists():
        raise WeightsError(path, "no such file")
    if not path.is_file():
        raise WeightsError(path, "not a file")
    if path.stat().st_size == 0:
        raise WeightsError(path, "file is empty")


def read_metadata(path) -> dict:
    """The napari-rrim-sr metadata of a ``.safetensors`` file ({} if it has none)."""
    path = Path(path)
    _check_file(path)
    if path.suffix != ".safetensors":
        return {}
    raw = _safetensors_header(path).get("__metadata__") or {}
    if METADATA_KEY not in raw:
        return {}
    try:
        meta = json.loads(raw[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise WeightsError(path, f"metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise WeightsError(path, "metadata is not a JSON object")
    return meta


def _safetensors_header(path: Path) -> dict:
    """Parse the safetensors header ourselves, to give precise errors on corrupt files."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise WeightsError(path, "truncated: too short to be a safetensors file")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > min(size - 8, 100 * 2**20):
            raise WeightsError(path, "not a safetensors file (bad header length) or truncated")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise WeightsError(path, "not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise WeightsError(path, "not a safetensors file (header is not a JSON object)")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise WeightsError(
            path, f"truncated: header announces {8 + n + end} bytes, file has {size}"
        )
    return header


def load_state_dict(path) -> tuple[dict, dict]:
    """Load tensors (as fp32) and metadata, without unpickling anything."""
    import torch

    from .models.common import clean_state_dict

    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        meta = read_metadata(path)
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(path, f"cannot read tensors: {exc}") from None
    elif suffix in PICKLE_SUFFIXES:
        meta = {}
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(
                path,
                "cannot be read as a plain tensor checkpoint (weights_only=True refuses "
                f"pickled code; convert it to .safetensors): {first}",
            ) from None
        try:
            sd = clean_state_dict(obj)
        except Exception as exc:
            raise WeightsError(path, f"no state dict found in checkpoint ({exc})") from None
    else:
        raise WeightsError(path, f"unknown weights format {suffix!r}; use .safetensors (or .pth)")
    if not sd:
        raise WeightsError(path, "contains no tensors")
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    return sd, meta


def detect_backbone(sd: Mapping[str, Any], registry=None) -> tuple[str, dict] | None:
    """Ask every registered generator's detector whether ``sd`` is one of its state dicts."""
    from .registry import get_registry

    registry = registry or get_registry()
    for spec in registry.backbones().values():
        if spec.detect is None:
            continue
        try:
            hp = spec.detect(sd)
        except Exception:
            hp = None
        if hp:
            return spec.id, dict(hp)
    return None


def load_model(source, *, registry=None, backbone: str | None = None, hparams=None) -> LoadedModel:
    """Load a generator from a registry id, a :class:`WeightsEntry` or a file path.

    ``backbone``/``hparams`` override or complete what the metadata or detection says.
    """
    from .registry import WeightsEntry, get_registry

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
    bb = backbone or meta.get("backbone")
    hp = dict(meta.get("hparams") or {})
    if bb is None:
        found = detect_backbone(sd, registry)
        if found is None:
            raise WeightsError(
                path,
                "unknown architecture: no registered backbone recognises its tensors "
                f"(backbones: {', '.join(sorted(registry.backbones()))})",
            )
        bb, hp = found
    elif not hp:
        spec = _spec(registry, bb, path)
        hp = dict(spec.detect(sd) or {}) if spec.detect else {}
    hp.update(hparams or {})
    spec = _spec(registry, bb, path)
    try:
        module = spec.build(**hp)
    except RegistryError as exc:
        raise WeightsError(path, str(exc)) from None
    _load_strict(module, sd, path, bb)
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


def _spec(registry, backbone_id: str, path):
    try:
        return registry.backbone(backbone_id)
    except RegistryError as exc:
        raise WeightsError(path, str(exc)) from None


def _load_strict(module, sd: Mapping[str, Any], path, backbone: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:2])})")
        raise WeightsError(path, f"does not match backbone {backbone!r}: " + ", ".join(parts))
    module.load_state_dict(sd, strict=True)


def install_weights(path, *, overwrite: bool = False) -> Path:
    """Copy a weights file into the user weights folder so the registry lists it."""
    import shutil

    from .registry import get_registry, user_weights_dir

    path = Path(path)
    meta = read_metadata(path)
    if not meta:
        raise WeightsError(path, "has no napari-rrim-sr metadata; cannot be registered")
    dest = user_weights_dir(create=True) / f"{meta.get('name') or path.stem}.safetensors"
    if dest.exists() and not overwrite and file_sha256(dest) != file_sha256(path):
        raise WeightsError(dest, "a different weights file with this name is installed")
    if dest.resolve() != path.resolve():
        shutil.copyfile(path, dest)
    get_registry().weights(refresh=True)
    return dest
