"""``python -m napari_rrim_sr`` / ``napari-rrim-sr``: the batch command line.

Each subcommand lives in :mod:`napari_rrim_sr.cli` as a module with ``register(subparsers)``
(adding a parser whose ``func(args) -> int`` runs it), so the CLI stays a thin router.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from napari_rrim_sr import read_guard
from napari_rrim_sr.errors import RRIMError

#: subcommand modules, in the order ``--help`` lists them
COMMANDS = ("upscale", "evaluate", "models", "bench", "bench_zarr", "demo", "export")


def build_parser() -> argparse.ArgumentParser:
    from napari_rrim_sr import __version__

    parser = argparse.ArgumentParser(
        prog="napari-rrim-sr",
        description="x4 super-resolution with the RRIM generator (and other registered backbones).",
    )
    parser.add_argument("--version", action="version", version=f"napari-rrim-sr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"napari_rrim_sr.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"napari_rrim_sr.cli.{name}":
                continue  # subcommand not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with read_guard.reading():  # every file the command opens is protected from its writes
            return int(args.func(args) or 0)
    except RRIMError as exc:  # expected problems: a plain message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader is gone, which is not an error of ours
        silence_broken_pipe()
        return 0


def silence_broken_pipe() -> None:
    """After a ``BrokenPipeError`` on stdout: point stdout at devnull so the interpreter's final
    flush does not print "Exception ignored ... BrokenPipeError" (the Python docs' recipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (pytest capture)
        pass
