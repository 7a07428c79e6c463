"""Generators (RRIM, SRResNet, RRDBNet) and the SRGAN discriminator; the public architectures
(:mod:`.esrgan`, :mod:`.compact`, :mod:`.span`, :mod:`.swinir`) are not imported here (they load
lazily through :mod:`napari_rrim_sr.public_backbones`).

Each architecture module has a ``detect(state_dict) -> dict | None``; register/build them
through :mod:`napari_rrim_sr.registry` rather than importing the classes directly.
"""

from .common import clean_state_dict
from .discriminator import SRGANDiscriminator
from .rrdbnet import RRDBNet
from .rrim import RRIM
from .srresnet import SRResNet

__all__ = ["RRIM", "SRResNet", "RRDBNet", "SRGANDiscriminator", "clean_state_dict"]
