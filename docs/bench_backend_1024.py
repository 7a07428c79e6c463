"""Issue 25: One 1024x1024 gray uint16 image: today's engine default (torch, precision auto) vs the new
default (backend auto, precision auto), interleaved, each twice after one warm-up; AMD EPYC Zen 3."""

import time

import numpy as np

from napari_rrim_sr.engine.devices import default_threads
from napari_rrim_sr.engine.upscaler import get_upscaler

rng = np.random.default_rng(0)
img = (rng.random((1024, 1024)) * 4000).astype(np.uint16)
ups = {
    "today (torch, auto)": get_upscaler("rrim-x4-gray-real", backend="torch", channels=1),
    "new default (auto, auto)": get_upscaler("rrim-x4-gray-real", backend="auto", channels=1),
}
res = {k: [] for k in ups}
out = {}
t0 = time.perf_counter()
for k, up in ups.items():  # warm-up (OpenVINO compiles the tile shape here)
    out[k] = up.upscale(img, normalization="range")
    print(k, "warm-up", round(time.perf_counter() - t0, 1), "s", up.backend, "|", up.backend_reason, flush=True)
    t0 = time.perf_counter()
for _ in range(2):
    for k, up in ups.items():
        t = time.perf_counter()
        out[k] = up.upscale(img, normalization="range")
        res[k].append(time.perf_counter() - t)
        print(k, round(res[k][-1], 2), "s", flush=True)
mp = 4096 * 4096 / 1e6
base = min(res["today (torch, auto)"])
for k, v in res.items():
    print(f"| {k} | {ups[k].backend} {ups[k].precision} | {mp / min(v):.3f} | {base / min(v):.2f} |")
d = np.abs(out["today (torch, auto)"].astype(int) - out["new default (auto, auto)"].astype(int))
print("max |difference| grey levels:", d.max(), "fraction > 1 level:", (d > 1).mean())
print("threads", default_threads())
