"""The GPU run's check phase: the device-parametrised tests on a device, and a batched throughput bench.

Both are deadline-aware: the tests run in a subprocess killed at its time budget (the report
then says so), and the bench stops starting new cases once its budget is spent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence


def run_device_tests(
    device: str,
    *,
    timeout: float,
    select: str = "",
    repo: Path = Path("."),
    extra_env: dict | None = None,
    junit: Path | None = None,
) -> dict:
    """``pytest tests/engine/test_device.py`` with ``RRIM_TEST_DEVICE=device``; returns counts, failures, output tail."""
    repo = Path(repo)
    junit = Path(junit or (repo / ".gpu-tests.xml"))
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore::DeprecationWarning",
        "--junitxml",
        str(junit),
        str(repo / "tests" / "engine" / "test_device.py"),
    ]
    if select:
        cmd += ["-k", select]
    # no entry-point plugins (napari's, pytest-qt's...): test_device.py needs none, and they cost seconds
    env = dict(os.environ, RRIM_TEST_DEVICE=device, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", **(extra_env or {}))
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "src")] + [p for p in [env.get("PYTHONPATH", "")] if p])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out, timed_out = proc.returncode, proc.stdout + proc.stderr, False
    except subprocess.TimeoutExpired as exc:
        rc, timed_out = None, True
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    report = {
        "device": device,
        "command": " ".join(cmd[1:]),
        "returncode": rc,
        "timed_out": timed_out,
        "seconds": round(time.perf_counter() - t0, 1),
        "tests": [],
    }
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            status = "passed"
            msg = ""
            for child in case:
                if child.tag in ("failure", "error"):
                    status, msg = "failed", (child.get("message") or "")[:500]
                elif child.tag == "skipped":
                    status, msg = "skipped", (child.get("message") or "")[:200]
            report["tests"].append(
                {"name": case.get("name"), "status": status, "seconds": float(case.get("time", 0)), "message": msg}
            )
        junit.unlink()
    for key in ("passed", "failed", "skipped"):
        report[key] = sum(1 for t in report["tests"] if t["status"] == key)
    report["ok"] = rc == 0 and not timed_out
    report["output_tail"] = re.sub(r"\n{3,}", "\n\n", out)[-4000:]
    return report


def bench_batches(
    device: str,
    *,
    deadline: float,
    backbones: Sequence[str] = ("rrim", "srresnet", "rrdbnet"),
    precisions: Sequence[str] = ("fp32", "bf16", "fp16"),
    tile: int = 128,
    batches: Sequence[int] = (1, 8, 32),
    repeat: int = 3,
) -> dict:
    """Output megapixels/s of each backbone (default size, random weights: speed does not depend on
    them) on batches of ``tile`` x ``tile`` RGB tiles, per precision, channels_last where the engine
    uses it. Cases not started before ``deadline`` (``time.perf_counter()``) are listed as skipped."""
    import torch

    from napari_rrim_sr.cli.bench_common import random_model
    from napari_rrim_sr.engine import devices

    dev = devices.resolve_device(device)
    rows: list[dict] = []
    skipped: list[str] = []
    for bb in backbones:
        lm = random_model(bb)
        for prec in precisions:
            try:
                prec_ok = devices.resolve_precision(prec, dev, None)
            except Exception as exc:  # e.g. fp16 on a CPU
                skipped.append(f"{bb} {prec}: {str(exc).splitlines()[0]}")
                continue
            cl = devices.use_channels_last(dev, prec_ok)
            module = lm.module.to(dev).eval()
            if cl:
                module = module.to(memory_format=torch.channels_last)
            for b in batches:
                if time.perf_counter() > deadline:
                    skipped.append(f"{bb} {prec} batch {b}: time budget spent")
                    continue
                x = torch.rand(b, 3, tile, tile, device=dev)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                try:
                    best = float("inf")
                    with torch.inference_mode(), devices.autocast(dev, prec_ok):
                        for k in range(repeat + 1):  # the first run builds kernels
                            if dev.type == "cuda":
                                torch.cuda.synchronize(dev)
                            t0 = time.perf_counter()
                            y = module(x)
                            if dev.type == "cuda":
                                torch.cuda.synchronize(dev)
                            if k:
                                best = min(best, time.perf_counter() - t0)
                    mpix = b * y.shape[-1] * y.shape[-2] / 1e6
                    row = {
                        "backbone": bb,
                        "precision": prec_ok,
                        "channels_last": cl,
                        "batch": b,
                        "tile": tile,
                        "seconds": round(best, 5),
                        "out_mpix_per_s": round(mpix / best, 2),
                    }
                    if dev.type == "cuda":
                        row["peak_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
                        torch.cuda.reset_peak_memory_stats(dev)
                    rows.append(row)
                except Exception as exc:
                    if not devices.is_oom(exc):
                        raise
                    skipped.append(f"{bb} {prec} batch {b}: out of memory")
                finally:
                    del x
                    devices.release_memory(dev)
            lm.module.to("cpu")
        del lm
        devices.release_memory(dev)
    info = {"device": devices.describe(dev, "fp32"), "torch": torch.__version__, "rows": rows, "skipped": skipped}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def format_bench(info: dict) -> str:
    tile = info["rows"][0]["tile"] if info["rows"] else "?"
    lines = [f"batched throughput on {info['device']} (output MPix/s, {tile} px RGB tiles)"]
    for r in info["rows"]:
        lines.append(f"  {r['backbone']:9s} {r['precision']:5s} batch {r['batch']:3d}: {r['out_mpix_per_s']:9.2f}")
    lines += [f"  skipped: {s}" for s in info["skipped"]]
    return "\n".join(lines)
