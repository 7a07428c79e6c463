"""Exceptions with plain messages: the CLI and the napari widgets show them as they are."""


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


class Cancelled(RRIMError):
    """A run was cancelled; no partial result is returned."""
