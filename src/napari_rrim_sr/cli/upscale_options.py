"""Checks of ``upscale``'s options that depend on no input: done once, before any work, for
both the in-memory and the OME-Zarr path (one line each, never a traceback from inside dask)."""

from __future__ import annotations

from napari_rrim_sr.errors import InputError


def check_options(args) -> None:
    """Validation that does not depend on any input: done once, before any work."""
    from napari_rrim_sr.engine import devices

    tile = args.tile
    if tile is not None and (tile < 0 or 0 < tile < 8):
        raise InputError(f"--tile must be 0 (no tiling) or at least 8 pixels, got {tile}")
    if args.overlap is not None and args.overlap < 0:
        raise InputError(f"--overlap must be >= 0, got {args.overlap}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    if args.bit_depth is not None and not 1 <= args.bit_depth <= 64:
        raise InputError(f"--bit-depth must be in 1..64, got {args.bit_depth}")
    if args.normalize == "percentile":  # checked once here, not once per input
        from napari_rrim_sr.engine.normalize import parse_percentiles

        try:
            parse_percentiles(args.percentiles)
        except InputError as exc:
            raise InputError(f"--percentiles: {exc}") from None
    chunk = getattr(args, "chunk", None)
    if chunk is not None and chunk < 1:
        raise InputError(f"--chunk must be a positive number of pixels, got {chunk}")
    halo = getattr(args, "halo", None)
    if halo is not None and halo < 0:
        raise InputError(f"--halo must be >= 0, got {halo}")
    if getattr(args, "memory_limit", None) is not None:
        parse_memory_limit(args.memory_limit)
    devices.resolve_device(args.device)


def parse_memory_limit(value: str) -> str | float:
    """``--memory-limit`` as dask accepts it (``auto``, a fraction of the RAM, or a size such as
    ``2GiB``), checked here so a typo is one line, not a traceback from inside dask."""
    text = str(value).strip()
    if text.lower() == "auto":
        return "auto"
    try:
        frac = float(text)
    except ValueError:
        frac = None
    if frac is not None:
        if frac > 0 and frac == frac and frac != float("inf"):
            return frac
        raise InputError(f"--memory-limit must be positive, got {value!r}")
    from dask.utils import parse_bytes

    try:
        n = parse_bytes(text)
    except (ValueError, TypeError):
        n = 0
    if n <= 0:
        raise InputError(f"--memory-limit {value!r} is not a size; use e.g. 2GiB, 500MB or auto")
    return text
