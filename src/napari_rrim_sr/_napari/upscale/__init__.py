"""The *Upscale (RRIM x4)* dock widget, split as careamics-napari does it.

* :mod:`.view`: the controls, declared (magicgui), grouped in panels; no behaviour;
* :mod:`.controller`: Qt-free: fills one :class:`napari_rrim_sr.pipeline.UpscaleRequest` per
  source (or channel), plans, runs the plans as one generator (progress, cancel) and turns the
  results into layer descriptions; tests drive it without Qt;
* :mod:`.panels`: behaviour composed into the widget (weights file and export, the OME-Zarr
  store question), each given what it needs instead of mixins reading their host's attributes;
* :mod:`.widget`: :class:`~.widget.UpscaleWidget`, the wiring: view + controller + one worker.

The npe2 manifest names ``napari_rrim_sr._napari.upscale.widget:UpscaleWidget``.
"""
