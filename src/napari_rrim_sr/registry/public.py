"""The public-architecture plugin: ESRGAN (original layout), Real-ESRGAN Compact, SPAN, SwinIR.

Registered next to :mod:`.builtin_backbones` through the same pluggy hooks, so checkpoints
people download (``4x-UltraSharp.pth``, ``realesr-general-x4v3.pth``, ``spanx4_ch48.pth``,
``001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth``...) load by detection from their tensors alone.
No weights are shipped (licences and size); users bring their own files.
"""

from __future__ import annotations

from napari_rrim_sr.registry.builtin import _lazy
from napari_rrim_sr.registry.hookspecs import hookimpl
from napari_rrim_sr.registry.spec import BackboneSpec


@hookimpl
def napari_rrim_sr_backbones():
    return [
        BackboneSpec(
            id="esrgan",
            builder=_lazy("esrgan", "ESRGAN"),
            defaults={
                "in_channels": 3,
                "out_channels": 3,
                "scale": 4,
                "num_feat": 64,
                "num_block": 23,
                "num_grow_ch": 32,
                "unshuffle": 1,
            },
            scales=(1, 2, 4, 8),
            channels=None,
            detect=_lazy("esrgan", "detect"),
            description="ESRGAN, original key layout (model.N...; 4x-UltraSharp, RRDB_ESRGAN_x4)",
        ),
        BackboneSpec(
            id="compact",
            builder=_lazy("compact", "SRVGGNetCompact"),
            defaults={"in_channels": 3, "out_channels": 3, "scale": 4, "num_feat": 64, "num_conv": 32},
            scales=(1, 2, 3, 4),
            channels=None,
            detect=_lazy("compact", "detect"),
            description="Real-ESRGAN SRVGGNetCompact (realesr-general-x4v3, realesr-animevideov3)",
        ),
        BackboneSpec(
            id="span",
            builder=_lazy("span", "SPAN"),
            defaults={"in_channels": 3, "out_channels": 3, "scale": 4, "num_feat": 48},
            scales=(1, 2, 3, 4),
            channels=None,
            detect=_lazy("span", "detect"),
            # the engine recomputes a tile in fp32 if fp16 overflows (inputs are x255 inside the net)
            half_precisions=frozenset({"bf16", "fp16"}),
            description="SPAN, NTIRE 2024 efficient SR (spanx4_ch48, spanx2_ch48)",
        ),
        BackboneSpec(
            id="swinir",
            builder=_lazy("swinir", "SwinIR"),
            defaults={
                "in_channels": 3,
                "out_channels": 3,
                "scale": 4,
                "embed_dim": 60,
                "depths": [6, 6, 6, 6],
                "num_heads": [6, 6, 6, 6],
                "window_size": 8,
                "mlp_ratio": 2.0,
                "upsampler": "pixelshuffledirect",
                "resi_connection": "1conv",
            },
            scales=(1, 2, 3, 4, 8),
            channels=None,
            detect=_lazy("swinir", "detect"),
            # fp16 attention logits can overflow (spandrel marks SwinIR fp16-unsafe too); bf16 keeps fp32's range
            half_precisions=frozenset({"bf16"}),
            size_multiple=8,
            min_size=8,
            description="SwinIR: classical, lightweight and real-world SR (JingyunLiang/SwinIR releases)",
        ),
    ]


@hookimpl
def napari_rrim_sr_weights():
    return []
