"""Subcommands of the ``napari-rrim-sr`` CLI (one module each, see :mod:`napari_rrim_sr.cli`)."""
