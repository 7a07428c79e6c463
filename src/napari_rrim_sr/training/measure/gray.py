"""Score the gray model on the held-out microscopy images against bicubic and the RGB model.

    python -m napari_rrim_sr.training compare-gray --gray weights/rrim-x4-gray.safetensors \
        --rgb weights/rrim-x4-rgb-psnr.safetensors --json training/logs/rrim-x4-gray/heldout.json

Convention (the gray recipe's validation): each held-out file (``recipes/gray-heldout.txt``;
stacks: the middle plane) is normalised to 0..1 by its 0.1/99.9 percentiles and clipped, as
training saw it; HR = that image cropped to a multiple of 4; LR = MATLAB bicubic x1/4 with
antialiasing; metrics on 0..1 (data range 1), 4 px shaved. The RGB model runs through the
engine's rule for 1-channel data: gray replicated to R=G=B, outputs averaged back. fp32.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

#: the gray recipe's held-out list, relative to the repository root (where the commands are run)
DEFAULT_HELDOUT = "training/recipes/gray-heldout.txt"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m napari_rrim_sr.training compare-gray", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--gray", required=True, help="1-channel weights (id or file)")
    p.add_argument("--rgb", required=True, help="3-channel weights (id or file)")
    p.add_argument(
        "--heldout",
        default=DEFAULT_HELDOUT,
        help=f"list of held-out files (default: {DEFAULT_HELDOUT}, from the repository root)",
    )
    p.add_argument("--json", help="write the table as JSON here")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)

    import torch

    from napari_rrim_sr.engine.api import Upscaler
    from napari_rrim_sr.quality.evaluate import evaluate
    from napari_rrim_sr.training.data import load_validation

    if a.threads:
        torch.set_num_threads(a.threads)
    images, problems = load_validation(a.heldout, channels=1, scale=4, normalize="auto", percentiles=(0.1, 99.9))
    for path, why in problems:
        print(f"skipped {path}: {why}", file=sys.stderr)
    ups = {
        name: Upscaler(w, channels=1, device="cpu", precision="fp32") for name, w in (("gray", a.gray), ("rgb", a.rgb))
    }
    rows = []
    for v in images:
        hr = (v.hr[..., 0] / 255.0).astype(np.float32)
        row = {"image": v.name, "shape": list(hr.shape)}
        for name, up in ups.items():
            res = evaluate(hr, None, upscaler=up, data_range=1.0, normalization=(0.0, 1.0))
            row[name] = res["model"]
            row["bicubic"] = res["bicubic"]
        rows.append(row)
        print(
            f"{v.name:48s} "
            + "  ".join(f"{k} {row[k]['psnr']:.2f}/{row[k]['ssim']:.4f}" for k in ("bicubic", "rgb", "gray")),
            flush=True,
        )
    mean = {
        k: {m: float(np.mean([r[k][m] for r in rows])) for m in ("psnr", "ssim", "fsim", "rmse")}
        for k in ("bicubic", "rgb", "gray")
    }
    print(
        "mean".ljust(48)
        + " "
        + "  ".join(f"{k} {mean[k]['psnr']:.2f}/{mean[k]['ssim']:.4f}" for k in ("bicubic", "rgb", "gray"))
    )
    if a.json:
        out = {
            "convention": __doc__.split("\n\n")[2].replace("\n", " "),
            "rows": rows,
            "mean": mean,
            "gray": str(a.gray),
            "rgb": str(a.rgb),
        }
        from napari_rrim_sr.jsonable import jsonable
        from napari_rrim_sr.safe_write import atomic_write

        atomic_write(a.json, json.dumps(jsonable(out), indent=1), overwrite=True, protect=[a.gray, a.rgb])
    for up in ups.values():
        up.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
