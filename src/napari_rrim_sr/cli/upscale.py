"""``upscale``: super-resolve image files (PNG, JPEG, TIFF incl. multi-page/OME/16-bit)."""

from __future__ import annotations

import sys
from pathlib import Path

from napari_rrim_sr.cli import add_self_ensemble_flag
from napari_rrim_sr.cli.upscale_options import check_options
from napari_rrim_sr.engine.devices import BACKENDS, DEVICES, PRECISIONS
from napari_rrim_sr.errors import InputError, RRIMError


def register(sub) -> None:
    p = sub.add_parser(
        "upscale",
        help="upscale image files with a model (and optionally bicubic)",
        description="Upscale PNG/JPEG/TIFF files. Writes OUTDIR/<stem>.<same ext> in the input's "
        "dtype, with provenance (model, weights sha256, settings) in the file's metadata. "
        "Existing files are never overwritten unless --overwrite is given, and an output that "
        "would replace its input is refused (also through a symlink or hard link), even with "
        "--overwrite. Each output is written under a temporary name and moved into place. "
        "A 4-sample image whose 4th sample is not an alpha mask (not constant or binary-like, e.g. "
        "RGB + near-infrared) is upscaled as 4 bands, each with the gray model, and kept as 4 bands; "
        "a line says so. Channel stacks (C axis) are upscaled channel by channel.",
        epilog="Exit status: 0 when every input was written; 1 when the options are invalid (reported "
        "once, before any work) or when at least one input failed (one 'error: INPUT: problem' line "
        "each; the other inputs are still processed); 2 for a usage error.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files")
    p.add_argument(
        "-o",
        "--outdir",
        required=True,
        metavar="OUTDIR",
        help="output folder (created when the first output is written; never left empty)",
    )
    p.add_argument(
        "--model",
        metavar="auto|ID|PATH",
        default="auto",
        help="auto (default): per input, measure its representative plane (the middle "
        "Z/T/channel slice) and choose the clean model (rrim-x4-gray / rrim-x4-rgb-psnr) "
        "for clean, already-smoothed data or the robust one (rrim-x4-gray-real / "
        "rrim-x4-rgb-real) when it finds white noise above the quantisation level or "
        "JPEG 8x8 blocks; the reason is printed per input and kept in the provenance "
        "(model_choice). Or a weights id (see `models`) or a weights file, used for every input",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        metavar="N",
        help="tile edge in input pixels (0 = no tiling; default: per device)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=None,
        metavar="N",
        help="tile overlap in input pixels (default 24, capped at half a small tile)",
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="CPU inference engine: auto = OpenVINO when installed and the model converts "
        "(one line says why not), else torch; GPU runs always use torch",
    )
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch")
    add_self_ensemble_flag(p)
    p.add_argument(
        "--axes",
        default=None,
        metavar="AXES",
        help="axes of the input FILE AS STORED, one letter per stored dimension, e.g. YX, ZYX, "
        "TCYX, CYX or SYX (planar colour), YXS (S = samples: 3 or 4 are run through the colour "
        "model, other counts are bands), C = bands (each upscaled alone); default: the "
        "file's own axes metadata (TIFF/OME/ImageJ axes; YX or YXS for PNG/JPEG), else "
        "tifffile's guess from the shape",
    )
    p.add_argument(
        "--normalize",
        default="auto",
        choices=("auto", "dtype", "range", "percentile"),
        help="intensity normalisation. auto (default): 8-bit data by the dtype range (0..255, as the "
        "models were trained); wider integers and floats by their own min..max over the whole "
        "image/stack/store (so dim 16-bit data reaches the model at 0..1); weights whose metadata "
        "asks for percentile normalisation (fine-tuned models) get it. Recorded in the provenance",
    )
    p.add_argument(
        "--percentiles",
        type=float,
        nargs=2,
        default=(0.1, 99.9),
        metavar=("LO", "HI"),
        help="percentiles for --normalize percentile (default 0.1 99.9)",
    )
    p.add_argument(
        "--bit-depth",
        type=int,
        default=None,
        metavar="BITS",
        help="significant bits of unsigned data (e.g. 12 for 12-bit data in uint16)",
    )
    p.add_argument("--bicubic", action="store_true", help="also write <stem>_bicubic.<ext>")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from napari_rrim_sr.cli import upscale_zarr

    upscale_zarr.add_arguments(p)  # --scheduler --resume --chunk --halo --memory-limit (OME-Zarr output)
    p.set_defaults(func=run)


def _outputs(inputs: list[Path], outdir: Path, bicubic: bool) -> list[tuple[Path, Path, Path | None]]:
    plans = []
    seen: dict[Path, Path] = {}
    for src in inputs:
        out = outdir / f"{src.stem}{src.suffix}"
        bic = outdir / f"{src.stem}_bicubic{src.suffix}" if bicubic else None
        for dest in (out, bic):
            if dest is None:
                continue
            key = dest.resolve()
            if key in seen:
                raise InputError(f"{seen[key]} and {src} would both be written to {dest}; run them separately")
            seen[key] = src
        plans.append((src, out, bic))
    in_keys = {s.resolve() for s in inputs}
    for src, out, bic in plans:
        for dest in (out, bic):
            if dest is not None and dest.resolve() in in_keys:
                raise InputError(f"{dest}: the output path is an input file; choose another output folder (-o)")
    return plans


def run(args) -> int:
    from napari_rrim_sr.cli import upscale_zarr
    from napari_rrim_sr.engine.progress import drain, drain_with_bar
    from napari_rrim_sr.io.bands import classify_fourth_band
    from napari_rrim_sr.io.images import apply_axes, read_image
    from napari_rrim_sr.pipeline import Output, Source, UpscaleRequest, load_model_for, plan, run_iter
    from napari_rrim_sr.safe_write import check_target

    if upscale_zarr.wants_chunked(args):  # Zarr inputs, --scheduler, --resume: chunked OME-Zarr output
        from napari_rrim_sr.io.ngff import is_zarr_path

        others = [p for p in args.inputs if not is_zarr_path(p)]
        if args.scheduler or args.resume or not others:
            return upscale_zarr.run(args)
        # a batch mixing Zarr stores and image files: the stores chunk by chunk, the images in memory
        import argparse

        zarr_args = argparse.Namespace(**{**vars(args), "inputs": [p for p in args.inputs if is_zarr_path(p)]})
        check_options(args)
        rc = upscale_zarr.run(zarr_args)
        args = argparse.Namespace(**{**vars(args), "inputs": others})
        return max(rc, run(args))
    inputs = [Path(p) for p in args.inputs]
    outdir = Path(args.outdir)
    check_options(args)
    # the output folder must be creatable (not under a file, writable); it is not created here,
    # so a run whose every input fails leaves no empty folder behind
    check_target(outdir, overwrite=True, kind="dir")
    auto = args.model in (None, "auto")
    model = args.model
    if not auto:  # weights named by the user: resolved once (missing, corrupt...), used for every input
        model = load_model_for(Path(args.model) if Path(args.model).exists() else args.model, channels=1)
    model_path = Path(model.path) if not auto and model.path is not None else None
    plans = _outputs(inputs, outdir, args.bicubic)
    protect = [*inputs, *([model_path] if model_path else [])]
    for _, out, bic in plans:  # fail before any compute if the run would stop on an existing file
        for dest in (out, bic):
            if dest is not None:
                check_target(dest, overwrite=args.overwrite, protect=protect)
    failed = 0
    for src, out, bic in plans:
        try:
            arr, info = read_image(src)
            for w in info.get("warnings", []):
                print(f"warning: {src}: {w}", file=sys.stderr)
            if args.axes:
                arr, axes, spatial, rgb = apply_axes(arr, info, args.axes)
            else:
                axes, spatial, rgb = None, info.get("spatial_axes"), info.get("rgb")
                if rgb and arr.shape[-1] == 4:  # RGBA, or RGB + a band (NIR) tagged as alpha?
                    kind, why = classify_fourth_band(arr)
                    if kind == "band":
                        axes, rgb = str(info["axes"])[:-1] + "C", False
                        print(f"{src.name}: {why}: all 4 bands upscaled one by one with the gray model")
            request = UpscaleRequest(
                Source(arr, name=src.name, axes=axes, spatial_axes=spatial, rgb=bool(rgb), path=src, info=info),
                model=model,
                normalization=args.normalize,
                percentiles=tuple(args.percentiles),
                bit_depth=args.bit_depth,
                device=args.device,
                precision=args.precision,
                backend=getattr(args, "backend", "auto") or "auto",
                threads=args.threads,
                tile=args.tile,
                overlap=args.overlap,
                self_ensemble=args.self_ensemble,
                bicubic=bool(args.bicubic),
                fourth_band="alpha",  # decided above, with the line printed
                output=Output("files", path=out, bicubic_path=bic, overwrite=args.overwrite, protect=tuple(protect)),
            )
            planned = plan(request)
            for line in planned.explain():
                print(f"{src.name}: {line}")
            gen = run_iter(planned)
            result = drain(gen) if args.quiet else drain_with_bar(gen, src.name)
            print(f"{src} -> {out}  ({result.line()})")
            for w in result.warnings:
                print(f"warning: {src}: {w}", file=sys.stderr)
            if bic is not None:
                print(f"{src} -> {bic}  (bicubic)")
        except RRIMError as exc:
            failed += 1
            msg = str(exc)
            print(f"error: {msg if str(src) in msg else f'{src}: {msg}'}", file=sys.stderr)
        except OSError as exc:  # a write outside safe_write's reach, a vanished input...
            failed += 1
            print(f"error: {src}: {exc.strerror or type(exc).__name__} ({exc.filename or src})", file=sys.stderr)
    return 1 if failed else 0
