"""``upscale`` for data larger than memory: OME-Zarr / Zarr / large TIFF in, OME-Zarr out, chunk by chunk.

``commands/upscale.py`` dispatches here when an input is a Zarr store, or ``--scheduler`` or
``--resume`` is given; the core is :mod:`napari_rrim_sr.pipeline.chunked` (running) and
:mod:`napari_rrim_sr.io.ngff` (metadata).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from napari_rrim_sr.errors import InputError, RRIMError


def add_arguments(p) -> None:
    """The flags of the chunked path (added to the ``upscale`` parser)."""
    g = p.add_argument_group("large data (OME-Zarr output, chunk by chunk, resumable)")
    g.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS|local:N|threads",
        help="run chunks on a dask.distributed scheduler (tcp://host:8786), a local cluster of N "
        "single-threaded worker processes (local:N), or in-process threads (threads, the default "
        "for Zarr inputs). Given for a TIFF, the TIFF is read lazily and written as OME-Zarr",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run into the existing OUTDIR/<name>.ome.zarr: only chunks "
        "without a completion marker are computed; refused if the settings or weights differ",
    )
    g.add_argument(
        "--chunk",
        type=int,
        default=None,
        metavar="N",
        help="output chunk edge in pixels (a multiple of the model's scale; default 512)",
    )
    g.add_argument(
        "--halo",
        type=int,
        default=None,
        metavar="N",
        help="input pixels of context read around each chunk (default 24)",
    )
    g.add_argument(
        "--dashboard",
        action="store_true",
        help="with --scheduler local:N: serve dask's dashboard on 127.0.0.1:8787 (or a free port) "
        "and print its address; without it the cluster logs only warnings and serves no dashboard",
    )
    g.add_argument(
        "--memory-limit",
        default=None,
        metavar="SIZE",
        help="memory limit per worker for --scheduler local:N (e.g. 2GiB; default: dask's auto)",
    )


def wants_chunked(args) -> bool:
    """The dispatch rule of ``upscale``: a Zarr input, or --scheduler / --resume given."""
    from napari_rrim_sr.io.ngff import is_zarr_path

    if getattr(args, "scheduler", None) or getattr(args, "resume", False):
        return True
    return any(is_zarr_path(p) for p in args.inputs)


def run(args) -> int:
    from napari_rrim_sr.cli.upscale_options import check_options
    from napari_rrim_sr.engine.progress import drain, drain_with_bar
    from napari_rrim_sr.io.ngff import open_source, output_name
    from napari_rrim_sr.pipeline import Output, Source, UpscaleRequest, chunked, plan, run_iter

    check_options(args)  # once, before any work (--chunk 0, --memory-limit garbage...)
    if args.bicubic:
        raise InputError("--bicubic is not available for Zarr/chunked output")
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir}: not a folder")
    failed = 0
    srcs = []
    for p in args.inputs:  # every input opened before any work; one that fails does not stop the others
        try:
            srcs.append(open_source(p, args.axes))
        except RRIMError as exc:
            failed += 1
            msg = str(exc)
            print(f"error: {msg if str(p) in msg else f'{p}: {msg}'}", file=sys.stderr)
    if not srcs:
        return 1
    outs = [outdir / f"{output_name(s.path)}.ome.zarr" for s in srcs]
    if len({o.resolve() for o in outs}) != len(outs):
        raise InputError("two inputs would be written to the same OUTDIR/<name>.ome.zarr; run them separately")
    dashboard = bool(getattr(args, "dashboard", False))
    client, close, workers = chunked.open_scheduler(args.scheduler, memory_limit=args.memory_limit, dashboard=dashboard)
    if dashboard and client is not None:
        print(f"dask dashboard: {client.dashboard_link}", file=sys.stderr)
    threads = args.threads
    if threads is None and args.scheduler and args.scheduler.startswith("local:"):
        import os

        threads = max(1, (os.cpu_count() or 1) // workers)
    command = _command(args)
    try:
        for src, out in zip(srcs, outs):
            try:
                request = UpscaleRequest(
                    Source(
                        src.open(),
                        name=src.name or src.path.name,
                        axes="".join(src.axis_names),
                        spatial_axes=src.spatial,
                        rgb=False,
                        scale=tuple(src.scale),
                        translate=tuple(src.translate),
                        path=src.path,
                        zarr=src,
                    ),
                    model=args.model,
                    normalization=args.normalize,
                    percentiles=tuple(args.percentiles),
                    bit_depth=args.bit_depth,
                    device=args.device,
                    precision=args.precision,
                    backend=getattr(args, "backend", "auto") or "auto",
                    threads=threads,
                    tile=args.tile,
                    overlap=args.overlap,
                    self_ensemble=args.self_ensemble,
                    output=Output(
                        "store",
                        path=out,
                        overwrite=args.overwrite,
                        resume=args.resume,
                        chunk=chunked.DEFAULT_CHUNK if args.chunk is None else args.chunk,
                        halo=chunked.DEFAULT_HALO if args.halo is None else args.halo,
                        client=client,
                        workers=workers,
                        command=command,
                        extra={"scheduler": args.scheduler or "threads"},
                    ),
                )
                planned = plan(request)
                if not args.quiet:
                    for line in planned.explain():
                        print(f"{src.path.name}: {line}")
                gen = run_iter(planned)
                result = drain(gen) if args.quiet else drain_with_bar(gen, src.name, unit="chunk")
                summary = result.summary
                print(
                    f"{src.path} -> {out}  ({summary['computed']} chunks computed, {summary['skipped']} "
                    f"already done, of {summary['chunks']})  ({result.line()})"
                )
                for w in result.warnings:
                    print(f"warning: {src.path}: {w}", file=sys.stderr)
            except RRIMError as exc:
                failed += 1
                msg = str(exc)
                print(f"error: {msg if str(src.path) in msg else f'{src.path}: {msg}'}", file=sys.stderr)
    finally:
        close()
    return 1 if failed else 0


def _command(args) -> str:
    """The command line, for provenance (rebuilt from ``args`` when called in-process)."""
    if len(sys.argv) > 1 and "upscale" in sys.argv[1:]:
        return " ".join(shlex.quote(a) for a in ["napari-rrim-sr", *sys.argv[sys.argv.index("upscale") :]])
    parts = ["napari-rrim-sr", "upscale", *map(str, args.inputs), "-o", str(args.outdir)]
    for k, v in sorted(vars(args).items()):
        if k in ("inputs", "outdir", "func", "command", "verbose") or v in (None, False):
            continue
        flag = "--" + k.replace("_", "-")
        parts += [flag] if v is True else [flag, *(map(str, v) if isinstance(v, (list, tuple)) else [str(v)])]
    return " ".join(shlex.quote(p) for p in parts)
