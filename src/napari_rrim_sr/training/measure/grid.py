"""Measure the 2- and 4-pixel periodic grid a GAN stage can draw, and fine detail, on Kodak24.

A pixel-shuffle upsampler computes each of its s x s output phases with its own filters; when
those drift apart (GAN fine-tuning does this) the output carries a fixed pattern of period s.
Here: Y channel (BT.601, 0..255) of each output, minus a 5x5 box blur (keeps fine structure),
4-px border shaved; the image is cut into p x p cells and the mean residual of each of the p*p
phases is taken over the image. Natural content averages out across phases; a periodic grid
does not. The figure is the RMS of those p*p means (grey levels), averaged over the images,
for period p = 2 and 4. HR and bicubic give the floor of the measure for natural content.
"Detail" is the RMS of the same residual as a fraction of HR's: how much fine texture a model
restores (bicubic and PSNR models are below 1, blurred; a GAN model should come closer to 1).

    python -m napari_rrim_sr.training grid-check \
        --models weights/rrim-x4-rgb-psnr.safetensors weights/rrim-x4-rgb-gan.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def highpass(y: np.ndarray, border: int = 4) -> np.ndarray:
    """``y - box5(y)`` with ``border`` pixels shaved: the fine structure of a Y image."""
    from scipy.ndimage import uniform_filter

    return (y - uniform_filter(y, 5, mode="reflect"))[border:-border, border:-border]


def grid_amplitude(r: np.ndarray, period: int) -> float:
    """RMS over the period x period phases of the phase-mean of the high-pass ``r`` (grey levels)."""
    h, w = (r.shape[0] // period) * period, (r.shape[1] // period) * period
    cells = r[:h, :w].reshape(h // period, period, w // period, period)
    phase_means = cells.mean(axis=(0, 2))
    return float(np.sqrt(np.mean((phase_means - phase_means.mean()) ** 2)))


def main(argv=None) -> int:
    from napari_rrim_sr.engine.api import Upscaler, upscale_bicubic
    from napari_rrim_sr.io.images import read_image
    from napari_rrim_sr.quality.evaluate import make_lr
    from napari_rrim_sr.quality.metrics import rgb_to_y

    ap = argparse.ArgumentParser(
        prog="python -m napari_rrim_sr.training grid-check", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--models", nargs="+", required=True, help="weights files or ids (RGB x4)")
    ap.add_argument("--val", default="../shared/data/val/Kodak24")
    ap.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    files = sorted(p for p in Path(args.val).iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))
    files = files[: args.limit or None]
    if not files:
        raise SystemExit(f"no images in {args.val}")
    ups = {m: Upscaler(m, channels=3, device="cpu", precision="fp32") for m in args.models}
    rows = {name: {2: [], 4: [], "detail": []} for name in ["HR", "bicubic", *args.models]}
    for f in files:
        hr = np.asarray(read_image(f)[0])[..., :3]
        hr_c, lr = make_lr(hr, 4)
        outs = {"HR": hr_c.astype(np.float32), "bicubic": upscale_bicubic(lr, 4, rgb=True) * 1.0}
        for m, up in ups.items():
            outs[m] = up.upscale(lr, rgb=True)
        for name, img in outs.items():
            img = np.clip(np.asarray(img, np.float64), 0, 255)
            r = highpass(rgb_to_y(img, data_range=255.0))
            rms = float(np.sqrt(np.mean(r**2)))
            if name == "HR":  # first in ``outs``
                hr_rms = rms
            rows[name]["detail"].append(rms / hr_rms)
            for p in (2, 4):
                rows[name][p].append(grid_amplitude(r, p))
    print(
        f"{'model':<60} {'2-px grid':>10} {'4-px grid':>10} {'detail':>7}   "
        f"(grid: RMS grey levels; detail: fraction of HR's; mean of {len(files)} images)"
    )
    result = {}
    for name, r in rows.items():
        result[name] = {
            "period2": float(np.mean(r[2])),
            "period4": float(np.mean(r[4])),
            "detail": float(np.mean(r["detail"])),
        }
        print(
            f"{name:<60} {result[name]['period2']:>10.3f} {result[name]['period4']:>10.3f} "
            f"{result[name]['detail']:>7.3f}"
        )
    if args.json:
        from napari_rrim_sr.jsonable import jsonable
        from napari_rrim_sr.safe_write import atomic_write

        atomic_write(
            args.json,
            json.dumps(jsonable({"images": len(files), "val": str(args.val), "results": result}), indent=1),
            overwrite=True,
            protect=args.models,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
