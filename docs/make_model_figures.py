"""Side-by-side crops for docs/models.md: LR | bicubic | each model | HR, with per-crop metrics.

    python docs/make_model_figures.py                       # shipped RGB PSNR + GAN weights
    python docs/make_model_figures.py --models a.safetensors b.safetensors

For each (Kodak24 image, crop box): HR = the image cropped to a multiple of 4; LR = MATLAB
bicubic x1/4 (antialiased), rounded to uint8, as in evaluation; every model runs on the whole
LR image (fp32, engine defaults) and the crop is cut afterwards, so tile borders and image
context are as a user would get them. LR is shown with nearest-neighbour enlargement. Metrics
under each SR crop: Y-PSNR / SSIM / FSIM of that crop (no border shave inside the image).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
KODAK = HERE.parent.parent / "shared" / "data" / "val" / "Kodak24"
# (file, x, y, size) in HR pixels: textures (foliage, fabric, fur), edges (text, window frames)
CROPS = [
    ("kodim08.png", 200, 190, 128),
    ("kodim13.png", 330, 280, 128),
    ("kodim19.png", 300, 360, 128),
    ("kodim24.png", 100, 200, 128),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["rrim-x4-rgb-psnr", "rrim-x4-rgb-gan"])
    p.add_argument("--labels", nargs="+", help="column titles for --models (default: their ids)")
    p.add_argument("--out", default=str(HERE / "images" / "models_kodak24.png"))
    p.add_argument("--zoom", type=int, default=2, help="display enlargement of every crop")
    a = p.parse_args(argv)

    from PIL import Image, ImageDraw

    from napari_rrim_sr.engine.api import Upscaler, upscale_bicubic
    from napari_rrim_sr.io.images import read_image
    from napari_rrim_sr.quality.evaluate import make_lr
    from napari_rrim_sr.quality.metrics import compare

    ups = [Upscaler(m, channels=3, device="cpu", precision="fp32") for m in a.models]
    labels = a.labels or [u.model.id for u in ups]
    cols = ["LR (nearest)", "bicubic", *labels, "HR"]
    rows = []
    for name, x, y, s in CROPS:
        hr, _ = read_image(KODAK / name)
        hr_c, lr = make_lr(hr[..., :3], 4)
        outs = [upscale_bicubic(lr, 4, rgb=True)] + [u.upscale(lr, rgb=True) for u in ups]
        crop = (slice(y, y + s), slice(x, x + s))
        lr_big = np.repeat(np.repeat(lr, 4, 0), 4, 1)
        tiles = [lr_big[crop]] + [o[crop] for o in outs] + [hr_c[crop]]
        notes = (
            [""]
            + [
                "{psnr:.2f} dB / {ssim:.3f} / {fsim:.3f}".format(
                    **compare(o[crop], hr_c[crop], data_range=255, y_channel=True, border=0)
                )
                for o in outs
            ]
            + [""]
        )
        rows.append((name, tiles, notes))
        print(name, " | ".join(f"{c}: {n}" for c, n in zip(cols, notes) if n), flush=True)
    z, pad, head, foot = a.zoom, 6, 22, 18
    tw = 128 * z
    W = len(cols) * (tw + pad) + pad
    H = head + len(rows) * (tw + foot + pad) + pad
    canvas = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(canvas)
    for j, c in enumerate(cols):
        draw.text((pad + j * (tw + pad) + 4, 5), c, fill="black")
    for i, (name, tiles, notes) in enumerate(rows):
        y0 = head + i * (tw + foot + pad)
        for j, (t, n) in enumerate(zip(tiles, notes)):
            im = Image.fromarray(np.asarray(t, dtype=np.uint8)).resize((tw, tw), Image.NEAREST)
            x0 = pad + j * (tw + pad)
            canvas.paste(im, (x0, y0))
            draw.text((x0 + 2, y0 + tw + 3), n or (name if j == 0 else ""), fill="black")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(a.out, optimize=True)
    print("wrote", a.out)
    for u in ups:
        u.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
