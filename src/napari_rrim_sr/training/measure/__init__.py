"""Measurements of trained weights, reused by the recipes in the repository's ``training/``:

* :mod:`.robust` (``robust-check``): Kodak24 / held-out microscopy scores on degraded LR (noise,
  JPEG, blur, aliasing, shot noise) and overshoot on the native samples;
* :mod:`.grid` (``grid-check``): the 2-/4-px periodic grid a GAN stage can draw, and detail;
* :mod:`.gray` (``compare-gray``): the gray model vs bicubic and the RGB model on held-out
  microscopy;
* :mod:`.size_speed` (``size-speed``): inference speed of RRIM sizes.

Each has ``main(argv)``; ``python -m napari_rrim_sr.training NAME ...`` runs it.
"""
