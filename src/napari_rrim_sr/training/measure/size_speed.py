"""Inference speed of RRIM sizes through the engine (bf16, default tiling, 2 threads): docs/models.md.

    python -m napari_rrim_sr.training size-speed

Randomly initialised weights (speed does not depend on them); best of 3 after a warm-up.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SIZES = ((32, 4), (48, 6), (64, 8))  # (num_feat, num_block)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m napari_rrim_sr.training size-speed", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from napari_rrim_sr.cli.bench_common import random_model
    from napari_rrim_sr.engine.api import Upscaler

    torch.set_num_threads(args.threads)
    img = (np.random.default_rng(0).random((192, 192, 3)) * 255).astype(np.uint8)
    for nf, nb in SIZES:
        lm = random_model("rrim", num_feat=nf, num_block=nb)
        with Upscaler(lm, channels=3, device="cpu", precision="bf16") as up:
            up.upscale(img, rgb=True)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                up.upscale(img, rgb=True)
                times.append(time.perf_counter() - t0)
            best = min(times)
        print(f"RRIM {nf}x{nb}: {best:.3f} s for 192x192 -> 768x768, {768 * 768 / best / 1e6:.3f} MP/s (bf16, engine)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
