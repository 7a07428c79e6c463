"""Measure the automatic model choice: false texture on native images, and Kodak24 clean LR.

Native microscopy and satellite images have no HR, so the measure is the no-reference
:func:`napari_rrim_sr.quality.metrics.overshoot` (how far each output pixel leaves its 3x3 LR range, grey
levels of the crop's 0.1-99.9 % range) for the automatic choice, each fixed model of that channel
count, and bicubic. The choice is made as ``upscale --model auto`` makes it: on the file's
representative plane (:func:`napari_rrim_sr.registry.choice.choose_for_layer`); the models run on a
centre crop of that plane (default 128 x 128 LR) with the widget's "auto" normalisation. Then on
Kodak24 clean LR (``evaluate.make_lr``) the choice must keep the clean RGB model for every image,
so its PSNR is the clean model's. ``--train`` adds (or, with ``--train-only``, only does) the
clean-keep rate on clean LR (MATLAB bicubic x1/4, ``evaluate.make_lr``) of every image in
``train/`` (bsd200, yang91, SunHays80, McMaster): no model runs, only the measure; the LR are
cached as ``.npy`` under ``--cache`` so a rerun only re-measures.

    python -m napari_rrim_sr.training measure-choice --json choice.json > choice.md
    python -m napari_rrim_sr.training measure-choice --train-only --cache /tmp/choice-lr
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

#: (glob under the data folder, how many files at most). One representative plane per file.
NATIVE = [
    ("microscopy/bioimage_notebooks/*.tif", 10),
    ("microscopy/cellprofiler_examples/ExampleColocalization/images/*.png", 2),
    ("microscopy/cellprofiler_examples/ExampleHuman/images/*.tif", 3),
    ("microscopy/cellprofiler_examples/ExampleSpeckles/images/*.tif", 2),
    ("microscopy/cellprofiler_examples/ExampleStraightenWorms/images/*.tif", 2),
    ("microscopy/cellprofiler_examples/ExampleUntangleWorms/images/*.tif", 2),
    ("microscopy/cellprofiler_examples/ExampleVitraImages/images/*.tif", 2),
    ("microscopy/cellprofiler_examples/ExampleTrackObjects/images/Sequence*/*_0010.tif", 3),
    ("microscopy/omnipose_test_files/*.tif", 3),
    ("microscopy/morpholibj_samples/*", 2),
    ("microscopy/stardist_samples/*", 2),
    ("microscopy/em_isbi2012/train/1[05].png", 2),  # a z-series: a few slices
    ("microscopy/em_isbi2012/test/15.png", 1),
    ("satellite/opengeos_naip/*.tif", 2),
    ("satellite/opengeos_landsat/[12]9[89]5.tif", 1),
    ("satellite/opengeos_landsat/2020.tif", 1),
    ("satellite/rasterio_testdata/*.tif", 7),
]


def _files(root: Path) -> list[Path]:
    out: list[Path] = []
    for pattern, n in NATIVE:
        found = [
            p
            for p in sorted(root.glob(pattern))
            if p.is_file() and p.suffix.lower() in (".tif", ".tiff", ".png", ".jpg", ".jpeg")
        ]
        out += found[:n]
    return out


def _centre(a: np.ndarray, n: int) -> np.ndarray:
    h, w = a.shape[:2]
    y0, x0 = max(0, (h - n) // 2), max(0, (w - n) // 2)
    return np.ascontiguousarray(a[y0 : y0 + n, x0 : x0 + n])


def _run(wid: str, crop: np.ndarray, rgb: bool, threads: int) -> np.ndarray:
    from napari_rrim_sr.engine.api import get_upscaler
    from napari_rrim_sr.pipeline import resolve_normalization

    up = get_upscaler(wid, device="cpu", precision="fp32", threads=threads, channels=3 if rgb else 1)
    norm, _why = resolve_normalization(crop, up.model, rgb=rgb)  # the planner's "auto"
    return up.upscale(crop, rgb=rgb, tile=0, normalization=norm)


def measure_native(root: Path, crop_px: int, threads: int, log=print) -> tuple[list[dict], list[str]]:
    from napari_rrim_sr.engine.api import upscale_bicubic
    from napari_rrim_sr.io.images import read_image
    from napari_rrim_sr.quality.metrics import overshoot
    from napari_rrim_sr.registry.choice import (
        CLEAN_ROBUST_PAIRS,
        choose_for_layer,
        installed_weight_ids,
        representative_plane,
    )

    ids = installed_weight_ids()
    rows, skipped = [], []
    for path in _files(root):
        name = str(path.relative_to(root))
        try:
            arr, info = read_image(path)
        except Exception as exc:  # noqa: BLE001 - a note per unreadable file, the run goes on
            skipped.append(f"{name}: {str(exc).splitlines()[0][:160]}")
            continue
        rgb, spatial = bool(info.get("rgb")), info.get("spatial_axes")
        choice = choose_for_layer(arr, rgb=rgb, spatial_axes=spatial, available_ids=ids)
        plane = representative_plane(arr, spatial_axes=spatial, rgb=rgb)
        if rgb:
            plane = plane[..., :3]
        crop = _centre(plane, crop_px)
        if min(crop.shape[:2]) < 16 or not np.isfinite(crop).all():
            skipped.append(f"{name}: plane {plane.shape} too small or not finite")
            continue
        lo, hi = np.percentile(crop[np.isfinite(crop)], [0.1, 99.9])
        span = float(hi - lo) if hi > lo else 1.0
        clean_id, robust_id = CLEAN_ROBUST_PAIRS[3 if rgb else 1]
        outs = {wid: _run(wid, crop, rgb, threads) for wid in (clean_id, robust_id)}
        outs["bicubic"] = upscale_bicubic(crop.astype(np.float64), 4, rgb=rgb)
        base = np.asarray(crop, np.float64) - lo  # overshoot is shift-invariant: the crop's range -> 0..255
        over = {k: overshoot(base, np.asarray(v, np.float64) - lo, 4, data_range=span) for k, v in outs.items()}
        over["auto"] = over[choice.weights_id]
        row = {
            "file": name,
            "shape": list(arr.shape),
            "dtype": str(arr.dtype),
            "rgb": rgb,
            "crop": list(crop.shape),
            "choice": choice.as_dict(),
            "overshoot": {k: {"mean": m, "p99_9": p} for k, (m, p) in over.items()},
            "pair": [clean_id, robust_id],
        }
        rows.append(row)
        log(f"  {name}: {choice.reason}")
    return rows, skipped


def measure_kodak(root: Path, threads: int) -> dict:
    from PIL import Image

    from napari_rrim_sr.quality.evaluate import make_lr
    from napari_rrim_sr.quality.metrics import compare
    from napari_rrim_sr.registry.choice import choose_for_layer, installed_weight_ids

    ids = installed_weight_ids()
    files = sorted((root / "val" / "Kodak24").glob("*.png"))
    picks, psnr_auto, psnr_clean, fine = [], [], [], []
    for f in files:
        hr, lr = make_lr(np.asarray(Image.open(f).convert("RGB")), 4)
        choice = choose_for_layer(lr, rgb=True, available_ids=ids)
        picks.append(choice.weights_id)
        fine.append(choice.condition.fine_detail if choice.condition else float("nan"))
        clean = _run("rrim-x4-rgb-psnr", lr, True, threads)
        auto = clean if choice.weights_id == "rrim-x4-rgb-psnr" else _run(choice.weights_id, lr, True, threads)
        psnr_clean.append(compare(clean, hr, data_range=255, y_channel=True, border=4)["psnr"])
        psnr_auto.append(compare(auto, hr, data_range=255, y_channel=True, border=4)["psnr"])
    return {
        "n": len(files),
        "picked": {k: picks.count(k) for k in sorted(set(picks))},
        "max_fine_detail": float(np.max(fine)) if files else None,
        "psnr_auto": float(np.mean(psnr_auto)) if files else None,
        "psnr_clean": float(np.mean(psnr_clean)) if files else None,
    }


def _train_lr(path: Path, cache: Path | None) -> np.ndarray:
    """Clean LR of one training image (RGB, MATLAB bicubic x1/4), from ``cache`` when there."""
    from PIL import Image

    from napari_rrim_sr.quality.evaluate import make_lr

    dst = cache / f"{path.parent.name}__{path.stem}.npy" if cache else None
    if dst is not None and dst.is_file():
        return np.load(dst)
    with Image.open(path) as im:
        _, lr = make_lr(np.asarray(im.convert("RGB")), 4)
    if dst is not None:
        import io

        from napari_rrim_sr.safe_write import atomic_write

        buf = io.BytesIO()
        np.save(buf, lr)
        atomic_write(dst, buf.getvalue(), overwrite=True)
    return lr


def measure_train(root: Path, cache: Path | None = None, log=print) -> dict:
    """How often clean LR of the training images keeps the clean RGB model (the target: >= 98 %)."""
    from napari_rrim_sr.registry.choice import CLEAN_ROBUST_PAIRS, choose_weights

    ids = list(CLEAN_ROBUST_PAIRS[3])
    sets: dict[str, dict] = {}
    robust: list[dict] = []
    files = sorted(p for p in (root / "train").glob("*/*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    for f in files:
        lr = _train_lr(f, cache)
        c = choose_weights(lr, channels=3, rgb=True, available_ids=ids)
        s = sets.setdefault(f.parent.name, {"n": 0, "clean": 0})
        s["n"] += 1
        s["clean"] += not c.robust
        if c.robust:
            robust.append({"file": f"{f.parent.name}/{f.name}", "reason": c.reason, "details": c.details})
            log(f"  robust: {f.parent.name}/{f.name}: {c.details}")
    n = sum(s["n"] for s in sets.values())
    kept = sum(s["clean"] for s in sets.values())
    return {"sets": sets, "n": n, "clean": kept, "rate": kept / n if n else None, "robust": robust}


def train_table(train: dict) -> str:
    lines = ["| training set | images | clean model kept | rate |", "|---|---:|---:|---:|"]
    for name, s in sorted(train["sets"].items()):
        lines.append(f"| {name} | {s['n']} | {s['clean']} | {100 * s['clean'] / s['n']:.1f} % |")
    lines.append(f"| **all** | **{train['n']}** | **{train['clean']}** | **{100 * (train['rate'] or 0):.1f} %** |")
    if train["robust"]:
        lines.append("\nSent to the robust model:")
        lines += [f"- {r['file']}: {r['details']}" for r in train["robust"]]
    return "\n".join(lines)


def _why(choice: dict) -> str:
    """The model and the plain verdict (the part of the reason before the arrow)."""
    return f"{choice['weights']}: {choice['reason'].split(' → ')[0]}"


def table(rows: list[dict], skipped: list[str], kodak: dict | None) -> str:
    cols = ["auto", "clean", "robust", "bicubic"]

    def cells(r):
        o = r["overshoot"]
        keys = {"auto": "auto", "clean": r["pair"][0], "robust": r["pair"][1], "bicubic": "bicubic"}
        return [f"{o[keys[c]]['p99_9']:.2f} / {o[keys[c]]['mean']:.3f}" for c in cols]

    lines = [
        "| file | choice (reason) | " + " | ".join(f"{c} p99.9 / mean" for c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append(f"| {r['file']} | {_why(r['choice'])} | " + " | ".join(cells(r)) + " |")
    for group, pick in (("1-channel", False), ("RGB", True)):
        sub = [r for r in rows if r["rgb"] == pick]
        if not sub:
            continue
        mean = []
        for c in cols:
            keys = [{"auto": "auto", "clean": r["pair"][0], "robust": r["pair"][1]}.get(c, "bicubic") for r in sub]
            p = np.mean([r["overshoot"][k]["p99_9"] for r, k in zip(sub, keys)])
            m = np.mean([r["overshoot"][k]["mean"] for r, k in zip(sub, keys)])
            mean.append(f"**{p:.2f} / {m:.3f}**")
        n_rob = sum(r["choice"]["robust"] for r in sub)
        lines.append(f"| **mean, {group} ({len(sub)})** | robust for {n_rob}/{len(sub)} | " + " | ".join(mean) + " |")
    out = "\n".join(lines)
    if skipped:
        out += "\n\nSkipped: " + "; ".join(skipped)
    if kodak:
        out += (
            f"\n\nKodak24 clean LR ({kodak['n']} images): picked {kodak['picked']}; Y-PSNR auto "
            f"{kodak['psnr_auto']:.3f} dB, rrim-x4-rgb-psnr {kodak['psnr_clean']:.3f} dB; "
            f"largest fine-detail ratio {kodak['max_fine_detail']:.3f}"
        )
    return out


def _default_data() -> Path:
    """``../shared/data`` beside the repository (``shared/data`` inside it as a fallback)."""
    repo = Path(__file__).resolve().parents[4]
    for cand in (repo.parent / "shared" / "data", repo / "shared" / "data"):
        if cand.is_dir():
            return cand
    return repo.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=_default_data(),
        help="the shared data folder (default: ../shared/data of the repository)",
    )
    ap.add_argument("--crop", type=int, default=128, help="LR centre-crop edge in pixels (default 128)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--no-kodak", action="store_true", help="skip the Kodak24 check")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    ap.add_argument("--train", action="store_true", help="also the clean-keep rate on clean LR of every train/ image")
    ap.add_argument("--train-only", action="store_true", help="only the clean-keep rate (no model runs)")
    ap.add_argument("--cache", type=Path, default=None, help="folder for the training LR (.npy), reused by reruns")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        ap.error(f"no data folder {args.data} (give --data)")
    t0 = time.time()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    rows, skipped, kodak, train = [], [], None, None
    if args.train or args.train_only:
        train = measure_train(args.data, args.cache, log=log)
        print(train_table(train) + "\n")
    if not args.train_only:
        rows, skipped = measure_native(args.data, args.crop, args.threads, log=log)
        kodak = None if args.no_kodak else measure_kodak(args.data, args.threads)
        print(table(rows, skipped, kodak))
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    n_img = len(rows) + (train["n"] if train else 0)
    print(f"\n{n_img} images, {time.time() - t0:.0f} s on {cpu}, {args.threads} thread(s), fp32")
    if args.json:
        from napari_rrim_sr.jsonable import jsonable
        from napari_rrim_sr.safe_write import atomic_write

        atomic_write(
            args.json,
            json.dumps(jsonable({"native": rows, "skipped": skipped, "kodak24": kodak, "train": train}), indent=1),
            overwrite=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
