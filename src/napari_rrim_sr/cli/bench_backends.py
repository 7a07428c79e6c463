"""``bench --backends``: torch fp32/bf16 against OpenVINO fp32/bf16 per architecture, in one
interleaved run, with the engine default (``backend="auto"``, ``precision="auto"``) and today's
default (torch, ``precision="auto"``) beside them (issue 25; docs/benchmarks.md).

Each case is the whole engine (``Upscaler.upscale``, uint8 in and out, default tile), so the
ratios are what a user sees. Cold costs are reported separately: the OpenVINO conversion (in a
fresh cache folder), the compile of the run's tile shape, and the first image's latency
(building the Upscaler plus its first run).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

from napari_rrim_sr.cli.bench_common import _interleaved, photo, random_model

CONFORMANCE = Path(__file__).resolve().parents[3].parent / "shared" / "conformance"
#: one public checkpoint per architecture (``--all-public``: every one in the folder)
PUBLIC = ("esrgan_old_x4_rgb_nb3", "compact_x4_rgb_general_v3", "span_x4_rgb_ch48", "swinir_light_x4_rgb")
CASES = (("torch", "fp32"), ("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16"))


def _conformance_dir() -> Path | None:
    env = os.environ.get("NAPARI_RRIM_SR_CONFORMANCE")
    for c in ([Path(env)] if env else []) + [CONFORMANCE, Path.cwd().parent / "shared" / "conformance"]:
        if c.is_dir():
            return c
    return None


def _with_sha(loaded):
    """Random in-memory models get a sha256 of their tensors, so ``auto`` treats them like files."""
    h = hashlib.sha256()
    for k, v in sorted(loaded.module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes())
    loaded.sha256 = h.hexdigest()
    return loaded


def bench_models(quick: bool, all_public: bool, only=None) -> list:
    """The models measured: built-in architectures (shipped RRIM weights when installed, else
    random) and the public ones from the conformance checkpoints."""
    from napari_rrim_sr.errors import RRIMError
    from napari_rrim_sr.registry.loading import load_model

    out = []
    if quick:
        out.append(("RRIM 8x1 (random)", _with_sha(random_model("rrim", num_feat=8, num_block=1))))
    else:
        try:
            out.append(("RRIM 64x8 (rrim-x4-gray-real)", load_model("rrim-x4-gray-real")))
        except RRIMError:
            out.append(("RRIM 64x8 gray (random)", _with_sha(random_model("rrim", in_channels=1, out_channels=1))))
        out.append(("RRIM 64x8 RGB (random)", _with_sha(random_model("rrim"))))
        out.append(("SRResNet 64x16 (random)", _with_sha(random_model("srresnet"))))
        out.append(("RRDBNet 64x6 (random)", _with_sha(random_model("rrdbnet", num_block=6))))
    d = None if quick else _conformance_dir()
    if d is not None:
        names = (
            ["compact_x2_gray_small"] if quick else (sorted(p.stem for p in d.glob("*.pth")) if all_public else PUBLIC)
        )
        for name in names:
            p = d / f"{name}.pth"
            if p.exists():
                try:
                    out.append((name, load_model(p)))
                except RRIMError as exc:
                    print(f"skipping {name}: {exc}")
    if only:
        out = [(label, m) for label, m in out if any(o.lower() in label.lower() for o in only)]
    return out


def measure_backends(
    size: int, repeat: int, *, quick: bool = False, all_public: bool = False, only=None, threads=None
) -> dict:
    """Per model: output MP/s of each backend x precision, today's default and the new default,
    all timed runs interleaved; plus convert, compile and first-image seconds."""
    from napari_rrim_sr.engine import backends, devices
    from napari_rrim_sr.engine.upscaler import Upscaler

    old_env = os.environ.get(backends.CACHE_ENV)
    tmp = tempfile.TemporaryDirectory(prefix="rrim-bench-ov-")
    os.environ[backends.CACHE_ENV] = tmp.name  # cold conversions and compiles, measured
    backends.clear_caches()
    have_ov = backends.openvino_available()
    rows: list[dict] = []
    cases: dict = {}
    keep = []
    try:
        for label, loaded in bench_models(quick, all_public, only):
            print(f"  {label}: building and first runs ...", file=sys.stderr, flush=True)
            ch = loaded.in_channels
            img, _ = photo(size, 3 if ch == 3 else 1)
            out_mp = (size * loaded.scale) ** 2 / 1e6
            variants = [("today's default", "torch", "auto"), ("engine default", "auto", "auto")]
            variants += [(f"{b} {p}", b, p) for b, p in CASES if b == "torch" or have_ov]
            for name, backend, prec in variants:
                row = {"model": label, "backbone": loaded.backbone, "case": name, "size": size, "out_mp": out_mp}
                stats0 = dict(backends.STATS)
                try:
                    t0 = time.perf_counter()
                    up = Upscaler(loaded, device="cpu", precision=prec, backend=backend, threads=threads)
                    up.upscale(img)
                    row["first_s"] = time.perf_counter() - t0
                except Exception as exc:  # noqa: BLE001 - a case that cannot run is reported, not fatal
                    row["error"] = str(exc).splitlines()[0][:120]
                    rows.append(row)
                    continue
                row["backend"], row["reason"], row["precision"] = up.backend, up.backend_reason, up.precision
                row["convert_s"] = backends.STATS["convert_s"] - stats0["convert_s"]
                row["compile_s"] = backends.STATS["compile_s"] - stats0["compile_s"]
                keep.append(up)

                def run(up=up, img=img):
                    up.upscale(img)

                cases[(label, name)] = run
                rows.append(row)
        print(f"  timing {len(cases)} cases, interleaved, best of {repeat} ...", file=sys.stderr, flush=True)
        t = _interleaved(cases, repeat)
    finally:
        for up in keep:
            up.close()
        backends.clear_caches()
        if old_env is None:
            os.environ.pop(backends.CACHE_ENV, None)
        else:
            os.environ[backends.CACHE_ENV] = old_env
        tmp.cleanup()
    today = {}
    for r in rows:
        if (r["model"], r["case"]) in t:
            r["seconds"] = t[(r["model"], r["case"])]
            r["mp_s"] = r["out_mp"] / r["seconds"]
            if r["case"] == "today's default":
                today[r["model"]] = r["mp_s"]
    for r in rows:
        if "mp_s" in r and r["model"] in today:
            r["ratio_to_today"] = r["mp_s"] / today[r["model"]]
    return {"rows": rows, "cpu_bf16_native": devices.cpu_bf16_native(), "openvino": have_ov}


def format_backends(res: dict) -> str:
    env = res["env"]
    b = res["backends"]
    lines = [
        f"CPU: {env['cpu']}; native bf16: {b['cpu_bf16_native']}; torch {env['torch']}; "
        f"openvino {env.get('openvino') or 'not installed'}; threads {env['threads']}",
        f"command: {env['command']}",
        f"load average at start {tuple(round(v, 2) for v in env['load_avg_start'])}, "
        f"at end {tuple(round(v, 2) for v in env.get('load_avg_end', ()))}",
        "",
        "| model | case | ran as | input | output MP/s | x today's default | convert s | compile s | first image s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in b["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['case']} | error: {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['case']} | {r['backend']} {r['precision']} | {r['size']}² "
            f"| {r.get('mp_s', float('nan')):.3f} | {r.get('ratio_to_today', float('nan')):.2f} "
            f"| {r['convert_s']:.1f} | {r['compile_s']:.1f} | {r['first_s']:.1f} |"
        )
    reasons = sorted(
        {(r["model"], r["reason"]) for r in b["rows"] if r.get("case") == "engine default" and "reason" in r}
    )
    lines += ["", "engine default chose: " + "; ".join(f"{m}: {why}" for m, why in reasons)]
    return "\n".join(lines)
