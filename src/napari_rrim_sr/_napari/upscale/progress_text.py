"""Where a run stands, in words a user reads (no Qt): ``"tile 3/12, slice 2/5"`` and a fraction.

Why here and not in the engine: the engine reports work *done* (``Progress.tiles_done``); the
widgets show a counter and a bar. Both must agree with each other and never run ahead (issue
24: "tile 2/5, slice 1/5" was shown while the first tile of slice 1 had just finished).
"""

from __future__ import annotations

__all__ = ["ProgressText", "eta_text"]


class ProgressText:
    """``"tile 3/12, slice 2/5"``: the tile counter counts finished tiles (from 1: the first
    tile is the one shown while it runs), the slice counter the slice that tile belongs to, so
    the two never disagree; the fraction never decreases."""

    def __init__(self):
        self.reset()

    def reset(self, prefix: str = "", unit: str = "tile") -> None:
        """Start counting again; ``unit``: ``"tile"`` (in memory) or ``"chunk"`` (a store run)."""
        self.unit = unit
        self._tile = 0
        self._slice = 0
        self._frac = 0.0
        self.prefix = prefix

    @property
    def fraction(self) -> float:
        return self._frac

    def update(self, p) -> tuple[str, float]:
        """``(text, fraction)`` of an engine ``Progress``; the fraction never decreases."""
        tiles_total = int(getattr(p, "tiles_total", 0) or 0)
        slices_total = int(getattr(p, "slices_total", 0) or 0)
        message = str(getattr(p, "message", "") or "")
        if not tiles_total:
            return (f"{self.prefix}{message or 'working'}", self._frac)
        done = int(getattr(p, "tiles_done", 0) or 0)
        self._tile = max(self._tile, min(max(done, 1), tiles_total))
        text = f"{self.unit} {self._tile}/{tiles_total}"
        if slices_total > 1:
            # a tile event carries the index of its slice, a "plane k done" event the count done
            cur = int(getattr(p, "slices_done", 0) or 0) + (0 if message.endswith("done") else 1)
            self._slice = max(self._slice, min(max(cur, 1), slices_total))
            text += f", slice {self._slice}/{slices_total}"
        self._frac = max(self._frac, min(1.0, done / tiles_total))
        return self.prefix + text, self._frac


def eta_text(elapsed_s: float, fraction: float) -> str:
    """``", ~40 s left"`` from the measured pace of this run (nothing until there is a pace to
    go by): slow models (transformers on a CPU) get a truthful estimate, not a guess."""
    if fraction < 0.02 or fraction >= 1.0 or elapsed_s < 0.5:
        return ""
    left = elapsed_s * (1.0 - fraction) / fraction
    return f", ~{left:.0f} s left" if left < 120 else f", ~{left / 60:.0f} min left"
