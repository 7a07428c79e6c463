"""``bench-zarr``: scaling of the chunked OME-Zarr path over dask.distributed workers.

Runs the same synthetic OME-Zarr volume with 1, 2, ... single-threaded ``LocalCluster``
workers (speed-up, efficiency, throughput per worker) and a larger volume (peak RSS per
worker against the dataset size, with a per-worker memory limit), and prints the per-chunk
cost and transfer sizes that ``docs/benchmarks.md`` extrapolates to a 1 TB dataset.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "bench-zarr", help="measure the chunked OME-Zarr path on 1..N local dask workers", description=__doc__
    )
    p.add_argument(
        "--model", default="rrim-x4-gray", metavar="ID|PATH", help="1-channel weights (default rrim-x4-gray)"
    )
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], metavar="N", help="worker counts (default 1 2)")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=[16, 192, 192],
        metavar=("Z", "Y", "X"),
        help="input volume for the scaling runs (default 16 192 192, uint16)",
    )
    p.add_argument(
        "--big-factor",
        type=int,
        default=4,
        help="the memory run's volume has this many times more planes (default 4; 0 skips it)",
    )
    p.add_argument("--chunk", type=int, default=512, help="output chunk edge (default 512)")
    p.add_argument("--memory-limit", default="1GiB", help="per-worker memory limit (default 1GiB)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=run)


def _volume(path: Path, shape) -> None:
    import numpy as np
    import zarr
    from ome_zarr.writer import write_image
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    plane = gaussian_filter(rng.random(shape[1:]), 2)
    plane = (plane - plane.min()) / (plane.max() - plane.min())
    a = np.stack([np.roll(plane, 7 * z, axis=1) for z in range(shape[0])])
    a = (a * 60000 + 1000).astype(np.uint16)
    write_image(
        a,
        zarr.open_group(str(path), mode="w"),
        axes="zyx",
        scale={"z": 1.0, "y": 0.5, "x": 0.5},
        storage_options={"chunks": (1, 256, 256)},
    )


def _one(src_path: Path, out: Path, workers: int, args) -> dict:
    from napari_rrim_sr.io.ngff import open_source
    from napari_rrim_sr.pipeline import chunked

    src = open_source(src_path)
    # the same LocalCluster as `upscale --scheduler local:N`
    client, close, _ = chunked.open_scheduler(f"local:{workers}", memory_limit=args.memory_limit)
    try:
        job = chunked.plan_job(src, out, model=args.model, chunk=args.chunk, threads=1)
        # warm-up: each worker loads the weights once (excluded from the timing, reported apart)
        t = time.perf_counter()
        client.run(chunked._check_model, job)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        summary = chunked.run_job(job, src, client=client, workers=workers, overwrite=True)
        wall = time.perf_counter() - t
        rss = client.run(lambda: __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss)
    finally:
        close()
    recs = summary["records"]
    in_px = 1
    for n in src.shape:
        in_px *= n
    out_bytes = sum(r["out_bytes"] for r in recs)
    return {
        "workers": workers,
        "shape": list(src.shape),
        "dtype": str(src.dtype),
        "chunks": summary["chunks"],
        "wall_s": wall,
        "chunks_s": summary["seconds"],
        "model_load_s": load_s,
        "input_bytes": in_px * src.dtype.itemsize,
        "output_bytes": out_bytes,
        "compute_s": sum(r["compute_s"] for r in recs),
        "cpu_s": sum(r["cpu_s"] for r in recs),
        "load_during_run": os.getloadavg()[0],
        "read_s": sum(r["read_s"] for r in recs),
        "write_s": sum(r["write_s"] for r in recs),
        "read_bytes": sum(r["in_bytes"] for r in recs),
        "peak_rss_per_worker": sorted(int(v) * 1024 for v in rss.values()),
        "out_mpix_s": out_bytes / src.dtype.itemsize / 1e6 / wall,
    }


def run(args) -> int:
    try:
        import distributed  # noqa: F401
        import ome_zarr  # noqa: F401
    except ImportError as exc:
        print(f"error: bench-zarr needs {exc.name}", file=sys.stderr)
        return 1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.json:  # refuse a --json that is the weights (or anything read) before minutes of benchmark
        from napari_rrim_sr.engine.upscaler import resolve_model
        from napari_rrim_sr.safe_write import check_target

        resolve_model(args.model, 1)  # the weights file is recorded as read (read_guard)
        check_target(args.json, overwrite=True)
    results: dict = {
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "memory_limit": args.memory_limit,
        "chunk": args.chunk,
        "model": args.model,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="rrim-bench-zarr-") as d:
        d = Path(d)
        small = d / "small.ome.zarr"
        _volume(small, args.shape)
        for n in args.workers:
            r = _one(small, d / f"out{n}.ome.zarr", n, args)
            results["runs"].append(r)
            print(_line(r), flush=True)
        if args.big_factor:
            big = d / "big.ome.zarr"
            _volume(big, [args.shape[0] * args.big_factor, *args.shape[1:]])
            r = _one(big, d / "outbig.ome.zarr", max(args.workers), args)
            r["role"] = "memory"
            results["runs"].append(r)
            print(_line(r), flush=True)
    base = results["runs"][0]
    for r in results["runs"]:
        if r.get("role") != "memory":
            r["speedup"] = base["wall_s"] / r["wall_s"]
            r["efficiency"] = r["speedup"] / (r["workers"] / base["workers"])
    print(json.dumps(results, indent=1))
    if args.json:
        from napari_rrim_sr.safe_write import atomic_write

        atomic_write(args.json, json.dumps(results, indent=1), overwrite=True)
    return 0


def _line(r: dict) -> str:
    mb = 1 << 20
    return (
        f"workers={r['workers']} shape={r['shape']} chunks={r['chunks']} wall={r['wall_s']:.1f}s "
        f"out={r['output_bytes'] / mb:.0f}MiB {r['out_mpix_s']:.2f} out-MP/s compute={r['compute_s']:.1f}s "
        f"cpu={r['cpu_s']:.1f}s load={r['load_during_run']:.1f} read={r['read_s']:.2f}s "
        f"write={r['write_s']:.2f}s peakRSS/worker="
        f"{[round(v / mb) for v in r['peak_rss_per_worker']]}MiB"
    )


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
