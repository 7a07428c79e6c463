"""``export``: write weights as a bioimage.io model package (.zip) or an ONNX file."""

from __future__ import annotations

import sys
import time


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export weights as a bioimage.io model package or an ONNX file",
        description="Export weights for other tools: --format bioimageio writes a bioimage.io "
        "(spec 0.5) model package (.zip) that deepImageJ, ilastik, QuPath, BiaPy and bioimageio.core "
        "open; --format onnx writes an ONNX file (dynamic batch/height/width, provenance in its "
        "metadata). Needs the 'export' extra. OUT is never replaced without --overwrite, and never "
        "if it is the weights file itself.",
    )
    p.add_argument("model", metavar="MODEL", help="weights id (see `models`) or a weights file")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (.zip or .onnx)")
    p.add_argument("--format", dest="fmt", required=True, choices=("bioimageio", "onnx"))
    p.add_argument(
        "--input-range",
        type=float,
        nargs=2,
        default=(0.0, 255.0),
        metavar=("LO", "HI"),
        help="bioimageio: the input values mapped to the network's 0..1 (default 0 255, "
        "8-bit data; e.g. 0 65535 for 16-bit, 0 4095 for 12-bit)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=run)


def run(args) -> int:
    from napari_rrim_sr.export import export_model

    t0 = time.perf_counter()

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr)

    out = export_model(
        args.model, args.fmt, args.output, overwrite=args.overwrite, progress=say, input_range=tuple(args.input_range)
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    return 0
