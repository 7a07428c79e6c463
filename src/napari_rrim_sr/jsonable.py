"""The one JSON sanitiser: provenance, reports, weights metadata and bundles all go through it.

Strict JSON has no NaN/Infinity, so non-finite floats become the strings ``"nan"``, ``"inf"``,
``"-inf"``; numpy and torch scalars become Python numbers, arrays lists, paths and other
objects their ``str``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

__all__ = ["jsonable"]


def jsonable(v: Any) -> Any:
    """A copy of ``v`` that ``json.dumps(..., allow_nan=False)`` accepts."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [jsonable(x) for x in v]
    if isinstance(v, PurePath):
        return str(v)
    tolist = getattr(v, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        try:
            return jsonable(tolist())
        except Exception:
            pass
    item = getattr(v, "item", None)
    if callable(item):
        try:
            return jsonable(item())
        except Exception:
            pass
    return str(v)
