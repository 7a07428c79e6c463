"""Files and layers in and out: images, OME-Zarr, bundles, bands, channels, layer geometry."""
