"""Score RGB models on degraded LR (noise, JPEG, blur) and measure overshoot on native images.

The shipped PSNR and GAN models were trained on clean bicubic LR, the standard convention. Real
input (a satellite scene, a camera photo) was never bicubic-downsampled: it has noise, JPEG
blocks and its own blur, and a bicubic-trained model reads each of those as detail to sharpen.
Two measures, for each model and bicubic:

1. Kodak24 Y-PSNR / SSIM (the evaluation convention: HR cropped to a multiple of 4, 4-px border,
   Y of BT.601) with the LR made by MATLAB bicubic x1/4 and then degraded, fixed seeds:
   ``clean``; ``noise5`` (Gaussian, sigma 5 of 255); ``jpeg70`` (JPEG quality 70);
   ``aliased`` (bicubic without its antialiasing filter: a sharp, aliased LR, as from imagery
   resampled by nearest neighbour); ``mixed`` (HR blur sigma 1 px before the downscale,
   noise sigma 3, JPEG quality 80).
2. Overshoot on the bundled native samples (Landsat crop, astronaut crop; no HR exists): for
   each output pixel, how far its Y leaves the [min, max] of the 3 x 3 LR pixels around the
   pixel it came from (grey levels). Mean and 99.9th percentile. Bicubic overshoots a little by
   construction; dark holes and bright fringes a model draws show up as large excursions.

    python -m napari_rrim_sr.training robust-check \
        --models weights/rrim-x4-rgb-psnr.safetensors weights/rrim-x4-rgb-real.safetensors

``--gray``: the same for 1-channel models on the six held-out microscopy files of the gray
recipe (``recipes/gray-heldout.txt``, normalised to 0..1 by their 0.1/99.9 percentiles as in
``compare-gray``; metrics on 0..1, 4-px border), with the conditions of raw microscopy:
``clean``; ``poisson50`` (shot noise, 50 photons at full scale); ``gauss5`` (read noise, sigma
5 of 255); ``aliased``; and overshoot on the bundled nuclei sample (its range scaled to 0..255).

    python -m napari_rrim_sr.training robust-check --gray \
        --models weights/rrim-x4-gray.safetensors weights/rrim-x4-gray-real.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

#: the gray recipe's held-out list, relative to the repository root (where the commands are run)
DEFAULT_HELDOUT = "training/recipes/gray-heldout.txt"

CONDITIONS = {  # name: (HR blur sigma in HR px, noise sigma in 0..255, JPEG quality or 0, aliased)
    "clean": (0.0, 0.0, 0, False),
    "noise5": (0.0, 5.0, 0, False),
    "jpeg70": (0.0, 0.0, 70, False),
    "aliased": (0.0, 0.0, 0, True),
    "mixed": (1.0, 3.0, 80, False),
}


def degraded_lr(
    hr: np.ndarray, blur: float, noise: float, jpeg: int, seed: int, alias: bool = False, scale: int = 4
) -> np.ndarray:
    """uint8 LR of an (H, W, 3) uint8 HR already cropped to a multiple of ``scale``."""
    import torch

    from napari_rrim_sr.engine.bicubic import imresize_torch
    from napari_rrim_sr.training.data import gaussian_blur, jpeg_roundtrip

    t = torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1))).float() / 255.0
    if blur > 0:
        t = gaussian_blur(t, blur)
    lr = imresize_torch(t, 1.0 / scale, antialias=not alias)
    if noise > 0:
        g = np.random.default_rng(seed).standard_normal(lr.shape).astype(np.float32)
        lr = lr + (noise / 255.0) * torch.from_numpy(g)
    lr = jpeg_roundtrip(lr, jpeg) if jpeg else lr.clamp(0, 1)
    return (lr.clamp(0, 1) * 255.0).round().byte().numpy().transpose(1, 2, 0)


GRAY_CONDITIONS = {  # name: (Poisson photons at full scale or 0, noise sigma in 0..255, aliased)
    "clean": (0.0, 0.0, False),
    "poisson50": (50.0, 0.0, False),
    "gauss5": (0.0, 5.0, False),
    "aliased": (0.0, 0.0, True),
}


def degraded_lr_gray(
    hr: np.ndarray, photons: float, noise: float, alias: bool, seed: int, scale: int = 4
) -> np.ndarray:
    """float32 LR in 0..1 of a 2-D HR in 0..1 already cropped to a multiple of ``scale``."""
    from napari_rrim_sr.engine.bicubic import imresize

    lr = imresize(hr.astype(np.float64), 1.0 / scale, antialias=not alias)
    rng = np.random.default_rng(seed)
    if photons:
        lr = rng.poisson(np.clip(lr, 0, None) * photons) / photons
    if noise:
        lr = lr + rng.normal(0.0, noise / 255.0, lr.shape)
    return np.clip(lr, 0, 1).astype(np.float32)


def overshoot(lr: np.ndarray, sr: np.ndarray, scale: int = 4) -> tuple[float, float]:
    """:func:`napari_rrim_sr.quality.metrics.overshoot` of values already on the 0..255 scale (as here)."""
    from napari_rrim_sr.quality.metrics import overshoot as _overshoot

    return _overshoot(lr, sr, scale, data_range=255.0)


def save_figure(path: Path, lr: np.ndarray, outputs: list, y: int = 52, x: int = 82, n: int = 40) -> None:
    """Side by side: an n x n LR crop (nearest x4), then the same region of each output."""
    from PIL import Image

    tiles = [np.kron(lr[y : y + n, x : x + n], np.ones((4, 4, 1), lr.dtype))]
    tiles += [o[4 * y : 4 * (y + n), 4 * x : 4 * (x + n)] for o in outputs]
    gap = np.full((4 * n, 4, 3), 255, np.uint8)
    row = [t for tile in tiles for t in (tile.astype(np.uint8), gap)][:-1]
    from napari_rrim_sr.safe_write import atomic_write

    img = Image.fromarray(np.concatenate(row, 1))
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), overwrite=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m napari_rrim_sr.training robust-check", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--models", nargs="+", required=True, help="weights (ids or files): 3-channel, or 1 with --gray")
    ap.add_argument("--gray", action="store_true", help="1-channel models on the held-out microscopy files")
    ap.add_argument(
        "--heldout",
        default=DEFAULT_HELDOUT,
        help=f"list of held-out files (default: {DEFAULT_HELDOUT}, from the repository root)",
    )
    ap.add_argument("--val", default="../shared/data/val/Kodak24")
    ap.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    ap.add_argument("--json", type=Path, help="write the tables here")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--figure", type=Path, help="save Landsat crops (LR nearest | bicubic | models) as PNG here")
    args = ap.parse_args(argv)

    import torch

    from napari_rrim_sr._napari.sample_data import photo_array, satellite_array
    from napari_rrim_sr.engine.api import Upscaler, upscale_bicubic
    from napari_rrim_sr.io.images import SUFFIXES, read_image
    from napari_rrim_sr.quality.metrics import compare

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gray:
        return main_gray(args)
    files = sorted(p for p in Path(args.val).iterdir() if p.suffix.lower() in SUFFIXES)
    files = files[: args.limit] if args.limit else files
    ups = {str(m): Upscaler(m, channels=3, device="cpu", precision="fp32") for m in args.models}
    names = ["bicubic", *ups]

    def run(name, lr):
        return upscale_bicubic(lr, 4, rgb=True) if name == "bicubic" else ups[name].upscale(lr, rgb=True)

    scores = {c: {n: [] for n in names} for c in CONDITIONS}
    for i, f in enumerate(files):
        hr = read_image(f)[0][..., :3]
        hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
        for c, (blur, noise, q, alias) in CONDITIONS.items():
            lr = degraded_lr(hr, blur, noise, q, seed=i, alias=alias)
            for n in names:
                m = compare(run(n, lr), hr, data_range=255, y_channel=True, border=4)
                scores[c][n].append((m["psnr"], m["ssim"]))
        print(f"[{i + 1}/{len(files)}] {f.name}", flush=True)
    native = {"landsat": satellite_array()[0], "astronaut": photo_array()}
    over = {s: {n: dict(zip(("mean", "p99_9"), overshoot(lr, run(n, lr)))) for n in names} for s, lr in native.items()}
    if args.figure:
        save_figure(args.figure, native["landsat"], [run(n, native["landsat"]) for n in names])
    report(
        args,
        f"Kodak24 ({len(files)} images), Y-PSNR / SSIM",
        "kodak24",
        CONDITIONS,
        scores,
        over,
        {"images": len(files), "val": args.val},
    )
    for up in ups.values():
        up.close()
    return 0


def report(args, title: str, key: str, conditions: dict, scores: dict, over: dict, extra: dict) -> None:
    """Print the mean PSNR / SSIM per condition and the overshoot per sample; write --json."""
    names = list(next(iter(scores.values())))
    table = {
        c: {n: dict(zip(("psnr", "ssim"), np.mean(v, 0).tolist())) for n, v in row.items()} for c, row in scores.items()
    }
    w = max(len(Path(n).stem) for n in names)
    print(f"\n{title}")
    print(" " * w + "".join(f"  {c:>16}" for c in conditions))
    for n in names:
        print(
            f"{Path(n).stem:<{w}}"
            + "".join(f"  {table[c][n]['psnr']:7.2f} / {table[c][n]['ssim']:.4f}" for c in conditions)
        )
    print("\nOvershoot beyond the 3x3 LR range (grey levels), mean / 99.9th percentile")
    for n in names:
        print(
            f"{Path(n).stem:<{w}}"
            + "".join(f"  {s} {over[s][n]['mean']:.2f} / {over[s][n]['p99_9']:5.1f}" for s in over)
        )
    if args.json:
        from napari_rrim_sr.jsonable import jsonable
        from napari_rrim_sr.safe_write import atomic_write

        atomic_write(
            args.json,
            json.dumps(jsonable({"conditions": conditions, **extra, key: table, "overshoot": over}), indent=1),
            overwrite=True,
            protect=args.models,
        )


def main_gray(args) -> int:
    from napari_rrim_sr._napari.sample_data import microscopy_array
    from napari_rrim_sr.engine.api import Upscaler, upscale_bicubic
    from napari_rrim_sr.quality.metrics import compare
    from napari_rrim_sr.training.data import load_validation

    images, problems = load_validation(args.heldout, channels=1, scale=4, normalize="auto", percentiles=(0.1, 99.9))
    for path, why in problems:
        print(f"skipped {path}: {why}")
    ups = {str(m): Upscaler(m, channels=1, device="cpu", precision="fp32") for m in args.models}
    names = ["bicubic", *ups]

    def run(name, lr):  # lr: float 0..1
        return upscale_bicubic(lr, 4) if name == "bicubic" else ups[name].upscale(lr, normalization=(0.0, 1.0))

    scores = {c: {n: [] for n in names} for c in GRAY_CONDITIONS}
    for i, v in enumerate(images):
        hr = (v.hr[..., 0] / 255.0).astype(np.float32)
        hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
        for c, (photons, noise, alias) in GRAY_CONDITIONS.items():
            lr = degraded_lr_gray(hr, photons, noise, alias, seed=i)
            for n in names:
                m = compare(np.clip(run(n, lr), 0, 1), hr, data_range=1.0, y_channel=False, border=4)
                scores[c][n].append((m["psnr"], m["ssim"]))
        print(f"[{i + 1}/{len(images)}] {v.name}", flush=True)
    nuc = microscopy_array().astype(np.float32)
    nuc = (nuc - nuc.min()) / (nuc.max() - nuc.min())
    over = {
        "nuclei": {
            n: dict(zip(("mean", "p99_9"), overshoot(nuc * 255, np.clip(run(n, nuc), 0, 1) * 255))) for n in names
        }
    }
    report(
        args,
        f"held-out microscopy ({len(images)} files), PSNR / SSIM on 0..1",
        "microscopy",
        GRAY_CONDITIONS,
        scores,
        over,
        {"images": [v.name for v in images], "heldout": args.heldout},
    )
    for up in ups.values():
        up.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
