"""Generators (RRIM, SRResNet, RRDBNet) and the SRGAN discriminator; the public architectures
(:mod:`.esrgan`, :mod:`.compact`, :mod:`.span`, :mod:`.swinir`) are not imported here (they load
lazily through :mod:`napari_rrim_sr.registry.public`).

Each architecture module has a ``detect(state_dict) -> dict | None``; register/build them
through :mod:`napari_rrim_sr.registry.core` rather than importing the classes directly.
"""

from napari_rrim_sr.models.common import clean_state_dict
from napari_rrim_sr.models.discriminator import SRGANDiscriminator
from napari_rrim_sr.models.rrdbnet import RRDBNet
from napari_rrim_sr.models.rrim import RRIM
from napari_rrim_sr.models.srresnet import SRResNet

__all__ = ["RRIM", "SRResNet", "RRDBNet", "SRGANDiscriminator", "clean_state_dict"]
