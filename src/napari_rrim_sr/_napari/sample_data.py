"""Sample data (File ▸ Open Sample ▸ RRIM super-resolution): microscopy, satellite, photo.

Only redistributable images (see ``samples/ATTRIBUTION.md``): a crop of the CC0 DSB 2018 nuclei
image shipped by stardist, a crop of rasterio's Landsat 7 test image, and scikit-image's
astronaut photograph (public domain, not copied: read from scikit-image at load time).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_rrim_sr.io.geometry import SUGGESTED_WEIGHTS_KEY

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
MICROSCOPY_FILE = SAMPLES_DIR / "nuclei_dsb2018_crop.tif"
SATELLITE_FILE = SAMPLES_DIR / "landsat7_rgb_crop.tif"
ATTRIBUTION = "see napari_rrim_sr/_napari/samples/ATTRIBUTION.md"


def _read(path: Path) -> tuple[np.ndarray, dict]:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        data = tf.asarray()
        desc = tf.pages[0].description
    try:
        info = json.loads(desc) if desc else {}
    except json.JSONDecodeError:
        info = {}
    return data, info


def microscopy_array() -> np.ndarray:
    """256x256 uint16 fluorescence nuclei (values 0..235), CC0."""
    return _read(MICROSCOPY_FILE)[0]


def satellite_array() -> tuple[np.ndarray, dict]:
    """256x256x3 uint8 Landsat 7 RGB crop (~300 m pixels) and its description."""
    return _read(SATELLITE_FILE)


def photo_array() -> np.ndarray:
    """256x256x3 uint8 crop of scikit-image's astronaut (public domain)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[0:256, 128:384])


def microscopy():
    data, info = _read(MICROSCOPY_FILE)
    lo, hi = np.percentile(data, (0.5, 99.9))
    return [
        (
            data,
            {
                "name": "nuclei (DSB 2018)",
                "colormap": "gray",
                "contrast_limits": (float(lo), float(hi)),
                "metadata": {
                    "source": info.get("source", ""),
                    "license": info.get("license", "CC0-1.0"),
                    "attribution": ATTRIBUTION,
                    # raw fluorescence: the bicubic-trained gray model turns its noise into texture
                    SUGGESTED_WEIGHTS_KEY: "rrim-x4-gray-real",
                },
            },
            "image",
        )
    ]


def satellite():
    data, info = satellite_array()
    py, px = info.get("pixel_size_m", (300.0, 300.0))
    return [
        (
            data,
            {
                "name": "Landsat 7 RGB",
                "rgb": True,
                "scale": (float(py), float(px)),
                "units": ("m", "m"),
                "metadata": {
                    "source": info.get("source", ""),
                    "crs": info.get("crs", ""),
                    "origin_easting_northing_m": info.get("origin_easting_northing_m"),
                    "license": info.get("license", "CC0-1.0"),
                    "attribution": ATTRIBUTION,
                    # decimated, hence aliased: the bicubic-trained models over-sharpen it
                    SUGGESTED_WEIGHTS_KEY: "rrim-x4-rgb-real",
                },
            },
            "image",
        )
    ]


def photo():
    return [
        (
            photo_array(),
            {
                "name": "astronaut",
                "rgb": True,
                "metadata": {
                    "source": "skimage.data.astronaut(), crop rows 0:256, cols 128:384",
                    "license": "public domain (NASA)",
                    "attribution": ATTRIBUTION,
                },
            },
            "image",
        )
    ]
