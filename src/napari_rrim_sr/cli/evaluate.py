"""``evaluate``: PSNR/SSIM/FSIM/RMSE of a model and of bicubic against HR images."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from napari_rrim_sr.cli import add_self_ensemble_flag
from napari_rrim_sr.engine.devices import DEVICES, PRECISIONS


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a model against bicubic on HR images",
        description="For each HR image: LR = MATLAB-style bicubic x1/scale of the image cropped to "
        "a multiple of the scale; upscale LR with the model and with bicubic; report RMSE, PSNR, "
        "SSIM and FSIM against HR (Y channel for RGB, `scale` pixels shaved), per image and mean.",
    )
    p.add_argument("inputs", nargs="+", metavar="HR", help="HR image files or folders")
    p.add_argument("--model", metavar="ID|PATH", default=None, help="weights id or file (default: installed default)")
    p.add_argument(
        "--json",
        metavar="FILE",
        default=None,
        help="also write the results as JSON (never over an input image or the weights)",
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="inference precision (default fp32, so numbers do not depend on hardware)",
    )
    p.add_argument("--tile", type=int, default=None, metavar="N", help="tile edge (0 = no tiling)")
    add_self_ensemble_flag(p)
    p.add_argument("--rgb-channels", action="store_true", help="metrics on all RGB channels instead of the Y channel")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.set_defaults(func=run)


def _fmt(v: float, digits: int) -> str:
    return "inf" if math.isinf(v) else f"{v:.{digits}f}"


def run(args) -> int:
    from napari_rrim_sr.jsonable import jsonable
    from napari_rrim_sr.quality.evaluate import evaluate_folder, image_files
    from napari_rrim_sr.safe_write import atomic_write, check_target

    protect = [*args.inputs, *image_files(args.inputs)]
    if args.model and Path(args.model).exists():
        protect.append(args.model)
    if args.json:  # before any compute: refused targets (exists, an input, unwritable) cost nothing
        check_target(args.json, overwrite=args.overwrite, protect=protect)
    kw = {"device": args.device, "precision": args.precision, "tile": args.tile, "self_ensemble": args.self_ensemble}
    if args.rgb_channels:
        kw["y_channel"] = False

    def progress(i, n, f):
        print(f"[{i}/{n}] {f}", file=sys.stderr)

    res = evaluate_folder(args.inputs, args.model, progress=progress, **kw)
    head = f"{'image':<28} {'':<8} {'PSNR':>7} {'SSIM':>7} {'FSIM':>7} {'RMSE':>7}"
    print(f"model: {res['model_id']}" + (" (x8 self-ensemble)" if res["self_ensemble"] else ""))
    print(head)
    print("-" * len(head))
    for row in res["rows"] + [{"image": "MEAN", **res["mean"]}]:
        name = Path(row["image"]).name if row["image"] != "MEAN" else "MEAN"
        for which in ("model", "bicubic"):
            m = row[which]
            label = name if which == "model" else ""
            print(
                f"{label[:28]:<28} {which:<8} {_fmt(m['psnr'], 2):>7} {_fmt(m['ssim'], 4):>7} "
                f"{_fmt(m['fsim'], 4):>7} {_fmt(m['rmse'], 2):>7}"
            )
    print(f"\nconvention: {res['convention']}")
    if args.json:
        # strict JSON: identical images give PSNR = inf, written as "inf"
        text = json.dumps(jsonable(res), indent=2, allow_nan=False) + "\n"
        atomic_write(args.json, text, overwrite=args.overwrite, protect=protect)
        print(f"wrote {args.json}")
    return 0
