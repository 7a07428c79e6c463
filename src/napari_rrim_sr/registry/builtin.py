"""The built-in plugin: registers RRIM, SRResNet, RRDBNet and the SRGAN discriminator.

It uses exactly the hooks a third-party package would (see :mod:`.hookspecs`). Model modules
are imported lazily so listing backbones does not import torch.
"""

from __future__ import annotations

from importlib import import_module

from napari_rrim_sr.registry.hookspecs import hookimpl
from napari_rrim_sr.registry.spec import BackboneSpec


def _lazy(module: str, attr: str):
    def call(*args, **kwargs):
        return getattr(import_module(f"napari_rrim_sr.models.{module}"), attr)(*args, **kwargs)

    call.__name__ = attr
    call.__qualname__ = f"{module}.{attr}"
    return call


@hookimpl
def napari_rrim_sr_backbones():
    return [
        BackboneSpec(
            id="rrim",
            builder=_lazy("rrim", "RRIM"),
            defaults={"in_channels": 3, "out_channels": 3, "scale": 4, "num_feat": 64, "num_block": 8},
            scales=(2, 4),
            channels=(1, 3),
            detect=_lazy("rrim", "detect"),
            description="RRIM: residual-in-residual inception generator (the study's; no BN)",
        ),
        BackboneSpec(
            id="srresnet",
            builder=_lazy("srresnet", "SRResNet"),
            defaults={
                "in_channels": 3,
                "out_channels": 3,
                "scale": 4,
                "num_feat": 64,
                "num_block": 16,
                "use_bn": False,
            },
            scales=(2, 4),
            channels=(1, 3),
            detect=_lazy("srresnet", "detect"),
            description="SRResNet: SRGAN's generator, 16 residual blocks with PReLU (BN optional)",
        ),
        BackboneSpec(
            id="rrdbnet",
            builder=_lazy("rrdbnet", "RRDBNet"),
            defaults={
                "in_channels": 3,
                "out_channels": 3,
                "scale": 4,
                "num_feat": 64,
                "num_block": 23,
                "num_grow_ch": 32,
            },
            scales=(2, 4),
            channels=(1, 3),
            detect=_lazy("rrdbnet", "detect"),
            size_multiple=1,
            description="RRDBNet: ESRGAN's generator (BasicSR/Real-ESRGAN key layout)",
        ),
        BackboneSpec(
            id="srgan-discriminator",
            builder=_lazy("discriminator", "SRGANDiscriminator"),
            defaults={"in_channels": 3, "num_feat": 64, "use_bn": True},
            channels=(1, 3),
            kind="discriminator",
            description="SRGAN discriminator (8 convs with BN, dense 1024, any patch size)",
        ),
    ]


@hookimpl
def napari_rrim_sr_weights():
    # Shipped weights are found by the registry in the package's weights/ folder.
    return []
