"""Exceptions with plain messages: the CLI and the napari widgets show them as they are."""

import math


class RRIMError(Exception):
    """Base class for errors a user can act on (bad input, missing weights...)."""


class RegistryError(RRIMError):
    """A backbone or weights entry is unknown, duplicated or malformed."""


class WeightsError(RRIMError):
    """A weights file is unreadable, corrupt, or does not match its architecture."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class InputError(RRIMError, ValueError):
    """The image given cannot be processed as asked (shape, dtype, axes, values)."""


class OutputError(RRIMError):
    """An output cannot be written where asked (exists, is an input, unwritable, disk full)."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class Cancelled(RRIMError):
    """A run was cancelled; no partial result is returned."""


def positive_number(value, name: str) -> float:
    """``value`` as a float, or an :class:`InputError` naming ``name`` (not a number, NaN, inf, <= 0)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _is_device_oom(exc: BaseException) -> bool:
    # as devices.is_oom, without importing torch here (errors is the bottom of the import graph)
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and "out of memory" in msg


def user_message(exc: BaseException, *, stack: bool = False) -> str:
    """One plain line for a failed run, for the GUI (no traceback): the message of an
    :class:`RRIMError` as it is, advice for host and GPU out-of-memory (``stack``: the run was a
    whole stack, so suggest the current slice), the type and text of anything unexpected."""
    hint = "tick 'Current slice only', " if stack else ""
    if isinstance(exc, MemoryError):
        return "Not enough memory for this run. Try: " + hint + "a smaller tile size, or crop the layer first."
    if _is_device_oom(exc):
        return (
            "The GPU ran out of memory even with smaller tiles. Try "
            + hint
            + "precision fp16/bf16, a smaller tile size, or device 'cpu'."
        )
    if isinstance(exc, RRIMError):
        return str(exc)
    return f"Upscaling failed: {type(exc).__name__}: {exc}"
