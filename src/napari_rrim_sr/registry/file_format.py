"""The weights file format: the safetensors header (parsed and fully validated), our metadata
entry, and file/tensor hashes. Torch-free at import, so listing weights stays cheap.

A ``.safetensors`` file is ``u64 little-endian N`` + ``N`` bytes of a JSON object + the tensor
data. The header is validated before a single tensor byte is read: every entry has a known
``dtype``, a ``shape`` of non-negative ints and two ``data_offsets`` that are in order, tile the
data without gaps or overlaps, end exactly at the end of the file and hold
``prod(shape) * itemsize`` bytes; ``__metadata__`` is a ``str -> str`` map. So whatever a file
claims, reading its tensors allocates no more than its own size.

Our metadata is one ``__metadata__`` entry, ``napari_rrim_sr``, holding JSON::

    {"format": 1, "name": "rrim-x4-rgb-psnr", "backbone": "rrim",
     "hparams": {...}, "scale": 4, "in_channels": 3, "out_channels": 3,
     "value_range": [0, 1], "normalization": "...", "description": "...",
     "recipe": {...}, "metrics": {...}, "tensors_sha256": "..."}

Every problem is a :class:`~napari_rrim_sr.errors.WeightsError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from napari_rrim_sr.errors import WeightsError

__all__ = [
    "DEFAULT_NORMALIZATION",
    "DTYPE_SIZES",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "METADATA_KEY",
    "SafetensorsHeader",
    "TensorInfo",
    "check_file",
    "file_sha256",
    "parse_metadata",
    "read_header",
    "read_metadata",
    "tensors_sha256",
]

METADATA_KEY = "napari_rrim_sr"
FORMAT_VERSION = 1
DEFAULT_NORMALIZATION = "input scaled to 0..1 (dtype range by default); output in 0..1, clipped by the engine"
#: the largest header accepted (safetensors' own limit is 100 MB).
MAX_HEADER_BYTES = 100 * 2**20
#: safetensors dtype names and their item sizes in bytes.
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
#: metadata fields with a fixed type (others are free-form JSON).
_INT_FIELDS = ("format", "scale", "in_channels", "out_channels")
_STR_FIELDS = ("name", "backbone", "description", "normalization", "tensors_sha256", "stored_dtype")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry: dtype name, shape and byte range within the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: the tensors (in file order) and the ``__metadata__`` map."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_bytes: int
    file_size: int


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
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# -- the header ----------------------------------------------------------------------------


def check_file(path: Path) -> None:
    """A :class:`WeightsError` unless ``path`` is a non-empty regular file."""
    try:
        if not path.exists():
            raise WeightsError(path, "no such file")
        if not path.is_file():
            raise WeightsError(path, "not a file")
        if path.stat().st_size == 0:
            raise WeightsError(path, "file is empty")
    except OSError as exc:
        raise WeightsError(path, f"cannot be read ({exc.strerror or exc})") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def read_header(path) -> SafetensorsHeader:
    """Parse and fully validate the safetensors header of ``path`` (no tensor data is read)."""
    path = Path(path)
    check_file(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise WeightsError(path, "truncated: too short to be a safetensors file")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > MAX_HEADER_BYTES:
                raise WeightsError(path, f"not a safetensors file (bad header length {n})")
            if n > size - 8:
                raise WeightsError(
                    path,
                    f"not a safetensors file (bad header length) or truncated: header "
                    f"announces {n} bytes, file has {size - 8} after the length",
                )
            raw = fh.read(n)
    except OSError as exc:
        raise WeightsError(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise WeightsError(path, "not a safetensors file (header is not UTF-8 JSON)") from None
    except ValueError as exc:  # JSONDecodeError or a duplicate key
        raise WeightsError(path, f"not a safetensors file (header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise WeightsError(path, "not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightsError(path, "corrupt header: __metadata__ must map names to strings")
    tensors = {name: _tensor_info(path, name, entry) for name, entry in header.items()}
    data = size - 8 - n
    pos = 0
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if info.begin != pos:
            why = "overlaps the previous tensor" if info.begin < pos else "leaves a gap before it"
            raise WeightsError(path, f"corrupt header: tensor {name!r} at bytes {info.begin}..{info.end} {why}")
        pos = info.end
    if pos > data:
        raise WeightsError(path, f"truncated: header announces {8 + n + pos} bytes, file has {size}")
    if pos < data:
        raise WeightsError(path, f"corrupt: {data - pos} bytes after the last tensor are not described by the header")
    return SafetensorsHeader(tensors=tensors, metadata=dict(metadata), header_bytes=n, file_size=size)


def _tensor_info(path: Path, name: str, entry: Any) -> TensorInfo:
    def bad(problem: str) -> WeightsError:
        return WeightsError(path, f"corrupt header: tensor {name!r} {problem}")

    if not isinstance(entry, dict):
        raise bad("is not an object with dtype, shape and data_offsets")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise bad(f"has no {key}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise bad(f"has unknown dtype {dtype!r} (known: {', '.join(DTYPE_SIZES)})")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad(f"has shape {shape!r}; expected a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise bad(f"has data_offsets {offsets!r}; expected [begin, end] with 0 <= begin <= end")
    info = TensorInfo(dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])
    expected = info.numel * DTYPE_SIZES[dtype]
    if info.end - info.begin != expected:
        raise bad(
            f"of shape {list(shape)} {dtype} needs {expected} bytes, its data_offsets hold {info.end - info.begin}"
        )
    return info


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# -- our metadata --------------------------------------------------------------------------


def parse_metadata(path, raw: Mapping[str, str]) -> dict:
    """Our metadata entry of a validated ``__metadata__`` map ({} if absent), types checked."""
    if METADATA_KEY not in raw:
        return {}
    try:
        meta = json.loads(raw[METADATA_KEY])
    except ValueError as exc:
        raise WeightsError(path, f"metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise WeightsError(path, "metadata is not a JSON object")
    for key in _INT_FIELDS:
        if key in meta and not (_is_int(meta[key]) and meta[key] > 0):
            raise WeightsError(path, f"metadata {key} must be a positive integer, got {meta[key]!r}")
    for key in _STR_FIELDS:
        if key in meta and not isinstance(meta[key], str):
            raise WeightsError(path, f"metadata {key} must be a string, got {meta[key]!r}")
    hp = meta.get("hparams")
    if hp is not None and not isinstance(hp, dict):
        raise WeightsError(path, f"metadata hparams must be a JSON object, got {type(hp).__name__}")
    return meta


def read_metadata(path) -> dict:
    """The napari-rrim-sr metadata of a ``.safetensors`` file ({} if it has none, or for other formats).

    The whole header is validated first, so a file this accepts has readable tensors.
    """
    path = Path(path)
    check_file(path)
    if path.suffix != ".safetensors":
        return {}
    return parse_metadata(path, read_header(path).metadata)
