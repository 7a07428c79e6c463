"""Training data: HR images -> random (LR, HR) patch pairs made on the fly.

* **Sources**: folders (searched recursively), single image files, or ``.txt``/``.lst`` files
  listing one image path per line (relative to the list's folder). ``exclude`` glob patterns
  leave files out (held-out images).
* **Formats**: PNG, JPEG, BMP, WebP (Pillow; 16-bit RGB PNG via imagecodecs) and TIFF
  (tifffile); 8/16-bit integer or float; gray, RGB(A), multichannel and nD stacks. TIFF axes
  come from tifffile's series axes: a colour-sample axis ``S`` is colour, every other
  non-spatial axis (Z, T, C, Q...) is a stack of 2D gray planes sampled as independent slices.
* **Channel mapping** to the model: 1-channel models get gray planes as they are, RGB(A) as
  luminance (BT.601 luma 0.299 R + 0.587 G + 0.114 B); 3-channel models get RGB as it is
  (RGBA / RGB+NIR: the first three samples) and gray planes replicated to 3 channels.
* **Intensity**: ``normalize="auto"`` keeps 8-bit images on their dtype range (/255) and maps
  16-bit and float images to 0..1 by per-image percentiles (``percentiles``, default 0.1 and
  99.9: 12-bit data in 16-bit files and float images are not left near black); ``dtype``,
  ``percentile`` and ``minmax`` force one rule. Decoded images are stored as uint8 (8-bit
  sources) or uint16 (everything else, after scaling) in memory or in a ``.npy`` disk cache
  (memory-mapped, shared by worker processes and re-used by later runs).
* **Patches**: sample ``i`` depends only on ``(seed, i)`` (image, plane, position, flips,
  rotation, degradations), so a resumed run sees exactly the patches the interrupted one would
  have. The HR patch position is aligned to the scale grid and cropped with a margin, so its LR
  equals the corresponding crop of the full image's LR (the evaluation convention: MATLAB
  bicubic x1/scale with antialiasing, :func:`napari_rrim_sr.engine.bicubic.imresize_torch`).
* **Degradations** (optional, applied in this order as in the GAN service described in
  docs): Gaussian blur of the HR before downscaling, bicubic x1/scale, Gaussian noise, Poisson
  noise, quantisation to the source's bit depth, JPEG re-compression.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import math
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from napari_rrim_sr import read_guard
from napari_rrim_sr.errors import RRIMError
from napari_rrim_sr.training.degradations import Degradations, gaussian_blur, jpeg_roundtrip  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
TIFF_SUFFIXES = {".tif", ".tiff"}
IMAGE_SUFFIXES = PIL_SUFFIXES | TIFF_SUFFIXES
LIST_SUFFIXES = {".txt", ".lst"}
LUMA = (0.299, 0.587, 0.114)
CACHE_VERSION = 1


class DataError(RRIMError):
    """Training or validation data cannot be used (missing, unreadable, too small)."""


# -- discovering files ------------------------------------------------------------------------


def _excluded(path: Path, patterns: Sequence[str]) -> bool:
    s = str(path)
    return any(fnmatch.fnmatch(path.name, p) or fnmatch.fnmatch(s, p) for p in patterns)


def find_images(
    sources: Iterable[str | os.PathLike], exclude: Sequence[str] = ()
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named by ``sources``; returns ``(files, problems)``.

    A source that does not exist raises :class:`DataError`; files with an unknown suffix inside
    folders are ignored silently (READMEs, licences), named ones are reported.
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        rp = p.resolve()
        if rp in seen or _excluded(p, exclude):
            return
        seen.add(rp)
        files.append(p)
        read_guard.register_read(p, tree=False)  # training data is never replaced by the run's outputs

    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir():
            for q in sorted(p.rglob("*")):
                if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith("."):
                    add(q)
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            read_guard.register_read(p, tree=False)
            for line in p.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                q = Path(line).expanduser()
                q = q if q.is_absolute() else p.parent / q
                if q.is_file():
                    add(q)
                else:
                    problems.append((str(q), f"listed in {p} but not found"))
        elif p.is_file():
            if p.suffix.lower() in IMAGE_SUFFIXES:
                add(p)
            else:
                problems.append((str(p), f"unsupported file type {p.suffix!r}"))
        else:
            raise DataError(f"data source not found: {p}")
    return files, problems


# -- decoding ---------------------------------------------------------------------------------


@dataclass
class Decoded:
    """``planes``: (N, H, W, C) in the file's dtype; ``color``: C is a colour-sample axis."""

    planes: np.ndarray
    color: bool


def decode_image(path: str | os.PathLike) -> Decoded:
    """Decode an image file through the project's one decoder (:func:`napari_rrim_sr.io.images.decode_image`,
    the CLI's and the reader's too); raises ``ValueError``/``OSError`` when it cannot be read."""
    from napari_rrim_sr.io.images import as_planes
    from napari_rrim_sr.io.images import decode_image as _decode

    return Decoded(*as_planes(*_decode(path)))


def map_channels(dec: Decoded, channels: int) -> np.ndarray:
    """(N, H, W, C) planes with C = 1 or 3 for a ``channels``-channel model (see module doc).

    A 3-channel model gets gray planes as C = 1 (replicated when patches are cut, to save
    memory).
    """
    a = dec.planes
    if not dec.color:
        return a
    c = a.shape[-1]
    if c <= 2:  # gray or gray + alpha
        return a[..., :1]
    rgb = a[..., :3]
    if channels == 3:
        return rgb
    y = rgb.astype(np.float32) @ np.asarray(LUMA, np.float32)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        y = np.clip(np.rint(y), info.min, info.max).astype(a.dtype)
    return y[..., None]


def to_unit_storage(
    a: np.ndarray, normalize: str = "auto", percentiles: Sequence[float] = (0.1, 99.9)
) -> tuple[np.ndarray, int]:
    """Scale to 0..1 and store compactly: returns ``(uint8 or uint16 array, bits)``.

    The stored value ``v`` stands for ``v / (2**bits - 1)``.
    """
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255, 8
    mode = normalize
    if mode == "auto":
        mode = "dtype" if a.dtype == np.uint8 else "percentile"
    if mode == "dtype":
        if a.dtype == np.uint8:
            return a, 8
        if a.dtype == np.uint16:
            return a, 16
        if np.issubdtype(a.dtype, np.integer):
            info = np.iinfo(a.dtype)
            lo, hi = float(info.min), float(info.max)
        else:
            lo, hi = 0.0, 1.0  # floats are taken as 0..1
    else:
        sample = a.reshape(-1)
        if sample.size > 4_000_000:  # percentiles of a strided subsample: fast on big stacks
            sample = sample[:: sample.size // 4_000_000 + 1]
        sample = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
        if sample.size == 0:
            raise ValueError("image has no finite values")
        q = (0.0, 100.0) if mode == "minmax" else tuple(percentiles)
        lo, hi = (float(v) for v in np.percentile(sample, q))
    if not hi > lo:
        raise ValueError(f"image is constant (value range {lo:g}..{hi:g} after {mode} normalisation)")
    f = (np.nan_to_num(a.astype(np.float32), nan=lo) - lo) / (hi - lo)
    return np.rint(np.clip(f, 0.0, 1.0) * 65535.0).astype(np.uint16), 16


# -- records and cache ------------------------------------------------------------------------


@dataclass
class ImageRecord:
    """One decoded image (one or more 2D planes): (N, H, W, C) stored as uint8/uint16."""

    path: str
    shape: tuple[int, int, int, int]
    bits: int
    array: np.ndarray | None = None  # memory cache
    cache_file: str | None = None  # disk cache (memory-mapped lazily)

    @property
    def n_planes(self) -> int:
        return self.shape[0]

    @property
    def pixels(self) -> int:
        n, h, w, _ = self.shape
        return n * h * w


@dataclass
class DataReport:
    """What was found, used and skipped (stored in the weights' metadata)."""

    sources: list[str]
    files_found: int = 0
    images: int = 0
    planes: int = 0
    megapixels: float = 0.0
    per_folder: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    decode_seconds: float = 0.0
    cache: str = "memory"
    cache_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "files_found": self.files_found,
            "images_used": self.images,
            "planes": self.planes,
            "megapixels": round(self.megapixels, 2),
            "per_folder": self.per_folder,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "decode_seconds": round(self.decode_seconds, 2),
            "cache": self.cache,
            "cache_mb": round(self.cache_bytes / 2**20, 1),
        }

    def summary(self) -> str:
        s = (
            f"{self.images} images ({self.planes} planes, {self.megapixels:.1f} MP) from "
            f"{self.files_found} files, decoded in {self.decode_seconds:.1f} s, cache {self.cache} "
            f"{self.cache_bytes / 2**20:.0f} MB"
        )
        if self.skipped:
            s += f"; {len(self.skipped)} skipped"
        return s


def _cache_key(path: Path, channels: int, normalize: str, percentiles: Sequence[float]) -> str:
    st = path.stat()
    raw = f"{CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{channels}|{normalize}|{list(percentiles)}"
    return hashlib.sha1(raw.encode()).hexdigest()


def _load_one(
    path: Path,
    channels: int,
    normalize: str,
    percentiles: Sequence[float],
    min_side: int,
    cache: str,
    cache_dir: Path | None,
) -> ImageRecord:
    cache_file = None
    if cache == "disk" and cache_dir is not None:
        cache_file = cache_dir / f"{_cache_key(path, channels, normalize, percentiles)}.npy"
        if cache_file.exists():
            try:
                arr = np.load(cache_file, mmap_mode="r")
                bits = 8 if arr.dtype == np.uint8 else 16
                _check_size(arr.shape, min_side)
                return ImageRecord(str(path), tuple(arr.shape), bits, None, str(cache_file))
            except (ValueError, OSError):
                cache_file.unlink(missing_ok=True)  # corrupt cache entry: decode again
    dec = decode_image(path)
    planes = map_channels(dec, channels)
    _check_size(planes.shape, min_side)
    arr, bits = to_unit_storage(planes, normalize, percentiles)
    arr = np.ascontiguousarray(arr)
    if cache_file is not None:
        tmp = cache_file.with_name(cache_file.stem + f".{os.getpid()}.part.npy")
        np.save(tmp, arr)
        os.replace(tmp, cache_file)
        return ImageRecord(str(path), tuple(arr.shape), bits, None, str(cache_file))
    if cache == "none":
        return ImageRecord(str(path), tuple(arr.shape), bits, None, None)
    return ImageRecord(str(path), tuple(arr.shape), bits, arr, None)


def _check_size(shape, min_side: int) -> None:
    h, w = shape[1], shape[2]
    if min(h, w) < min_side:
        raise _TooSmall(f"{w}x{h} is smaller than {min_side} px (the HR patch size)")


class _TooSmall(ValueError):
    pass


def load_records(
    sources: Sequence[str],
    *,
    channels: int,
    min_side: int,
    exclude: Sequence[str] = (),
    normalize: str = "auto",
    percentiles: Sequence[float] = (0.1, 99.9),
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    threads: int = 0,
) -> tuple[list[ImageRecord], DataReport]:
    """Find and decode the training images. Unreadable or too small files are reported (and
    logged) and skipped; no usable image at all raises :class:`DataError`."""
    t0 = time.perf_counter()
    files, problems = find_images(sources, exclude)
    report = DataReport(sources=[str(s) for s in sources], files_found=len(files), cache=cache)
    report.skipped.extend(problems)
    cdir = Path(cache_dir) if cache_dir else None
    if cache == "disk":
        if cdir is None:
            raise DataError("cache=disk needs a cache folder")
        cdir.mkdir(parents=True, exist_ok=True)

    def work(p: Path):
        try:
            return _load_one(p, channels, normalize, percentiles, min_side, cache, cdir), None
        except _TooSmall as exc:
            return None, f"too small: {exc}"
        except ImportError:
            raise
        except Exception as exc:  # report, skip, go on
            return None, f"unreadable: {type(exc).__name__}: {exc}"

    n_threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, n_threads)) as pool:
        results = list(pool.map(work, files))
    records: list[ImageRecord] = []
    for p, (rec, err) in zip(files, results):
        if rec is None:
            report.skipped.append((str(p), err))
            log.warning("skipping %s: %s", p, err)
            continue
        records.append(rec)
    roots = [Path(s).expanduser().resolve() for s in sources]
    for rec in records:
        rp = Path(rec.path).resolve()
        key = str(rp.parent)
        for root in roots:
            if root.is_dir() and (root == rp.parent or root in rp.parents):
                rel = rp.parent.relative_to(root)
                key = f"{root.name}/{rel}" if str(rel) != "." else root.name
                break
        report.per_folder[key] = report.per_folder.get(key, 0) + 1
    report.images = len(records)
    report.planes = sum(r.n_planes for r in records)
    report.megapixels = sum(r.pixels for r in records) / 1e6
    report.cache_bytes = sum(r.pixels * r.shape[3] * (1 if r.bits == 8 else 2) for r in records)
    report.decode_seconds = time.perf_counter() - t0
    if not records:
        detail = "; ".join(f"{Path(p).name}: {r}" for p, r in report.skipped[:5])
        where = ", ".join(map(str, sources))
        if not files and not problems:
            raise DataError(
                f"no image files (PNG, JPEG, TIFF, BMP, WebP) found in {where}"
                + (f" (after exclude {list(exclude)})" if exclude else "")
            )
        raise DataError(f"no usable training images in {where}: " + (detail or "all files were skipped"))
    return records, report


# -- the dataset ------------------------------------------------------------------------------


class PatchDataset:
    """Map-style dataset of ``(lr, hr)`` float32 tensor pairs, ``(C, P/s, P/s)`` and ``(C, P, P)``.

    ``len`` is nominal (``length``); item ``i`` is a pure function of ``(seed, i)``.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        *,
        patch_size: int,
        scale: int,
        channels: int,
        degradations: Degradations | None = None,
        augment: bool = True,
        seed: int = 0,
        length: int = 1 << 30,
        normalize: str = "auto",
        percentiles: Sequence[float] = (0.1, 99.9),
        margin: bool = True,
    ):
        if patch_size % scale:
            raise DataError(f"patch size {patch_size} is not a multiple of scale {scale}")
        self.records = list(records)
        if not self.records:
            raise DataError("no training images")
        self.patch_size, self.scale, self.channels = int(patch_size), int(scale), int(channels)
        self.deg = degradations or Degradations()
        self.augment, self.seed, self.length = bool(augment), int(seed), int(length)
        self.normalize, self.percentiles = normalize, tuple(percentiles)
        # HR margin around the patch: bicubic support (2 LR px each side, take 3) + blur radius
        m = 3 * self.scale if margin else 0
        if margin and self.deg.blur:
            m += int(math.ceil(3.0 * self.deg.blur_sigma[1]))
        self.margin = int(math.ceil(m / self.scale) * self.scale)
        self._mmaps: dict[int, np.ndarray] = {}
        self._lru: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self.length

    def __getstate__(self):  # spawn-started workers: do not pickle open memory maps
        state = self.__dict__.copy()
        state["_mmaps"] = {}
        state["_lru"] = OrderedDict()
        return state

    def _array(self, k: int) -> np.ndarray:
        rec = self.records[k]
        if rec.array is not None:
            return rec.array
        if rec.cache_file is not None:
            arr = self._mmaps.get(k)
            if arr is None:
                arr = self._mmaps[k] = np.load(rec.cache_file, mmap_mode="r")
            return arr
        arr = self._lru.get(k)  # cache="none": decode again, keep a few per process
        if arr is None:
            planes = map_channels(decode_image(rec.path), self.channels)
            arr, _ = to_unit_storage(planes, self.normalize, self.percentiles)
            self._lru[k] = arr
            while len(self._lru) > 8:
                self._lru.popitem(last=False)
        else:
            self._lru.move_to_end(k)
        return arr

    def sample_hr(self, rng: np.random.Generator) -> tuple[np.ndarray, int, int, int]:
        """An HR crop with margins, as float32 (C, h, w) in 0..1, plus (top, left) margins and bits."""
        k = int(rng.integers(len(self.records)))
        rec = self.records[k]
        n, h, w, _ = rec.shape
        z = int(rng.integers(n))
        p, s, m = self.patch_size, self.scale, self.margin
        y = s * int(rng.integers((h - p) // s + 1))
        x = s * int(rng.integers((w - p) // s + 1))
        y0, x0 = max(0, y - m), max(0, x - m)
        y1, x1 = min(h, y + p + m), min(w, x + p + m)
        arr = self._array(k)
        crop = np.asarray(arr[z, y0:y1, x0:x1, :], dtype=np.float32)
        crop *= 1.0 / (255.0 if rec.bits == 8 else 65535.0)
        return np.ascontiguousarray(crop.transpose(2, 0, 1)), y - y0, x - x0, rec.bits

    def __getitem__(self, i: int):
        import torch

        from napari_rrim_sr.engine.bicubic import imresize_torch

        rng = np.random.default_rng([self.seed, int(i)])
        hr_m, top, left, bits = self.sample_hr(rng)
        p, s, d = self.patch_size, self.scale, self.deg
        t = torch.from_numpy(hr_m)
        hr = t[:, top : top + p, left : left + p]
        src = t
        if d.blur and rng.random() < d.blur_prob:
            src = gaussian_blur(t, float(rng.uniform(*d.blur_sigma)))
        alias = d.alias_prob > 0 and rng.random() < d.alias_prob
        lr_full = imresize_torch(src, 1.0 / s, antialias=not alias)
        lr = lr_full[:, top // s : top // s + p // s, left // s : left // s + p // s]
        if d.noise_sigma[1] > 0 and rng.random() < d.noise_prob:
            sigma = float(rng.uniform(*d.noise_sigma)) / 255.0
            g = torch.from_numpy(rng.standard_normal(lr.shape).astype(np.float32))
            lr = lr + sigma * g
        if d.poisson_peak[1] > 0 and rng.random() < d.poisson_prob:
            lo, hi = max(d.poisson_peak[0], 1.0), max(d.poisson_peak[1], 1.0)
            peak = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))  # log-uniform
            counts = rng.poisson(np.clip(lr.numpy(), 0, None).astype(np.float64) * peak)
            lr = torch.from_numpy((counts / peak).astype(np.float32))
        jpeg = d.jpeg_quality[1] > 0 and rng.random() < d.jpeg_prob
        if jpeg:
            lr = jpeg_roundtrip(lr, int(rng.integers(d.jpeg_quality[0], d.jpeg_quality[1] + 1)))
        elif d.quantize:
            levels = 255.0 if bits == 8 else 65535.0
            lr = (lr.clamp(0, 1) * levels).round() / levels
        return finish_pair(lr, hr, rng, self.augment, self.channels)


def finish_pair(lr, hr, rng: np.random.Generator, augment: bool, channels: int):
    """The last step of every training sample (synthetic or paired): the same random flips and
    transpose on LR and HR (three draws from ``rng`` when ``augment``), grey -> 3 channels where the
    network wants RGB; returns contiguous float32 ``(lr, hr)`` tensors."""
    if augment:
        if rng.random() < 0.5:
            hr, lr = hr.flip(-1), lr.flip(-1)
        if rng.random() < 0.5:
            hr, lr = hr.flip(-2), lr.flip(-2)
        if rng.random() < 0.5:
            hr, lr = hr.transpose(-1, -2), lr.transpose(-1, -2)
    if channels == 3 and hr.shape[0] == 1:
        hr, lr = hr.expand(3, -1, -1), lr.expand(3, -1, -1)
    return lr.contiguous().float(), hr.contiguous().float()


class IndexRange:
    """Sampler yielding ``start, start+1, ..., stop-1`` (the global sample indices of the run)."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = int(start), int(stop)

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def make_loader(
    dataset: PatchDataset, *, batch_size: int, start_step: int, steps: int, workers: int = 0, pin_memory: bool = False
):
    """Batches for steps ``start_step .. steps-1``: batch ``k`` holds samples ``k*B .. k*B+B-1``."""
    import torch

    sampler = IndexRange(start_step * batch_size, steps * batch_size)
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(persistent_workers=False, prefetch_factor=4)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        pin_memory=pin_memory,
        **kwargs,
    )


def measure_loader(
    dataset: PatchDataset, *, batch_size: int = 16, workers: int = 0, batches: int = 20, warmup: int = 2
) -> dict:
    """Patches per second the loader delivers (LR generation and degradations included)."""
    loader = make_loader(dataset, batch_size=batch_size, start_step=0, steps=batches + warmup, workers=workers)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    n = 0
    for lr, hr in it:
        n += hr.shape[0]
    dt = time.perf_counter() - t0
    return {
        "patches": n,
        "seconds": round(dt, 3),
        "patches_per_s": round(n / dt, 1) if dt > 0 else float("inf"),
        "batch_size": batch_size,
        "workers": workers,
        "patch_size": dataset.patch_size,
    }


# -- validation images ------------------------------------------------------------------------


@dataclass
class ValImage:
    """A validation image: HR (H, W, C) float64 on the 0..255 scale, mod-cropped; ``bits`` of the source."""

    name: str
    hr: np.ndarray
    bits: int


def load_validation(
    source: str,
    *,
    channels: int,
    scale: int,
    limit: int = 0,
    crop: int = 0,
    normalize: str = "auto",
    percentiles: Sequence[float] = (0.1, 99.9),
    exclude: Sequence[str] = (),
) -> tuple[list[ValImage], list[tuple[str, str]]]:
    """Validation images mapped like the training data (stacks: the middle plane), centre-cropped
    to ``crop`` (if > 0) and mod-cropped to ``scale``."""
    files, problems = find_images([source], exclude)
    from napari_rrim_sr.io.geometry import representative_plane

    out: list[ValImage] = []
    for p in files:
        if limit and len(out) >= limit:
            break
        try:
            planes = map_channels(decode_image(p), channels)
            arr, bits = to_unit_storage(planes, normalize, percentiles)
        except ImportError:
            raise
        except Exception as exc:
            problems.append((str(p), f"unreadable: {type(exc).__name__}: {exc}"))
            continue
        # (N, H, W, C) planes: the middle one, as a self-check picks it
        img = representative_plane(arr, rgb=True).astype(np.float64) * (255.0 / (255.0 if bits == 8 else 65535.0))
        h, w = img.shape[:2]
        if crop:
            ch, cw = min(h, crop), min(w, crop)
            y, x = (h - ch) // 2, (w - cw) // 2
            img = img[y : y + ch, x : x + cw]
            h, w = ch, cw
        h, w = h - h % scale, w - w % scale
        if h < 4 * scale or w < 4 * scale:
            problems.append((str(p), f"too small for validation ({w}x{h})"))
            continue
        img = img[:h, :w]
        if channels == 3 and img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        out.append(ValImage(p.name, np.ascontiguousarray(img), bits))
    if not out:
        raise DataError(
            f"no usable validation images in {source}"
            + (": " + "; ".join(f"{Path(p).name}: {r}" for p, r in problems[:3]) if problems else "")
        )
    return out, problems
