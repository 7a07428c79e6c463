"""``bench``: engine throughput (fp32 / bf16 / fp16), tiling overhead, seam error, peak memory,
against bicubic and ESRGAN's RRDBNet (23 blocks x 64 features) in the same process.

Speed does not depend on the weights, so without trained weights a randomly initialised
default-size RRIM is measured. Timings are best-of-``repeat`` after one warm-up run (the first
oneDNN/cuDNN call builds kernels), which also makes them robust to other load on the machine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from napari_rrim_sr.cli.bench_common import _best, _cpu_name, _data_dir, _interleaved, _macs, _sync, photo, random_model  # noqa: F401
from napari_rrim_sr.engine.devices import DEVICES


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure speed, tiling overhead, seam error and memory",
        description="Benchmark the engine: output megapixels/s for fp32 and bf16 (fp16 on GPU), "
        "untiled vs tiled at the default tile, seam error, peak memory, and throughput per "
        "multiply-accumulate against bicubic and an ESRGAN-size RRDBNet in the same process.",
    )
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        metavar="N",
        help="input edge for the throughput runs (default 192; --quick 96)",
    )
    p.add_argument(
        "--tile-size",
        type=int,
        default=None,
        metavar="N",
        help="input edge for tiled-vs-untiled (default 768; --quick 320)",
    )
    p.add_argument(
        "--mem-size",
        type=int,
        default=None,
        metavar="N",
        help="edge of the uint16 image of the memory test (default 4096; --quick 1024; 0 = skip)",
    )
    p.add_argument("--quick", action="store_true", help="small sizes, one timed run each")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per case, best kept (default 3; --quick 1)")
    p.add_argument(
        "--model",
        metavar="ID|PATH",
        default=None,
        help="model to measure (default: installed default weights, else a random default RRIM)",
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads")
    p.add_argument("--sweep", action="store_true", help="also time several tile sizes (to choose the default)")
    p.add_argument("--no-rrdbnet", action="store_true", help="skip the RRDBNet comparison (slow on CPU)")
    p.add_argument(
        "--kernels",
        action="store_true",
        help="only: split each model's time into its convolutions (timed alone, per shape) and the "
        "rest, in fp32 and bf16 (where does per-MAC throughput go?)",
    )
    p.add_argument(
        "--arch-compare",
        action="store_true",
        help="only: engine speed of RRIM 64x8, ESRGAN-23 (RRDBNet), Compact 64x32, SPAN-48 and "
        "SwinIR-light side by side (x4 RGB, random weights, untiled, cases interleaved; "
        "--size sets the input edge, default 64)",
    )
    p.add_argument(
        "--backends",
        action="store_true",
        help="only: torch fp32/bf16 vs OpenVINO fp32/bf16 for each built-in and public architecture, "
        "with today's default (torch) and the engine default (auto), cases interleaved; output MP/s, "
        "ratio to today's default, convert/compile time and first-image latency (--size default 64, "
        "--quick: tiny models at 16 px)",
    )
    p.add_argument("--all-public", action="store_true", help="with --backends: every conformance checkpoint")
    p.add_argument(
        "--only",
        action="append",
        metavar="TEXT",
        default=None,
        help="with --backends: only models whose label contains TEXT (repeatable)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------
# measurements


def measure_throughput(models, device, precisions, size: int, repeat: int, threads=None) -> list[dict]:
    """Per model and precision: engine MP/s (untiled, uint8 RGB in and out, all conversions
    included) and the bare module on the tensor the engine gives it (the image with its 4-px
    reflect border), so "engine overhead" is the engine's own work; on CPU also the first
    model's bare module in torch's default NCHW fp32 layout (the naive baseline). MP/s always
    count the image's output pixels. All cases interleaved."""
    import copy

    import torch

    from napari_rrim_sr.engine import devices
    from napari_rrim_sr.engine.api import Upscaler

    dev = devices.resolve_device(device)
    cases: dict = {}
    meta: dict = {}
    keep = []
    from napari_rrim_sr.engine.api import BORDER_MARGIN, DEFAULT_OVERLAP

    pad = min(BORDER_MARGIN, DEFAULT_OVERLAP // 2)
    for i, loaded in enumerate(models):
        img, _ = photo(size, 3 if loaded.in_channels == 3 else 1)
        # the bare module gets the input the engine feeds it: the image plus its reflect border
        padded = np.pad(img, ((pad, pad), (pad, pad)) + ((0, 0),) * (img.ndim - 2), mode="reflect")
        x0 = torch.from_numpy(padded.astype(np.float32) / 255)
        x0 = x0.permute(2, 0, 1)[None] if x0.ndim == 3 else x0[None, None]
        for prec in precisions:
            up = Upscaler(loaded, device=dev, precision=prec, threads=threads)
            keep.append(up)
            x = x0.to(up.device)
            if up.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)

            def bare(up=up, x=x):
                with devices.num_threads(threads):
                    up._run(x, up.precision)
                _sync(up.device)

            def eng(up=up, img=img):
                up.upscale(img, tile=0)
                _sync(up.device)

            cases[(loaded.id, up.precision, "engine")] = eng
            cases[(loaded.id, up.precision, "module")] = bare
            meta[(loaded.id, up.precision)] = loaded
        if dev.type == "cpu" and i == 0:
            m = copy.deepcopy(loaded.module).cpu().float().to(memory_format=torch.contiguous_format).eval()
            xc = x0.contiguous()

            def nchw(m=m, xc=xc):
                with torch.inference_mode(), devices.num_threads(threads):
                    m(xc)

            cases[(loaded.id, "fp32 NCHW", "module")] = nchw
            meta[(loaded.id, "fp32 NCHW")] = loaded
    t = _interleaved(cases, repeat)
    for up in keep:
        up.close()
    rows = []
    for (mid, prec), loaded in meta.items():
        macs = _macs(loaded, loaded.in_channels)
        out_mp = (size * loaded.scale) ** 2 / 1e6
        t_mod = t[(mid, prec, "module")]
        t_eng = t.get((mid, prec, "engine"))
        row = {
            "model": mid,
            "backbone": loaded.backbone,
            "precision": prec,
            "size": size,
            "out_mp": out_mp,
            "module_s": t_mod,
            "module_mp_s": out_mp / t_mod,
            "macs_per_lr_px": macs,
            "module_gmac_s": macs * size * size / t_mod / 1e9,
        }
        if t_eng is not None:
            row.update(
                engine_s=t_eng,
                engine_mp_s=out_mp / t_eng,
                engine_gmac_s=macs * size * size / t_eng / 1e9,
                engine_overhead=t_eng / t_mod - 1.0,
            )
        rows.append(row)
    return rows


def measure_bicubic(size: int, repeat: int) -> dict:
    from napari_rrim_sr.engine.api import upscale_bicubic

    img, _ = photo(size, 3)
    t = _best(lambda: upscale_bicubic(img, 4), repeat)
    out_mp = (size * 4) ** 2 / 1e6
    return {
        "model": "bicubic (MATLAB imresize, numpy float64)",
        "size": size,
        "out_mp": out_mp,
        "engine_s": t,
        "engine_mp_s": out_mp / t,
    }


def measure_tiling(loaded, device, precision, size: int, repeat: int, tiles=(None,), threads=None) -> list[dict]:
    """Untiled vs each tile size (None = the device default) on the same image, interleaved."""
    from napari_rrim_sr.engine.api import BORDER_MARGIN, DEFAULT_OVERLAP, Upscaler, _resolve_tile
    from napari_rrim_sr.engine.tiling import TileGrid

    img, _ = photo(size, 3)
    up = Upscaler(loaded, device=device, precision=precision, threads=threads)
    sizes = [_resolve_tile(t, up.device) for t in tiles]
    cases = {0: lambda: (up.upscale(img, tile=0), _sync(up.device))}
    for t in sizes:
        cases[t] = lambda t=t: (up.upscale(img, tile=t), _sync(up.device))
    best = _interleaved(cases, repeat)
    rows = []
    for tile, t_tile in zip(tiles, sizes):
        g = TileGrid.make(size, size, t_tile, DEFAULT_OVERLAP, min(BORDER_MARGIN, DEFAULT_OVERLAP // 2), up.scale)
        rows.append(
            {
                "size": size,
                "precision": up.precision,
                "tile": t_tile,
                "overlap": DEFAULT_OVERLAP,
                "default": tile is None,
                "grid": f"{len(g.ys)}x{len(g.xs)} tiles of {g.tile_h}x{g.tile_w}",
                "untiled_s": best[0],
                "tiled_s": best[t_tile],
                "overhead": best[t_tile] / best[0] - 1.0,
            }
        )
    up.close()
    return rows


def measure_seam(loaded, device, size: int, tile=None, threads=None) -> dict:
    """Max |tiled - untiled| in fp32 on 0..1 float data of a real photo (odd size)."""
    from napari_rrim_sr.engine.api import Upscaler, _resolve_tile

    img, name = photo(size, 3)
    img = img[: size - 3, : size - 1 - size % 2].astype(np.float32) / 255  # odd sizes
    up = Upscaler(loaded, device=device, precision="fp32", threads=threads)
    t = _resolve_tile(tile, up.device)
    t = min(t, max(64, size // 2))  # at least 2x2 tiles even at --quick sizes
    a = up.upscale(img, tile=0)
    b = up.upscale(img, tile=t)
    up.close()
    return {
        "image": f"{name} crop {img.shape[1]}x{img.shape[0]}",
        "tile": t,
        "max_abs": float(np.abs(a - b).max()),
        "mean_abs": float(np.abs(a - b).mean()),
    }


_MEM_CHILD = textwrap.dedent(
    """
    import json, resource, sys, time, tracemalloc
    import numpy as np, torch
    from napari_rrim_sr.registry.core import Registry
    from napari_rrim_sr.registry.loading import LoadedModel, load_model
    from napari_rrim_sr.engine.api import Upscaler
    size, spec, tile, threads = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    torch.manual_seed(0)
    if spec.startswith("random:"):
        hp = json.loads(spec[7:])
        m = LoadedModel.from_module(Registry(discover=False).build("rrim", **hp), "rrim", hp,
                                    id="rrim " + spec[7:] + " random init")
    else:
        m = load_model(spec)
    up = Upscaler(m, device="cpu", channels=1, threads=None if threads == "none" else int(threads))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 4096, size=(size, size), dtype=np.uint16)
    t = None if tile == "default" else int(tile)
    up.upscale(img[:300, :300], tile=t)  # warm-up: kernels, thread pools, one full tile
    def status(key):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    try:  # reset the kernel's peak-RSS counter (VmHWM) so it measures this run only
        with open("/proc/self/clear_refs", "w") as fh:  # direct-write: a kernel counter, not a file
            fh.write("5")
        how = "VmHWM after reset"
    except OSError:
        how = "ru_maxrss (process lifetime)"
    base = status("VmRSS")
    tracemalloc.start()
    t0 = time.perf_counter()
    out = up.upscale(img, tile=t)
    dt = time.perf_counter() - t0
    _, tm_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = status("VmHWM") if how.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"size": size, "model": m.id, "precision": up.precision, "tile": up.last_run["tile"],
                      "input_mib": img.nbytes / 2**20, "output_mib": out.nbytes / 2**20,
                      "rss_before_mib": base, "peak_rss_mib": peak, "tracemalloc_peak_mib": tm_peak / 2**20,
                      "seconds": dt, "peak_measure": how}))
    """
)


def measure_memory(size: int, spec: str, tile="default", threads=None) -> dict:
    """Peak RSS of a fresh process upscaling a size x size uint16 image (ru_maxrss) and the
    numpy-side peak (tracemalloc); overhead = peak - (RSS before the run + output)."""
    cmd = [sys.executable, "-c", _MEM_CHILD, str(size), spec, str(tile), str(threads or "none")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        return {"size": size, "error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"}
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r["overhead_mib"] = r["peak_rss_mib"] - r["rss_before_mib"] - r["output_mib"]
    return r


# ---------------------------------------------------------------------------------------
# command


def measure_kernels(models, device, precisions, size: int, repeat: int) -> list[dict]:
    """Per model and precision: whole-forward time vs the sum of its Conv2d calls timed alone
    (each distinct shape once, times its count), channels_last as the engine runs them."""
    import torch
    from torch import nn

    rows = []
    for loaded in models:
        m = loaded.module.to(device).eval().to(memory_format=torch.channels_last)
        x = torch.rand(1, loaded.in_channels, size, size, device=device).contiguous(memory_format=torch.channels_last)
        calls: dict = {}

        def hook(mod, inp, out, calls=calls):
            key = (mod.in_channels, mod.out_channels, mod.kernel_size, mod.groups, tuple(inp[0].shape))
            calls.setdefault(key, [mod, 0])[1] += 1

        hs = [mod.register_forward_hook(hook) for mod in m.modules() if isinstance(mod, nn.Conv2d)]
        with torch.inference_mode():
            m(x)
        for h in hs:
            h.remove()
        for prec in precisions:
            ac = torch.autocast(
                device.type, dtype=torch.bfloat16 if prec == "bf16" else torch.float16, enabled=prec in ("bf16", "fp16")
            )
            with torch.inference_mode(), ac:
                total = _best(lambda m=m, x=x: (m(x), _sync(device)), repeat)
                conv_s, macs, kinds = 0.0, 0, []
                for (cin, cout, k, g, shape), (mod, n) in calls.items():
                    xi = torch.rand(shape, device=device).contiguous(memory_format=torch.channels_last)
                    t = _best(lambda mod=mod, xi=xi: (mod(xi), _sync(device)), repeat)
                    mac = shape[2] * shape[3] * cout * (cin // g) * k[0] * k[1]
                    conv_s += n * t
                    macs += n * mac
                    kinds.append(
                        {
                            "conv": f"{cin}->{cout} {k[0]}x{k[1]} @{shape[2]}x{shape[3]}",
                            "count": n,
                            "ms_each": 1e3 * t,
                            "gmac_s": mac / t / 1e9,
                            "share": 0.0,
                        }
                    )
            for kd in kinds:
                kd["share"] = kd["count"] * kd["ms_each"] / 1e3 / total
            rows.append(
                {
                    "model": loaded.id,
                    "precision": prec,
                    "size": size,
                    "total_s": total,
                    "conv_s": conv_s,
                    "non_conv_share": 1 - conv_s / total,
                    "gmac_s_model": macs / total / 1e9,
                    "gmac_s_convs": macs / conv_s / 1e9,
                    "kernels": sorted(kinds, key=lambda d: -d["share"]),
                }
            )
    return rows


def format_kernels(rows: list[dict]) -> str:
    lines = [
        "| model | precision | forward s | convs alone s | non-conv share | GMAC/s whole | GMAC/s convs alone |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['total_s']:.3f} | {r['conv_s']:.3f} "
            f"| {100 * r['non_conv_share']:.0f}% | {r['gmac_s_model']:.1f} | {r['gmac_s_convs']:.1f} |"
        )
    for r in rows:
        lines += [
            "",
            f"{r['model']} {r['precision']}: largest convolution groups",
            "| conv (in->out kernel @input) | count | ms each | GMAC/s | share of forward |",
            "|---|---:|---:|---:|---:|",
        ]
        for k in r["kernels"][:8]:
            lines.append(
                f"| {k['conv']} | {k['count']} | {k['ms_each']:.2f} | {k['gmac_s']:.1f} | {100 * k['share']:.1f}% |"
            )
    return "\n".join(lines)


def run(args) -> int:
    import torch

    from napari_rrim_sr.engine import devices
    from napari_rrim_sr.engine.api import DEFAULT_OVERLAP, DEFAULT_TILE, resolve_model
    from napari_rrim_sr.errors import RRIMError
    from napari_rrim_sr.safe_write import check_target

    protect = [args.model] if args.model and Path(args.model).exists() else []
    if args.json:  # before any measurement
        check_target(args.json, overwrite=args.overwrite, protect=protect)
    quick = args.quick
    size = args.size or (96 if quick else 192)
    tsize = args.tile_size or (320 if quick else 768)
    msize = args.mem_size if args.mem_size is not None else (1024 if quick else 4096)
    repeat = args.repeat or (1 if quick else 3)
    dev = devices.resolve_device(args.device)
    load0 = os.getloadavg()
    try:
        model = resolve_model(args.model, 3)
        spec_for_child = str(model.path) if model.path else None
    except RRIMError as exc:
        if args.model is not None:
            raise
        print(
            f"note: {exc.__class__.__name__}: no trained weights; measuring a randomly initialised "
            "default-size RRIM (speed does not depend on the weights)",
            file=sys.stderr,
        )
        model = random_model("rrim")
        spec_for_child = None
    if dev.type == "cuda":
        precisions = ["fp32", "bf16", "fp16"]
    elif dev.type == "cpu":
        precisions = ["fp32", "bf16"]
    else:
        precisions = ["fp32"]
    auto_prec = devices.resolve_precision("auto", dev)
    env = {
        "device": devices.describe(dev, auto_prec),
        "cpu": _cpu_name(),
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "python": platform.python_version(),
        "cpu_bf16_native": devices.cpu_bf16_native(),
        "load_avg_start": load0,
        "command": "python -m napari_rrim_sr "
        + " ".join(sys.argv[1:] if sys.argv[0].endswith("__main__.py") else ["bench"]),
        "default_tile": DEFAULT_TILE.get(dev.type),
        "overlap": DEFAULT_OVERLAP,
    }
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(dev)
    print(f"device: {env['device']} | {env['cpu']} | torch {env['torch']}", file=sys.stderr)

    res: dict = {"env": env}
    if args.backends:
        from napari_rrim_sr.cli.bench_backends import format_backends, measure_backends
        from napari_rrim_sr.engine import backends as ov_backends

        if ov_backends.openvino_available():
            import openvino

            env["openvino"] = openvino.__version__
        res["backends"] = measure_backends(
            args.size or (16 if quick else 64),
            repeat,
            quick=quick,
            all_public=args.all_public,
            only=args.only,
            threads=args.threads,
        )
        env["load_avg_end"] = os.getloadavg()
        print(format_backends(res))
        if args.json:
            _write_json(args.json, res, args.overwrite, protect)
        return 0
    if args.arch_compare:
        prec = [p for p in precisions if p != "fp16"] if dev.type == "cpu" else precisions
        from napari_rrim_sr.cli.bench_arch import format_arch_compare, measure_arch_compare

        res["arch_compare"] = measure_arch_compare(dev, prec, args.size or 64, repeat, args.threads)
        env["load_avg_end"] = os.getloadavg()
        print(format_arch_compare(res))
        if args.json:
            _write_json(args.json, res, args.overwrite, [])  # random weights: no input file to protect
        return 0
    if args.kernels:
        models = [model] if args.no_rrdbnet else [model, random_model("rrdbnet")]
        res["kernels"] = measure_kernels(models, dev, precisions, args.size or 128, repeat)
        print(format_kernels(res["kernels"]))
        if args.json:
            _write_json(args.json, res, args.overwrite, protect)
        return 0
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(
        f"[1/5] throughput of {model.id}"
        + ("" if args.no_rrdbnet else " and RRDBNet 23x64")
        + f", {size}x{size} RGB input, cases interleaved ..."
    )
    models = [model] if args.no_rrdbnet else [model, random_model("rrdbnet")]
    res["throughput"] = measure_throughput(models, dev, precisions, size, repeat, args.threads)
    log("[2/5] bicubic ...")
    res["bicubic"] = measure_bicubic(size, repeat)
    log(f"[3/5] tiled vs untiled, {tsize}x{tsize} ...")
    default_tile = DEFAULT_TILE.get(dev.type)
    sweep = tuple(t for t in (128, 192, 256, 384, 512) if t != default_tile) if args.sweep else ()
    rows = measure_tiling(model, dev, "auto", tsize, repeat, tiles=(None,) + sweep, threads=args.threads)
    res["tiling"] = rows[0]
    res["tile_sweep"] = rows[1:]
    log("[4/5] seam error (fp32) ...")
    res["seam"] = measure_seam(model, dev, min(tsize, 400), threads=args.threads)
    if dev.type == "cpu" and msize > 0:
        log(f"[5/5] peak memory, {msize}x{msize} uint16 in a fresh process (default tile) ...")
        spec = spec_for_child or "random:" + json.dumps({"in_channels": 1, "out_channels": 1})
        res["memory"] = [measure_memory(msize, spec, threads=args.threads)]
    env["load_avg_end"] = os.getloadavg()
    res["ratios"] = _ratios(res)
    print(format_report(res))
    if args.json:
        _write_json(args.json, res, args.overwrite, protect)
        log(f"wrote {args.json}")
    return 0


def _write_json(path, res: dict, overwrite: bool, protect: list) -> None:
    """The report through the project's one writer and JSON sanitiser (strict JSON)."""
    from napari_rrim_sr.jsonable import jsonable
    from napari_rrim_sr.safe_write import atomic_write

    atomic_write(
        path, json.dumps(jsonable(res), indent=2, allow_nan=False) + "\n", overwrite=overwrite, protect=protect
    )


def _ratios(res: dict) -> dict:
    t = res["throughput"]
    first = t[0]["model"]
    mine = {r["precision"]: r for r in t if r["model"] == first}
    other = {r["precision"]: r for r in t if r["model"] != first}
    out: dict = {}
    if "bf16" in mine and "fp32" in mine:
        out["bf16_over_fp32_engine"] = mine["bf16"]["engine_mp_s"] / mine["fp32"]["engine_mp_s"]
        out["bf16_over_fp32_module"] = mine["bf16"]["module_mp_s"] / mine["fp32"]["module_mp_s"]
    if "bf16" in mine and "fp32 NCHW" in mine:
        out["bf16_engine_over_nchw_fp32_module"] = mine["bf16"]["engine_mp_s"] / mine["fp32 NCHW"]["module_mp_s"]
    if "fp16" in mine and "fp32" in mine:
        out["fp16_over_fp32_engine"] = mine["fp16"]["engine_mp_s"] / mine["fp32"]["engine_mp_s"]
    out["tiled_over_untiled_time"] = res["tiling"]["tiled_s"] / res["tiling"]["untiled_s"]
    out["seam_max_abs"] = res["seam"]["max_abs"]
    for p, r in mine.items():
        if p in other and "engine_gmac_s" in r:
            out[f"gmac_s_per_mac_vs_rrdbnet_{p}"] = r["engine_gmac_s"] / other[p]["engine_gmac_s"]
    return out


def format_report(res: dict) -> str:
    env = res["env"]
    lines = [
        f"device: {env['device']}; CPU: {env['cpu']}; torch {env['torch']}; threads {env['threads']}",
        f"load average at start {tuple(round(v, 2) for v in env['load_avg_start'])}, "
        f"at end {tuple(round(v, 2) for v in env.get('load_avg_end', ()))}",
        "",
    ]
    lines += [
        "| model | precision | input | engine MP/s (out) | module-only MP/s | engine overhead "
        "| MACs / LR px | engine GMAC/s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["throughput"]:
        if "engine_mp_s" in r:
            lines.append(
                f"| {r['model']} | {r['precision']} | {r['size']}² | {r['engine_mp_s']:.3f} | {r['module_mp_s']:.3f} "
                f"| {100 * r['engine_overhead']:+.1f}% | {r['macs_per_lr_px'] / 1e6:.2f} M | {r['engine_gmac_s']:.1f} |"
            )
        else:
            lines.append(
                f"| {r['model']} | {r['precision']} (module only) | {r['size']}² | | {r['module_mp_s']:.3f} "
                f"| | {r['macs_per_lr_px'] / 1e6:.2f} M | ({r['module_gmac_s']:.1f}) |"
            )
    b = res["bicubic"]
    lines.append(f"| {b['model']} | float64 | {b['size']}² | {b['engine_mp_s']:.3f} | | | | |")
    t = res["tiling"]
    lines += [
        "",
        "| tiling | precision | input | grid | untiled s | tiled s | overhead |",
        "|---|---|---|---|---:|---:|---:|",
        f"| default tile {t['tile']}, overlap {t['overlap']} | {t['precision']} | {t['size']}² | {t['grid']} "
        f"| {t['untiled_s']:.2f} | {t['tiled_s']:.2f} | {100 * t['overhead']:+.1f}% |",
    ]
    for s in res.get("tile_sweep", []):
        lines.append(
            f"| tile {s['tile']} | {s['precision']} | {s['size']}² | {s['grid']} | {s['untiled_s']:.2f} "
            f"| {s['tiled_s']:.2f} | {100 * s['overhead']:+.1f}% |"
        )
    s = res["seam"]
    lines += [
        "",
        f"seam error (fp32, 0..1 data, {s['image']}, tile {s['tile']}): max {s['max_abs']:.2e}, "
        f"mean {s['mean_abs']:.2e}",
    ]
    if res.get("memory"):
        lines += [
            "",
            "| memory test | precision | tile | input MiB | output MiB | RSS before MiB | peak RSS MiB "
            "| overhead MiB | numpy peak (tracemalloc) MiB | s |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in res["memory"]:
            if "error" in m:
                lines.append(f"| {m['size']}² | error: {m['error']} |")
                continue
            lines.append(
                f"| {m['size']}² uint16, {m['model']} | {m['precision']} | {m['tile']} | {m['input_mib']:.0f} "
                f"| {m['output_mib']:.0f} | {m['rss_before_mib']:.0f} | {m['peak_rss_mib']:.0f} "
                f"| {m['overhead_mib']:.0f} | {m['tracemalloc_peak_mib']:.0f} | {m['seconds']:.1f} |"
            )
    lines += ["", "ratios (same process): " + ", ".join(f"{k} = {v:.3g}" for k, v in res["ratios"].items())]
    return "\n".join(lines)
