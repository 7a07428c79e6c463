"""Measure what the default upscale does to mean intensity: every uint16 file in ../shared/data/microscopy.

Issue 23 ("silently wrong" 1): the default path must keep the input's mean within 5 % of that
mean and within 2 % of the data's range; bicubic within 0.1 %. Each file is read as the CLI
reads it, reduced to its representative plane (the middle Z/T/C index; colour kept) and a
centre crop of ``--crop`` pixels (default 48: the shipped models run at a few seconds per crop on
a 2-core CPU), then upscaled by the pipeline with DEFAULT settings (model, normalisation and
precision ``auto``), exactly as ``upscale`` does. The table also gives the result-vs-input
check (PSNR of the result downscaled by MATLAB bicubic x1/4 against the input) and its cost.

    python -m napari_rrim_sr.training measure-means > means.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _files(root: Path) -> list[Path]:
    import tifffile

    out = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in (".tif", ".tiff") or not p.is_file():
            continue
        try:
            with tifffile.TiffFile(p) as tf:
                if tf.series[0].dtype == np.uint16:
                    out.append(p)
        except Exception:  # noqa: BLE001 - not a readable TIFF: not a uint16 file either
            continue
    return out


def _crop(arr: np.ndarray, info: dict, n: int) -> tuple[np.ndarray, bool]:
    from napari_rrim_sr.io.geometry import representative_plane

    rgb = bool(info.get("rgb"))
    plane = representative_plane(arr, spatial_axes=info.get("spatial_axes"), rgb=rgb)
    h, w = plane.shape[:2]
    y0, x0 = max(0, (h - n) // 2), max(0, (w - n) // 2)
    return np.ascontiguousarray(plane[y0 : y0 + n, x0 : x0 + n]), rgb


def _shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = b.mean() - a.mean()
    rng = float(a.max() - a.min()) or 1.0
    return 100 * d / abs(a.mean()) if a.mean() else float("nan"), 100 * d / rng


def measure(root: Path, crop: int, log=print) -> list[dict]:
    from napari_rrim_sr.engine.api import upscale_bicubic
    from napari_rrim_sr.io.images import read_image
    from napari_rrim_sr.pipeline import Source, UpscaleRequest, plan, run

    rows = []
    for p in _files(root):
        arr, info = read_image(p)
        x, rgb = _crop(arr, info, crop)
        t0 = time.perf_counter()
        res = run(plan(UpscaleRequest(Source(x, name=p.name, rgb=rgb))))
        secs = time.perf_counter() - t0
        bic = upscale_bicubic(x, 4, rgb=rgb)
        sm, sr = _shift(x, res.data)
        bm, br = _shift(x, bic)
        rows.append(
            {
                "file": str(p.relative_to(root)),
                "shape": list(arr.shape),
                "crop": list(x.shape),
                "model": res.plan.model.id,
                "normalization": res.provenance["normalization"],
                "precision": res.precision,
                "mean_in": float(x.mean()),
                "mean_out": float(res.data.mean()),
                "shift_of_mean_pct": sm,
                "shift_of_range_pct": sr,
                "bicubic_shift_of_mean_pct": bm,
                "bicubic_shift_of_range_pct": br,
                "check_psnr": res.check["psnr"],
                "check_s": res.check["seconds"],
                "seconds": secs,
                "warnings": res.warnings,
            }
        )
        log(f"{p.name}: {sm:+.2f} % of mean, {sr:+.2f} % of range ({res.plan.model.id})", file=sys.stderr)
    return rows


def table(rows: list[dict], crop: int) -> str:
    lines = [
        "| file (uint16) | crop | model | normalisation | mean in -> out | shift % of mean | % of range | "
        "bicubic % of mean | bicubic % of range | check PSNR (dB) | check s / run s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["normalization"]
        lines.append(
            f"| {r['file']} | {'x'.join(map(str, r['crop']))} | {r['model']} | {n['mode']} {n['lo']:g}..{n['hi']:g} | "
            f"{r['mean_in']:.2f} -> {r['mean_out']:.2f} | {r['shift_of_mean_pct']:+.2f} | "
            f"{r['shift_of_range_pct']:+.2f} | {r['bicubic_shift_of_mean_pct']:+.3f} | "
            f"{r['bicubic_shift_of_range_pct']:+.3f} | {r['check_psnr']:.1f} | {r['check_s']:.3f} / {r['seconds']:.1f} |"
        )
    worst_m = max(abs(r["shift_of_mean_pct"]) for r in rows)
    worst_r = max(abs(r["shift_of_range_pct"]) for r in rows)
    worst_bm = max(abs(r["bicubic_shift_of_mean_pct"]) for r in rows)
    lines += [
        "",
        f"{len(rows)} files, centre crop {crop}x{crop} of the representative plane. Largest mean shift of the "
        f"default upscale: {worst_m:.2f} % of the mean, {worst_r:.2f} % of the range (limits 5 % and 2 %); "
        f"bicubic: {worst_bm:.3f} % of the mean (limit 0.1 %).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[5] / "shared" / "data" / "microscopy",
        help="folder searched for uint16 TIFFs (default ../shared/data/microscopy)",
    )
    ap.add_argument("--crop", type=int, default=48, help="centre-crop edge in input pixels (default 48)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = ap.parse_args(argv)
    rows = measure(args.data, args.crop)
    if not rows:
        print(f"no uint16 TIFF under {args.data}", file=sys.stderr)
        return 1
    if args.json:
        from napari_rrim_sr.safe_write import atomic_write

        atomic_write(args.json, json.dumps(rows, indent=1), overwrite=True)
    print(table(rows, args.crop), end="")
    bad = [r for r in rows if abs(r["shift_of_mean_pct"]) > 5 or abs(r["shift_of_range_pct"]) > 2]
    return 1 if bad else 0
