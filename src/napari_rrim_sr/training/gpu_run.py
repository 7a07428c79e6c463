"""One prepared GPU run: environment check, CUDA checks and bench, then time-boxed training, one output folder.

::

    training/gpu/run.sh                  # on the GPU machine: OUT=$OUT, under 9 minutes
    python -m napari_rrim_sr.training.gpu_run --out OUT [--minutes 8.5] [--dry-run]

A GPU is lent only now and then for minutes, on a machine with CUDA torch but no network, which
sees only the working tree (64 MiB with the carried folder ``.gpu-carry/``: the packed images of
:mod:`.gpu_pack` and a few wheels). Every phase has a budget and stops at it (``PLAN``):

1. ``env``: python, torch, CUDA, the modules we import; the packs unpacked to a scratch folder
   and their pixels verified.
2. ``checks``: ``tests/engine/test_device.py`` with ``RRIM_TEST_DEVICE=cuda`` (precision agreement with
   CPU fp32 on real images, tiled = untiled, OOM back-off under a capped memory fraction, memory
   released after runs, errors and cancels), a batched throughput bench of every generator
   backbone (fp32/bf16/fp16), and the product's own ``bench --quick`` on the device.
3. ``train``: continue ``rrim-x4-rgb-psnr`` from its shipped weights with
   ``training/recipes/rrim-x4-rgb-psnr-gpu.toml``; batches made on the GPU
   (:mod:`.gpu_data`), the cosine sized to the measured step rate and the minutes left, a
   checkpoint every minute, Kodak24 validation at the start, every few minutes and at the end.
4. ``outputs``: at most 8 files of at most 16 MiB in ``--out`` (see ``OUTPUTS``).

``--dry-run`` runs the same path on the CPU with tiny sizes (a few steps, 2 validation images)
in well under a minute; ``tests/training/test_gpu_run.py`` runs it so this script cannot rot.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from napari_rrim_sr.jsonable import jsonable

log = logging.getLogger(__name__)

MiB = 1 << 20
MAX_FILES, MAX_FILE_BYTES = 8, 16 * MiB
RECIPE = "training/recipes/rrim-x4-rgb-psnr-gpu.toml"
#: what comes back (run.sh tees the console into run.log, the eighth file)
OUTPUTS = (
    "WEIGHTS.safetensors",
    "log.jsonl",
    "val.png",
    "checks.json",
    "bench.json",
    "summary.json",
    "run-extras.tar",
    "run.log",
)
#: modules the run imports; the ones missing on the GPU machine travel as wheels in .gpu-carry/wheels
NEEDED_MODULES = (
    "numpy",
    "torch",
    "PIL",
    "scipy",
    "skimage",
    "safetensors",
    "pluggy",
    "tifffile",
    "platformdirs",
    "tqdm",
    "matplotlib",
    "pytest",
)
#: seconds per phase of a full run (total 8.5 min); each phase stops at its budget
PLAN = {"total": 510.0, "tests": 60.0, "bench": 25.0, "bench_cli": 35.0, "finish": 30.0, "val_every": 150.0}
DRY_PLAN = {"total": 120.0, "tests": 60.0, "bench": 5.0, "bench_cli": 40.0, "finish": 5.0, "val_every": 0.0}
DRY_OVERRIDES = {
    "steps": 4,
    "batch_size": 2,
    "patch_size": 64,
    "val_limit": 2,
    "val_crop": 96,
    "device": "cpu",
    "precision": "fp32",
    "channels_last": "auto",
    "log_every": 1,
    "threads": 0,
}


class Clock:
    """Seconds since the start and until the deadline (``time.perf_counter``)."""

    def __init__(self, total: float):
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + total

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.deadline - time.perf_counter()


# -- phase 1: environment -----------------------------------------------------------------------


def env_report(carry: Path) -> dict:
    """What this machine has: python, torch/CUDA, the modules we need, Pillow's WebP, our package."""
    info: dict = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "modules": {},
        "missing": [],
    }
    for name in NEEDED_MODULES:
        try:
            mod = importlib.import_module(name)
            info["modules"][name] = str(getattr(mod, "__version__", "?"))
        except Exception as exc:  # noqa: BLE001 - report any import failure
            info["missing"].append(f"{name}: {type(exc).__name__}: {exc}")
    import torch

    info["torch"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    info["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": p.name,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}",
            "multiprocessors": p.multi_processor_count,
        }
    from PIL import features

    info["pil_webp"] = bool(features.check("webp"))
    import napari_rrim_sr

    info["package"] = str(Path(napari_rrim_sr.__file__).parent)
    info["carry"] = sorted(str(p.relative_to(carry)) for p in carry.rglob("*") if p.is_file()) if carry.is_dir() else []
    return info


def unpack_packs(carry: Path, scratch: Path) -> dict:
    from napari_rrim_sr.training.gpu_pack import TRAIN_TAR, VAL_TAR, unpack

    out = {}
    for role, name in (("train", TRAIN_TAR), ("val", VAL_TAR)):
        tar = carry / name
        if not tar.is_file():
            raise FileNotFoundError(f"{tar} is missing: run training/gpu/pack.sh first")
        m = unpack(tar, scratch / role)
        out[role] = {
            "dir": str(scratch / role),
            **{k: m[k] for k in ("role", "images", "megapixels", "bytes", "per_folder")},
        }
    return out


# -- phase 2: checks ------------------------------------------------------------------------------


def run_checks(
    device: str, clock: Clock, plan: dict, *, dry: bool, repo: Path, photo: str | None, scratch: Path
) -> tuple[dict, dict]:
    import subprocess

    from napari_rrim_sr.training.gpu_checks import bench_batches, format_bench, run_device_tests

    t = time.perf_counter()
    tests = run_device_tests(
        device,
        timeout=plan["tests"],
        repo=repo,
        select="cancel" if dry else "",
        extra_env={"RRIM_TEST_PHOTO": photo} if photo else None,
        junit=scratch / "junit.xml",
    )
    print(
        f"[checks] device tests on {device}: {tests['passed']} passed, {tests['failed']} failed, "
        f"{tests['skipped']} skipped in {tests['seconds']} s" + (" (TIMED OUT)" if tests["timed_out"] else ""),
        flush=True,
    )
    for tc in tests["tests"]:
        if tc["status"] == "failed":
            print(f"  FAILED {tc['name']}: {tc['message'][:300]}", flush=True)
    bench: dict = {}
    t_b = time.perf_counter()
    try:
        if dry:
            bench["batched"] = bench_batches(
                device,
                deadline=t_b + plan["bench"],
                backbones=("rrim",),
                precisions=("fp32",),
                tile=16,
                batches=(2,),
                repeat=1,
            )
        else:
            bench["batched"] = bench_batches(device, deadline=t_b + plan["bench"])
        print(format_bench(bench["batched"]), flush=True)
    except Exception as exc:  # noqa: BLE001 - a bench failure is a finding, not the end of the run
        bench["batched_error"] = f"{type(exc).__name__}: {exc}"
        print(f"[checks] batched bench failed: {bench['batched_error']}", flush=True)
    js = scratch / "bench-cli.json"
    cmd = [
        sys.executable,
        "-m",
        "napari_rrim_sr",
        "bench",
        "--device",
        device,
        "--quick",
        "--json",
        str(js),
        "--overwrite",
        "--model",
        str(repo / "weights" / "rrim-x4-rgb-psnr.safetensors"),
    ]
    if dry:
        cmd += ["--no-rrdbnet", "--size", "24", "--tile-size", "48", "--mem-size", "0", "--repeat", "1"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "src")] + [p for p in [env.get("PYTHONPATH", "")] if p])
    budget = max(5.0, min(plan["bench_cli"], clock.left() - 60))
    try:
        if dry:  # in-process: the same command without a second torch start-up on a slow CPU
            import contextlib

            from napari_rrim_sr.cli.main import main as cli_main

            buf_out, buf_err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
                rc_cli = cli_main(cmd[3:])
            proc = subprocess.CompletedProcess(cmd, rc_cli, buf_out.getvalue(), buf_err.getvalue())
        else:  # a subprocess, killed at its budget: a hang cannot eat the training minutes
            proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=budget)
        bench["cli"] = {
            "command": " ".join(cmd[2:]),
            "returncode": proc.returncode,
            "report": proc.stdout[-6000:],
            "stderr_tail": proc.stderr[-2000:],
        }
        if js.exists():
            bench["cli"]["json"] = json.loads(js.read_text())
    except subprocess.TimeoutExpired:
        bench["cli"] = {"command": " ".join(cmd[2:]), "timed_out": True, "budget_s": budget}
    print(
        f"[checks] bench --quick on {device}: "
        + ("timed out" if bench["cli"].get("timed_out") else f"rc {bench['cli']['returncode']}"),
        flush=True,
    )
    if bench["cli"].get("report"):
        print(bench["cli"]["report"], flush=True)
    bench["seconds"] = round(time.perf_counter() - t_b, 1)
    tests["phase_seconds"] = round(time.perf_counter() - t, 1)
    return tests, bench


# -- phase 3: training ----------------------------------------------------------------------------


class TimePlan:
    """Trainer callback: sizes the cosine to the measured step rate and the time left, writes a
    checkpoint every ``ckpt_every_s`` and validates every ``val_every_s`` (0 = start and end only)."""

    def __init__(
        self,
        end_at: float,
        *,
        warm: int = 10,
        window: int = 20,
        ckpt_every_s: float = 60.0,
        val_every_s: float = 0.0,
        val_seconds: float = 0.0,
        max_steps: int | None = None,
    ):
        self.end_at, self.warm, self.window = end_at, warm, window
        self.ckpt_every_s, self.val_every_s, self.val_seconds = ckpt_every_s, val_every_s, val_seconds
        self.max_steps = max_steps
        self.first: int | None = None
        self.t_w: float | None = None
        self.s_w = 0
        self.sized: dict | None = None
        self.last_ckpt = self.last_val = time.perf_counter()

    def __call__(self, tr, stats: dict) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = tr.step - 1
        n = tr.step - self.first
        if n == self.warm:
            if tr.device.type == "cuda":
                import torch

                torch.cuda.synchronize(tr.device)
            self.t_w, self.s_w = time.perf_counter(), tr.step
        elif self.t_w is not None and self.sized is None and tr.step - self.s_w >= self.window:
            rate = (tr.step - self.s_w) / max(1e-9, now - self.t_w)
            left = max(0.0, self.end_at - now)
            n_val = int(left // self.val_every_s) if self.val_every_s else 0
            left -= n_val * self.val_seconds + (left // max(1.0, self.ckpt_every_s)) * 1.0
            total = tr.step + int(rate * max(0.0, left) * 0.97)
            if self.max_steps:
                total = min(total, self.max_steps)
            total = max(total, tr.step + 1)
            tr.cfg.steps = total
            for sched in [tr.sched_g] + ([tr.sched_d] if tr.disc is not None else []):
                sched.lr_lambdas[0].steps = total  # the cosine now ends at the planned last step
            self.sized = {
                "at_step": tr.step,
                "steps_per_s": round(rate, 3),
                "steps": total,
                "patches_per_s": round(rate * tr.cfg.batch_size, 1),
            }
            tr._log_event("time_plan", **self.sized)
            print(
                f"[train] {rate:.2f} steps/s ({rate * tr.cfg.batch_size:.0f} patches/s): cosine sized to {total} steps",
                flush=True,
            )
        if self.ckpt_every_s and now - self.last_ckpt >= self.ckpt_every_s and tr.step < tr.cfg.steps:
            tr.save_checkpoint()
            self.last_ckpt = time.perf_counter()
        if self.val_every_s and now - self.last_val >= self.val_every_s and tr.step < tr.cfg.steps:
            v = tr.validate()
            tr.plot()
            print(f"[train] step {tr.step}: Kodak24 Y-PSNR {v.get('psnr', 0):.3f} dB", flush=True)
            self.last_val = time.perf_counter()


def _trainer_class():
    from napari_rrim_sr.training.gpu_data import GpuPatchSampler, check_supported
    from napari_rrim_sr.training.trainer import Trainer

    class GpuTrainer(Trainer):
        """The trainer with its batches made on the device by :class:`GpuPatchSampler`."""

        def _setup_data(self) -> None:
            check_supported(self.cfg)
            super()._setup_data()
            arrays = []
            s = self.cfg.scale
            for rec in self.dataset.records:
                if rec.bits != 8 or rec.array is None:
                    raise RuntimeError(f"GPU sampler needs 8-bit images in memory (cache=memory): {rec.path}")
                for z in range(rec.n_planes):
                    a = rec.array[z]
                    arrays.append(a[: a.shape[0] // s * s, : a.shape[1] // s * s])
            self.sampler = GpuPatchSampler(
                arrays,
                patch_size=self.cfg.patch_size,
                scale=s,
                batch_size=self.cfg.batch_size,
                device=self.device,
                seed=self.cfg.seed,
                augment=self.cfg.augment,
                quantize=self.cfg.quantize_lr,
                channels_last=self.channels_last,
            )
            self.dataset.records = []  # the host copies are no longer needed
            log.info(
                "GPU sampler: %d images on %s (%.0f MiB), %d too small",
                len(self.sampler.images),
                self.device,
                self.sampler.bytes / MiB,
                self.sampler.dropped,
            )

        def _make_loader(self):
            self.sampler.step = self.step
            return self.sampler  # endless: the loop ends at cfg.steps (sized by TimePlan) or at max_minutes

    return GpuTrainer


def run_training(recipe: Path, clock: Clock, plan: dict, *, dry: bool, packs: dict, run_dir: Path, device: str) -> dict:
    import torch

    from napari_rrim_sr.training.config import TrainConfig, load_toml

    cfg = TrainConfig.from_dict(load_toml(recipe))
    over = dict(DRY_OVERRIDES) if dry else {"device": device}
    over.update(
        {
            "data": [packs["train"]["dir"]],
            "val": packs["val"]["dir"],
            "out": str(run_dir),
            "progress": False,
            "register": False,
        }
    )
    cfg = replace(TrainConfig.from_dict(over, base=cfg))
    margin = 3 * cfg.scale  # GpuPatchSampler's window: the patch plus the bicubic support each side
    cfg.min_size = max(cfg.min_size, cfg.patch_size + 2 * margin)
    if cfg.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t = time.perf_counter()
    tr = _trainer_class()(cfg)
    setup_s = time.perf_counter() - t
    print(
        f"[train] set up in {setup_s:.1f} s: {tr.data_report.summary()}; {len(tr.sampler.images)} images on "
        f"{tr.device} ({tr.sampler.bytes / MiB:.0f} MiB), precision {tr.precision}, channels_last "
        f"{tr.channels_last}",
        flush=True,
    )
    t = time.perf_counter()
    v0 = tr.validate()  # the starting point of the curve, with the same code as the end
    val_s = time.perf_counter() - t
    print(
        f"[train] step {tr.step} (the shipped weights): Kodak24 Y-PSNR {v0.get('psnr', 0):.3f} dB ({val_s:.1f} s)",
        flush=True,
    )
    end_at = clock.deadline - plan["finish"] - val_s  # leave the final validation and the outputs
    tp = TimePlan(
        end_at,
        warm=1 if dry else 10,
        window=2 if dry else 20,
        ckpt_every_s=60.0,
        val_every_s=plan["val_every"],
        val_seconds=val_s,
        max_steps=cfg.steps,
    )
    tr.callbacks.append(tp)
    tr.cfg.max_minutes = max(0.05, (end_at - time.perf_counter()) / 60.0)
    result = tr.run()
    return {
        "status": result.status,
        "step": result.step,
        "weights": str(result.weights) if result.weights else None,
        "metrics": result.metrics,
        "val_history": tr.val_history,
        "bicubic": tr.bicubic_metrics,
        "time_plan": tp.sized,
        "setup_seconds": round(setup_s, 1),
        "val_seconds": round(val_s, 1),
        "max_minutes": round(tr.cfg.max_minutes, 3),
        "hardware": tr.hardware,
        "config": tr.cfg.to_dict(),
        "data": tr.data_report.as_dict(),
        "sampler": {"images": len(tr.sampler.images), "dropped": tr.sampler.dropped, "window": tr.sampler.win},
    }


# -- phase 4: outputs -----------------------------------------------------------------------------


def _json(path: Path, obj) -> None:
    from napari_rrim_sr.safe_write import atomic_write

    atomic_write(path, json.dumps(jsonable(obj), indent=2) + "\n", overwrite=True)


def write_outputs(
    out: Path, run_dir: Path | None, summary: dict, checks: dict | None, bench: dict | None, packs: dict | None
) -> list[str]:
    from napari_rrim_sr.safe_write import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    written = []
    if run_dir is not None and run_dir.is_dir():
        weights = sorted(run_dir.glob("*.safetensors"))
        for p in weights[:1]:
            atomic_write(out / p.name, p.read_bytes(), overwrite=True)
            written.append(p.name)
        for name in ("log.jsonl", "val.png"):
            if (run_dir / name).is_file():
                atomic_write(out / name, (run_dir / name).read_bytes(), overwrite=True)
                written.append(name)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:  # direct-write: an in-memory buffer
            for p in sorted(run_dir.rglob("*")):
                rel = p.relative_to(run_dir)
                if (
                    p.is_file()
                    and rel.parts[0] not in ("checkpoints", "cache")
                    and p.suffix != ".safetensors"
                    and p.name not in ("log.jsonl", "val.png")
                ):
                    tar.add(p, arcname=str(rel))
            if packs:
                data = (json.dumps(jsonable(packs), indent=1) + "\n").encode()
                info = tarfile.TarInfo("packs.json")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        atomic_write(out / "run-extras.tar", buf.getvalue(), overwrite=True)
        written.append("run-extras.tar")
    if checks is not None:
        _json(out / "checks.json", checks)
        written.append("checks.json")
    if bench is not None:
        _json(out / "bench.json", bench)
        written.append("bench.json")
    summary["outputs"] = written + ["summary.json"]
    _json(out / "summary.json", summary)
    files = [p for p in out.rglob("*") if p.is_file()]
    big = [p.name for p in files if p.stat().st_size > MAX_FILE_BYTES]
    if len(files) > MAX_FILES or big:
        print(f"[outputs] WARNING: {len(files)} files (max {MAX_FILES}), over 16 MiB: {big}", flush=True)
    return summary["outputs"]


# -- the command ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m napari_rrim_sr.training.gpu_run", description=__doc__.split("::")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "out/gpu-run", help="output folder (default $OUT)")
    p.add_argument("--repo", default=".", help="repository root (default .)")
    p.add_argument("--carry", default=".gpu-carry", help="the carried folder (packs, wheels)")
    p.add_argument("--recipe", default=RECIPE)
    p.add_argument("--minutes", type=float, default=None, help="total wall-clock budget (default 8.5; dry run 2)")
    p.add_argument("--device", default="cuda", help="device of the checks and the training (default cuda)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, a few steps: the same path end to end")
    p.add_argument("--skip-checks", action="store_true", help="go straight to training")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    plan = dict(DRY_PLAN if args.dry_run else PLAN)
    if args.minutes:
        plan["total"] = 60.0 * args.minutes
    clock = Clock(plan["total"])
    repo, carry, out = Path(args.repo).resolve(), Path(args.carry).resolve(), Path(args.out).resolve()
    device = "cpu" if args.dry_run else args.device
    summary: dict = {
        "command": "python -m napari_rrim_sr.training.gpu_run " + " ".join(argv or sys.argv[1:]),
        "dry_run": args.dry_run,
        "plan_seconds": plan,
        "phases": {},
        "errors": [],
    }
    checks = bench = packs = None
    run_dir = None
    scratch = Path(tempfile.mkdtemp(prefix="rrim-gpu-run-"))
    rc = 0
    try:
        t = clock.now()
        env = env_report(carry)
        summary["env"] = env
        print(
            f"[env] python {env['python']}, torch {env['torch']}, CUDA {env['cuda_available']} "
            f"{env.get('gpu', {}).get('name', '')}; missing: {env['missing'] or 'none'}",
            flush=True,
        )
        if device.startswith("cuda") and not env["cuda_available"]:
            raise RuntimeError("no CUDA device: this is the GPU run (use --dry-run on a CPU)")
        if not args.dry_run:
            try:
                from napari_rrim_sr.training.gpu_pack import check_fits

                summary["fits"] = check_fits(repo, [carry])
            except Exception as exc:  # noqa: BLE001 - no git on the device copy: informative only
                summary["fits"] = f"not measured here: {type(exc).__name__}"
        packs = unpack_packs(carry, scratch)
        print(
            f"[env] packs verified: train {packs['train']['images']} images "
            f"({packs['train']['megapixels']} MP), validation {packs['val']['images']} images",
            flush=True,
        )
        summary["packs"] = packs
        summary["phases"]["env"] = round(clock.now() - t, 1)
        if not args.skip_checks:
            t = clock.now()
            photo = sorted(Path(packs["val"]["dir"]).iterdir())[0]
            checks, bench = run_checks(
                device, clock, plan, dry=args.dry_run, repo=repo, photo=str(photo), scratch=scratch
            )
            summary["phases"]["checks"] = round(clock.now() - t, 1)
            summary["checks_ok"] = checks["ok"]
        t = clock.now()
        run_dir = scratch / "run"
        summary["train"] = run_training(
            repo / args.recipe, clock, plan, dry=args.dry_run, packs=packs, run_dir=run_dir, device=device
        )
        summary["phases"]["train"] = round(clock.now() - t, 1)
        m = summary["train"]["val_history"]
        if m:
            print(
                f"[train] {summary['train']['status']} at step {summary['train']['step']}: Kodak24 Y-PSNR "
                f"{m[0].get('psnr', 0):.3f} -> {m[-1].get('psnr', 0):.3f} dB",
                flush=True,
            )
    except Exception as exc:  # noqa: BLE001 - whatever happened, what was measured comes back
        rc = 1
        summary["errors"].append("".join(traceback.format_exception(exc))[-4000:])
        print(f"[error] {type(exc).__name__}: {exc}", flush=True)
    finally:
        t = clock.now()
        summary["elapsed_seconds"] = round(clock.now(), 1)
        try:
            files = write_outputs(out, run_dir, summary, checks, bench, packs)
            print(f"[outputs] {out}: {', '.join(files)} (+ run.log from run.sh)", flush=True)
        except Exception as exc:  # noqa: BLE001
            rc = 1
            print(f"[error] writing outputs: {type(exc).__name__}: {exc}", flush=True)
        shutil.rmtree(scratch, ignore_errors=True)
        print(
            f"[done] {clock.now():.1f} s of {plan['total']:.0f} s planned; outputs {clock.now() - t:.1f} s", flush=True
        )
    if checks is not None and not checks.get("ok"):
        rc = rc or 3
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
