"""napari-rrim-sr: x4 super-resolution with the RRIM generator, for napari and the command line.

The core (models, registry, weights I/O, engine, metrics, training) imports no Qt;
the napari integration lives in :mod:`napari_rrim_sr._napari`.
"""

__version__ = "0.1.0"

from napari_rrim_sr.errors import RegistryError, RRIMError, WeightsError  # noqa: E402

__all__ = ["__version__", "RRIMError", "WeightsError", "RegistryError"]
