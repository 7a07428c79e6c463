"""Progress reports and the loop that drives a progress generator (with cancel).

Why a module: the in-memory engine, the bicubic path and callers (widget workers, CLI) share
one notion of "where a run stands" and one way to cancel between tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

from napari_rrim_sr.errors import Cancelled, InputError


@dataclass
class Progress:
    """Where a run stands; tiles are counted over all planes (slices)."""

    tiles_done: int
    tiles_total: int
    slices_done: int
    slices_total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        if self.tiles_total:
            return min(1.0, self.tiles_done / self.tiles_total)
        if self.slices_total:
            return min(1.0, self.slices_done / self.slices_total)
        return 0.0


def drain(gen, progress=None, cancel=None):
    """Run a progress generator to completion and return its value.

    ``progress(Progress)`` is called after every step; ``cancel`` (a ``threading.Event`` or a
    callable returning True) is checked between steps and raises :class:`~.errors.Cancelled`:
    a cancelled run never returns a partial result.
    """
    is_set = None
    if cancel is not None:
        if hasattr(cancel, "is_set"):
            is_set = cancel.is_set
        elif callable(cancel):
            is_set = cancel
        else:
            raise InputError("cancel must be a threading.Event or a callable returning bool")
    last = None
    try:
        while True:
            if is_set is not None and is_set():
                gen.close()
                done = f" after {last.tiles_done} of {last.tiles_total} tiles" if last else ""
                raise Cancelled(f"upscaling cancelled{done}; no result was produced")
            try:
                last = next(gen)
            except StopIteration as stop:
                return stop.value
            if progress is not None:
                progress(last)
    finally:
        gen.close()


def drain_with_bar(gen, desc: str, *, unit: str = "tile", progress=None, cancel=None):
    """:func:`drain` with a tqdm bar on stderr (the CLI's); the bar follows ``tiles_done``."""
    import sys

    from tqdm import tqdm

    bar = None

    def show(p: Progress) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=p.tiles_total, initial=p.tiles_done, desc=desc, unit=unit, file=sys.stderr, leave=False)
        if bar.total != p.tiles_total:
            bar.total = p.tiles_total
        bar.update(p.tiles_done - bar.n)
        if progress is not None:
            progress(p)

    try:
        return drain(gen, show, cancel)
    finally:
        if bar is not None:
            bar.close()
