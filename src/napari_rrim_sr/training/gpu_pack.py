"""Pack training and validation images losslessly for a GPU machine that only sees the working tree.

The device tool sends the repository's tracked and untracked-not-ignored files plus named
``carry`` paths, 64 MiB in all, and the repository already uses much of that. So the images go
into one git-ignored folder (``.gpu-carry/``), as two uncompressed tar files:

* ``train.tar``: images from the *training* folders only (never ``val/`` or test sets), in
  priority order, until a byte budget is reached. JPEG files travel as their original bytes
  (their decoded pixels are exactly the ones the CPU trainer sees); every other format is
  re-encoded as lossless WebP (about 2/3 of the PNG size, pixel-identical, checked on write).
  Images whose smaller side is below ``min_side`` are left out (the GPU sampler needs windows
  of the patch size plus the bicubic margin).
* ``kodak24-val.tar``: the validation images, labelled as validation, for the end-of-run
  Kodak24 check only (the trainer reads them through ``val``, never through ``data``).

Each tar holds ``manifest.json``: per image its original path, stored name, shape and the
SHA-256 of its decoded RGB pixels, which :func:`unpack` checks again on the GPU machine, so a
different decoder there cannot silently change the data.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from napari_rrim_sr.errors import InputError
from napari_rrim_sr.jsonable import jsonable

MiB = 1 << 20
#: what the device tool lets travel (tracked + untracked-not-ignored files + carried paths)
TREE_LIMIT = 64 * MiB
CARRY_DIR = ".gpu-carry"
TRAIN_TAR = "train.tar"
VAL_TAR = "kodak24-val.tar"
#: folders of ../shared/data/train in the order they are packed: most pixels per byte first
DEFAULT_TRAIN_ORDER = ("SunHays80", "McMaster", "bsd200", "yang91")
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
FORBIDDEN_PARTS = {"val", "test", "tests", "kodak24", "set5", "set14", "urban100", "b100", "bsd100", "manga109"}


def _rgb(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def pixel_sha256(rgb: np.ndarray) -> str:
    """Hash of the decoded pixels and their shape (what must be identical after the trip)."""
    h = hashlib.sha256(repr(tuple(rgb.shape)).encode())
    h.update(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())
    return h.hexdigest()


def encode_lossless(path: Path) -> tuple[bytes, str, np.ndarray]:
    """``(bytes, suffix, rgb)``: JPEGs as they are, everything else as lossless WebP (verified)."""
    from PIL import Image

    raw = path.read_bytes()
    rgb = _rgb(raw)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return raw, path.suffix.lower(), rgb
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "WEBP", lossless=True, quality=100, method=4, exact=True)
    data = buf.getvalue()
    if not np.array_equal(_rgb(data), rgb):  # never ship a lossy copy by accident
        raise InputError(f"{path}: lossless WebP did not round-trip; cannot pack it")
    if len(data) >= len(raw) and path.suffix.lower() == ".png":
        return raw, ".png", rgb
    return data, ".webp", rgb


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def check_training_source(path: Path) -> None:
    """Refuse validation/test folders as training data (the one rule this pack must keep)."""
    parts = {p.lower() for p in Path(path).resolve().parts}
    bad = parts & FORBIDDEN_PARTS
    if bad:
        raise InputError(
            f"{path}: looks like a validation/test set ({sorted(bad)[0]}); training data comes "
            "from ../shared/data/train only"
        )


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def pack_images(
    files: Iterable[Path],
    out: Path,
    *,
    budget: int,
    min_side: int = 0,
    role: str,
    root: Path | None = None,
    overwrite: bool = True,
) -> dict:
    """Write ``out`` (an uncompressed tar) with the images of ``files`` in order until ``budget`` bytes.

    Returns the manifest (also stored in the tar as ``manifest.json``): counts, pixels, bytes,
    what was skipped and why.
    """
    from napari_rrim_sr.safe_write import atomic_write

    entries, skipped = [], []
    used = 0
    blobs: list[tuple[str, bytes]] = []
    misses = 0
    for p in files:
        from PIL import Image

        p = Path(p)
        rel = str(p.relative_to(root)) if root is not None and p.is_relative_to(root) else p.name
        with Image.open(p) as im:
            w, h = im.size
        if min(h, w) < min_side:
            skipped.append({"path": rel, "reason": f"smaller side {min(h, w)} < {min_side}"})
            continue
        if misses >= 3:  # the budget is spent: do not encode the rest only to drop it
            skipped.append({"path": rel, "reason": "over the byte budget"})
            continue
        data, suffix, rgb = encode_lossless(p)
        if used + len(data) + 1024 > budget:
            skipped.append({"path": rel, "reason": "over the byte budget"})
            misses += 1
            continue
        name = f"{len(entries):04d}_{Path(rel).stem}{suffix}"
        blobs.append((name, data))
        used += len(data) + 1024  # tar header + padding, roughly
        entries.append(
            {"name": name, "source": rel, "shape": [h, w, 3], "bytes": len(data), "sha256_pixels": pixel_sha256(rgb)}
        )
    manifest = {
        "role": role,
        "images": len(entries),
        "megapixels": round(sum(e["shape"][0] * e["shape"][1] for e in entries) / 1e6, 2),
        "bytes": sum(e["bytes"] for e in entries),
        "budget": budget,
        "min_side": min_side,
        "per_folder": _per_folder(entries),
        "skipped": skipped,
        "entries": entries,
        "codec": "JPEG as original bytes, others lossless WebP (pixels verified)",
    }

    def build(tmp: Path) -> None:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:  # direct-write: atomic temporary
            _add(tar, "manifest.json", (json.dumps(jsonable(manifest), indent=1) + "\n").encode())
            for name, data in blobs:
                _add(tar, name, data)

    atomic_write(out, build, overwrite=overwrite)
    return manifest


def _per_folder(entries: Sequence[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in entries:
        key = Path(e["source"]).parent.name or "."
        out[key] = out.get(key, 0) + 1
    return out


def unpack(tar_path: Path, dest: Path, *, verify: bool = True) -> dict:
    """Extract a pack into ``dest`` (a scratch folder) and check every image's pixels; returns the manifest."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "r") as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        for e in manifest["entries"]:
            name = e["name"]
            if "/" in name or name.startswith("."):
                raise InputError(f"{tar_path}: bad member name {name!r}")
            data = tar.extractfile(name).read()
            if verify and pixel_sha256(_rgb(data)) != e["sha256_pixels"]:
                raise InputError(f"{tar_path}: {name} decodes to different pixels here than where it was packed")
            (dest / name).write_bytes(data)  # direct-write: unpacking into a fresh scratch folder
    return manifest


# -- the size of what travels ------------------------------------------------------------------


def travelling_bytes(repo: Path) -> int:
    """Bytes of the tracked and untracked-not-ignored files of ``repo`` (what the device tool sends
    besides the carried paths)."""
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    total = 0
    for rel in out.split(b"\0"):
        if rel:
            p = repo / rel.decode()
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    folder = Path(folder)
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def check_fits(repo: Path, carry: Sequence[Path], limit: int = TREE_LIMIT) -> dict:
    """Raise InputError unless the tree plus the carried folders fit the device tool's limit."""
    tree = travelling_bytes(repo)
    carried = sum(
        folder_bytes(c) if Path(c).is_dir() else (Path(c).stat().st_size if Path(c).exists() else 0) for c in carry
    )
    info = {
        "tree_bytes": tree,
        "carry_bytes": carried,
        "total_bytes": tree + carried,
        "limit_bytes": limit,
        "total_mib": round((tree + carried) / MiB, 2),
    }
    if tree + carried > limit:
        raise InputError(f"tree {tree / MiB:.1f} MiB + carry {carried / MiB:.1f} MiB exceeds {limit / MiB:.0f} MiB")
    return info


def pack(
    repo: Path,
    data_root: Path,
    *,
    carry: Path | None = None,
    margin: int = 2 * MiB,
    min_side: int = 216,
    train_order: Sequence[str] = DEFAULT_TRAIN_ORDER,
    val: str = "val/Kodak24",
) -> dict:
    """Pack validation (all of it) then training images into ``carry`` within the 64 MiB limit."""
    repo, data_root = Path(repo), Path(data_root)
    carry = Path(carry) if carry else repo / CARRY_DIR
    carry.mkdir(parents=True, exist_ok=True)
    for name in (TRAIN_TAR, VAL_TAR):
        (carry / name).unlink(missing_ok=True)  # measure the tree without the old packs
    wheels = folder_bytes(carry)
    free = TREE_LIMIT - travelling_bytes(repo) - wheels - margin
    val_dir = data_root / val
    val_files = _image_files(val_dir)
    if not val_files:
        raise InputError(f"no validation images in {val_dir}")
    val_m = pack_images(val_files, carry / VAL_TAR, budget=free, role="validation (never training)", root=data_root)
    if val_m["skipped"]:
        raise InputError(f"validation set does not fit the carry budget ({len(val_m['skipped'])} images left out)")
    free -= (carry / VAL_TAR).stat().st_size
    train_files: list[Path] = []
    for sub in train_order:
        folder = data_root / "train" / sub
        check_training_source(folder)
        train_files += _image_files(folder)
    train_m = pack_images(
        train_files, carry / TRAIN_TAR, budget=free, min_side=min_side, role="training", root=data_root
    )
    fits = check_fits(repo, [carry])
    return {
        "train": {k: v for k, v in train_m.items() if k != "entries"},
        "val": {k: v for k, v in val_m.items() if k != "entries"},
        "fits": fits,
    }


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m napari_rrim_sr.training.gpu_pack",
        description="Pack ../shared/data/train (training) and val/Kodak24 (validation) "
        "losslessly into .gpu-carry/ within the device tool's 64 MiB.",
    )
    p.add_argument("--repo", default=".", help="repository root (default: .)")
    p.add_argument("--data", default="../shared/data", help="the shared data folder")
    p.add_argument("--margin-mib", type=float, default=2.0, help="MiB left free under the limit")
    p.add_argument("--min-side", type=int, default=216, help="leave out training images smaller than this")
    args = p.parse_args(argv)
    info = pack(Path(args.repo), Path(args.data), margin=int(args.margin_mib * MiB), min_side=args.min_side)
    for role in ("train", "val"):
        m = info[role]
        print(
            f"{role}: {m['images']} images, {m['megapixels']} MP, {m['bytes'] / MiB:.2f} MiB, "
            f"per folder {m['per_folder']}, {len(m['skipped'])} left out"
        )
    print(f"tree + carry: {info['fits']['total_mib']} MiB of 64")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
