"""``upscale``: super-resolve image files (PNG, JPEG, TIFF incl. multi-page/OME/16-bit)."""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path

from ..errors import InputError, RRIMError
from . import add_self_ensemble_flag


def register(sub) -> None:
    p = sub.add_parser(
        "upscale",
        help="upscale image files with a model (and optionally bicubic)",
        description="Upscale PNG/JPEG/TIFF files. Writes OUTDIR/<stem>.<same ext> in the input's "
        "dtype, with provenance (model, weights sha256, settings) in the file's metadata. "
        "Existing files are never overwritten unless --overwrite is given, and an output that "
        "would replace its input is refused.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files")
    p.add_argument("-o", "--outdir", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    p.add_argument("--model", metavar="ID|PATH", default=None,
                   help="weights id (see `models`) or a weights file; default: the installed default "
                   "for the image's channel count")
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help="tile edge in input pixels (0 = no tiling; default: per device)")
    p.add_argument("--overlap", type=int, default=None, metavar="N", help="tile overlap in input pixels (default 24, capped at half a small tile)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch")
    add_self_ensemble_flag(p)
    p.add_argument("--axes", default=None, metavar="AXES",
                   help="axes of the input, one letter per dimension, e.g. YX, ZYX, TCYX, YXS (S = "
                   "RGB(A) samples, run through the colour model), YXC (bands, per channel); "
                   "default: from the file's metadata")
    p.add_argument("--normalize", default="dtype", choices=("dtype", "range", "percentile"),
                   help="intensity normalisation (default: the dtype's full range)")
    p.add_argument("--percentiles", type=float, nargs=2, default=(0.1, 99.9), metavar=("LO", "HI"),
                   help="percentiles for --normalize percentile (default 0.1 99.9)")
    p.add_argument("--bit-depth", type=int, default=None, metavar="BITS",
                   help="significant bits of unsigned data (e.g. 12 for 12-bit data in uint16)")
    p.add_argument("--bicubic", action="store_true", help="also write <stem>_bicubic.<ext>")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from . import upscale_zarr

    upscale_zarr.add_arguments(p)  # --scheduler --resume --chunk --halo --memory-limit (OME-Zarr output)
    p.set_defaults(func=run)


def parse_axes(axes: str, ndim: int) -> tuple[tuple[int, int], bool]:
    """``(spatial_axes, rgb)`` from an axes string such as ``"TZYX"`` or ``"YXS"``."""
    a = axes.upper()
    if len(a) != ndim:
        raise InputError(f"--axes {axes!r} has {len(a)} letters but the image has {ndim} dimensions")
    if a.count("Y") != 1 or a.count("X") != 1:
        raise InputError(f"--axes {axes!r} must contain Y and X exactly once")
    if len(set(a)) != len(a):
        raise InputError(f"--axes {axes!r} repeats a letter")
    rgb = a.endswith("S")
    if "S" in a and not rgb:
        raise InputError(f"--axes {axes!r}: S (colour samples) must be the last axis")
    return (a.index("Y"), a.index("X")), rgb


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
                raise InputError(
                    f"{dest}: the output path is an input file; choose another output folder (-o)"
                )
    return plans


def run(args) -> int:
    from .. import __version__
    from ..engine import get_upscaler, upscale_bicubic
    from ..image_io import read_image, write_image
    from ..weights_io import file_sha256
    from . import upscale_zarr

    if upscale_zarr.wants_chunked(args):  # Zarr inputs, --scheduler, --resume: chunked OME-Zarr output
        return upscale_zarr.run(args)
    inputs = [Path(p) for p in args.inputs]
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir}: not a folder")
    plans = _outputs(inputs, outdir, args.bicubic)
    if not args.overwrite:  # fail before any compute if the run would stop on an existing file
        for _, out, bic in plans:
            for dest in (out, bic):
                if dest is not None and dest.exists():
                    raise InputError(f"{dest}: file exists; not overwriting (use --overwrite)")
    outdir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for src, out, bic in plans:
        try:
            arr, info = read_image(src)
            for w in info.get("warnings", []):
                print(f"warning: {src}: {w}", file=sys.stderr)
            if args.axes:
                spatial, rgb = parse_axes(args.axes, arr.ndim)
            else:
                spatial, rgb = info.get("spatial_axes"), info.get("rgb")
            up = get_upscaler(args.model, device=args.device, precision=args.precision,
                              threads=args.threads, channels=3 if rgb else 1,
                              self_ensemble=args.self_ensemble)
            result = _run_with_bar(
                up.upscale_iter(arr, spatial_axes=spatial, rgb=rgb, normalization=args.normalize,
                                percentiles=tuple(args.percentiles), bit_depth=args.bit_depth,
                                tile=args.tile, overlap=args.overlap),
                f"{src.name}", args.quiet,
            )
            prov = {
                "software": f"napari-rrim-sr {__version__}",
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "method": "model",
                "source": {"path": str(src), "sha256": file_sha256(src), "shape": list(arr.shape),
                           "dtype": str(arr.dtype)},
                "scale": up.scale,
                "model": up.model.provenance(),
                "engine": dict(up.last_run),
            }
            write_image(out, result, like=info, metadata=prov, scale=up.scale, overwrite=args.overwrite,
                        axes=args.axes.upper() if args.axes else None, rgb=rgb)
            print(f"{src} -> {out}  ({up.model.id}, {up.device}, {up.precision})")
            if bic is not None:
                b = upscale_bicubic(arr, up.scale, spatial_axes=spatial, rgb=rgb)
                prov_b = dict(prov, method="bicubic (MATLAB imresize convention)", model=None, engine=None)
                write_image(bic, b, like=info, metadata=prov_b, scale=up.scale, overwrite=args.overwrite,
                            axes=args.axes.upper() if args.axes else None, rgb=rgb)
                print(f"{src} -> {bic}  (bicubic)")
        except RRIMError as exc:
            failed += 1
            msg = str(exc)
            print(f"error: {msg if str(src) in msg else f'{src}: {msg}'}", file=sys.stderr)
    return 1 if failed else 0


def _run_with_bar(gen, desc: str, quiet: bool):
    from tqdm import tqdm

    bar = None
    try:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value
            if bar is None and not quiet:
                bar = tqdm(total=p.tiles_total, desc=desc, unit="tile", file=sys.stderr, leave=False)
            if bar is not None:
                if bar.total != p.tiles_total:
                    bar.total = p.tiles_total
                bar.update(p.tiles_done - bar.n)
    finally:
        gen.close()
        if bar is not None:
            bar.close()
