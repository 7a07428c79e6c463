"""Inference speed of RRIM sizes through the engine (bf16, default tiling, 2 threads): docs/models.md.

    python training/size_speed.py

Randomly initialised weights (speed does not depend on them); best of 3 after a warm-up.
"""
import time, torch, numpy as np
from napari_rrim_sr.commands.bench import random_model
from napari_rrim_sr.engine import Upscaler
torch.set_num_threads(2)
img = (np.random.default_rng(0).random((192, 192, 3)) * 255).astype(np.uint8)
for nf, nb in [(32, 4), (48, 6), (64, 8)]:
    lm = random_model("rrim", num_feat=nf, num_block=nb)
    with Upscaler(lm, channels=3, device="cpu", precision="bf16") as up:
        up.upscale(img, rgb=True)
        best = min((lambda t0: (up.upscale(img, rgb=True), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(3))
    print(f"RRIM {nf}x{nb}: {best:.3f} s for 192x192 -> 768x768, {768*768/best/1e6:.3f} MP/s (bf16, engine)")
