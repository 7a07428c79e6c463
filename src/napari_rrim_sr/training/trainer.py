"""The training loop and its run directory: setup (hardware, models, data), resume, signals,
the loop itself. The parts by role live beside it: :mod:`.steps` (PSNR and GAN steps, LR
schedule, EMA), :mod:`.checkpoint` (write/read/find), :mod:`.runlog` (logs and plots),
:mod:`.validation` (evaluate's convention). What remains (about 600 lines) is one object's
state: its setup, resume and loop read and write the same attributes.

Run directory layout (``RUN_DIR``)::

    config.toml, config.json   the resolved configuration (re-usable with --config)
    log.jsonl                  one JSON record per line: {"kind": "train"|"val"|"event", "step", ...}
    log.csv                    the training and validation records as a table
    loss.png, val.png          curves of the losses and of validation Y-PSNR / SSIM / FSIM
    samples/step_NNNNNNN.png   LR | bicubic | SR | HR crop of the first validation image
    checkpoints/last.pt        the latest checkpoint (plus the last ``keep_ckpts`` step_N.pt)
    data.json                  what the data loader found, used and skipped
    NAME.safetensors           the exported weights (EMA), at the end of a completed run

Checkpoints are written with ``torch.save`` and read only with ``torch.load(weights_only=True)``:
they hold tensors and plain Python values (RNG states converted to tensors/lists).

A run stopped by SIGINT or SIGTERM finishes the current step, writes ``checkpoints/last.pt`` and
returns ``status="interrupted"`` with the signal; the CLI exits with 128 + the signal (130, 143).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import random
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from napari_rrim_sr import read_guard
from napari_rrim_sr.engine import devices
from napari_rrim_sr.jsonable import jsonable
from napari_rrim_sr.safe_write import atomic_write
from napari_rrim_sr.training.checkpoint import (  # noqa: F401 - TrainingError, load_checkpoint, find_checkpoint: public here too
    CKPT_FORMAT,
    TrainingError,
    adapt_channels,
    find_checkpoint,
    load_checkpoint,
    plain,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from napari_rrim_sr.training.config import ConfigError, TrainConfig
from napari_rrim_sr.training.data import (
    DataReport,
    Degradations,
    PatchDataset,
    load_records,
    load_validation,
    make_loader,
)
from napari_rrim_sr.training.runlog import RunLog
from napari_rrim_sr.training.steps import EMA, LRSchedule, train_step
from napari_rrim_sr.training.validation import save_sample_grid, val_convention, validate_images

#: Files every run writes at the top of its folder (never one of its training images).
RUN_FILES = ("loss.png", "val.png", "data.json", "config.toml", "config.json", "log.csv")
log = logging.getLogger(__name__)

#: configuration keys that must not change when a run is resumed
STRUCTURAL_KEYS = ("backbone", "hparams", "channels", "scale", "stage", "discriminator", "d_hparams", "gan_type")


def hardware_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "device": str(device),
        "cpu": cpu,
        "cpu_threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "os": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = str(torch.version.cuda)
    return info


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    status: str  # "completed" or "interrupted"
    signal: int | None = None  # the signal that interrupted the run (SIGINT, SIGTERM)
    weights: Path | None = None
    installed: Path | None = None
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)


# -- the trainer ------------------------------------------------------------------------------


class Trainer:
    """Set up from a :class:`TrainConfig`; :meth:`run` trains to ``cfg.steps``.

    ``resume``: a checkpoint path, ``True``/"last" (the run directory's last checkpoint, which
    must exist) or "auto" (resume if there is one). ``callbacks`` are called as
    ``fn(trainer, stats)`` after each step (tests, notebooks). ``dataset``: a map-style dataset
    of ``(lr, hr)`` pairs to train on instead of the images of ``cfg.data`` (which then only
    describes them; in-memory layers, registered LR/HR pairs), with no validation images.
    """

    @read_guard.guarded_method  # what __init__ reads (data, --init) stays protected in run()
    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: str | os.PathLike | bool | None = None,
        callbacks: list[Callable[["Trainer", dict], None]] | None = None,
        registry=None,
        dataset=None,
    ):
        from napari_rrim_sr.registry.core import get_registry

        self.registry = registry or get_registry()
        self._dataset = dataset
        self.callbacks = list(callbacks or [])
        self.stop_signal: int | None = None
        self._t_start = time.perf_counter()
        self.step = 0
        self.wall_time = 0.0  # seconds over all sessions before this one
        self.sessions: list[dict] = []
        self.history: list[dict] = []
        self.val_history: list[dict] = []
        self.bicubic_metrics: dict | None = None
        self.init_info: dict = {}
        self.bad_steps = 0
        self._session_start = 0
        self.run_id = uuid.uuid4().hex

        ckpt_path = self._resume_path(cfg, resume)
        ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
        self.cfg = self._resolve(cfg, ckpt)
        self.run_dir = self.cfg.run_dir()
        if ckpt is None and find_checkpoint(self.run_dir) is not None:
            raise TrainingError(
                f"{self.run_dir} already holds a training run (checkpoints/last.pt): "
                "continue it with --resume, or choose another --out / --name"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.runlog = RunLog(self.run_dir)
        if ckpt is None:
            self.log_path.unlink(missing_ok=True)
        self._setup_hardware()
        self._setup_models()
        self._setup_data()
        if ckpt is not None:
            self._restore(ckpt, ckpt_path)
            self._session_start = self.step
        else:
            self._seed_all()
        self.cfg.save(self.run_dir)

    # -- setup ------------------------------------------------------------------------------
    @staticmethod
    def _resume_path(cfg: TrainConfig, resume) -> Path | None:
        if resume in (None, False, "", "none"):
            return None
        run_dir = cfg.run_dir()
        if resume in (True, "last", "auto"):
            found = find_checkpoint(run_dir)
            if found is None and resume != "auto":
                raise TrainingError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
            return found
        return Path(resume)

    def _resolve(self, cfg: TrainConfig, ckpt: dict | None) -> TrainConfig:
        """Fill backbone / channels / scale / hparams from defaults, the init file or the checkpoint."""
        cfg = replace(cfg, hparams=dict(cfg.hparams), d_hparams=dict(cfg.d_hparams), vgg_layers=dict(cfg.vgg_layers))
        if ckpt is not None:
            saved = TrainConfig.from_dict(ckpt["config"])
            for key in STRUCTURAL_KEYS:
                mine = getattr(cfg, key)
                if key in ("backbone",) and not mine:
                    continue
                if key in ("channels", "scale") and not mine:
                    continue
                if key in ("hparams", "d_hparams"):
                    bad = {k: v for k, v in mine.items() if saved.__dict__[key].get(k) != v}
                    if bad:
                        raise ConfigError(
                            f"cannot resume with different {key} {bad} (checkpoint has "
                            f"{ {k: saved.__dict__[key].get(k) for k in bad} })"
                        )
                    continue
                if mine != getattr(saved, key):
                    raise ConfigError(
                        f"cannot resume with {key}={mine!r}: the checkpoint was trained with "
                        f"{key}={getattr(saved, key)!r}"
                    )
            for key in ("backbone", "hparams", "channels", "scale", "d_hparams", "name"):
                setattr(cfg, key, copy.deepcopy(getattr(saved, key)))
            if not cfg.out:
                cfg.out = saved.out
            return cfg.validate()
        cfg.validate()
        init_hp: dict = {}
        if cfg.init:
            from napari_rrim_sr.registry.loading import load_model

            lm = load_model(cfg.init, registry=self.registry)
            if cfg.backbone and cfg.backbone != lm.backbone:
                raise ConfigError(f"--init {cfg.init} is a {lm.backbone!r} model, not {cfg.backbone!r}")
            cfg.backbone = lm.backbone
            init_hp = dict(lm.hparams)
            self._init_model = lm
            self.init_info = {
                "source": str(cfg.init),
                "path": str(lm.path),
                "sha256": lm.sha256,
                "id": lm.id,
                "metrics": lm.metadata.get("metrics", {}),
            }
            if cfg.channels and cfg.channels != lm.in_channels and {cfg.channels, lm.in_channels} != {1, 3}:
                raise ConfigError(
                    f"--init {cfg.init} has channels={lm.in_channels}, the config asks {cfg.channels} "
                    "(only RGB <-> gray initialisation is supported)"
                )
            if cfg.scale and cfg.scale != lm.scale:
                raise ConfigError(f"--init {cfg.init} has scale={lm.scale}, the config asks {cfg.scale}")
            for k, v in cfg.hparams.items():
                if k in init_hp and init_hp[k] != v and k not in ("in_channels", "out_channels", "scale"):
                    raise ConfigError(f"--hparam {k}={v!r} conflicts with the --init weights ({k}={init_hp[k]!r})")
        elif cfg.stage == "gan":
            raise ConfigError("stage gan starts from a PSNR-stage model: give --init WEIGHTS")
        cfg.backbone = cfg.backbone or "rrim"
        spec = self.registry.backbone(cfg.backbone)
        if spec.kind != "generator":
            raise ConfigError(f"{cfg.backbone!r} is a {spec.kind}, not a generator")
        cfg.channels = cfg.channels or int(init_hp.get("in_channels", 3))
        cfg.scale = cfg.scale or int(init_hp.get("scale", 4))
        hp = dict(init_hp)
        hp.update(cfg.hparams)
        hp.update({"in_channels": cfg.channels, "out_channels": cfg.channels, "scale": cfg.scale})
        cfg.hparams = spec.resolve_hparams(**hp)
        cfg.name = cfg.resolved_name()
        if not cfg.out:
            cfg.out = str(cfg.run_dir())
        if cfg.stage == "gan":
            dspec = self.registry.backbone(cfg.discriminator)
            if dspec.kind != "discriminator":
                raise ConfigError(f"{cfg.discriminator!r} is not a discriminator")
            dhp = dict(cfg.d_hparams)
            dhp["in_channels"] = cfg.channels
            cfg.d_hparams = dspec.resolve_hparams(**dhp)
        return cfg.validate()

    def _setup_hardware(self) -> None:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = devices.resolve_device(cfg.device)
        spec = self.registry.backbone(cfg.backbone)
        self.precision = devices.resolve_precision(cfg.precision, self.device, spec.half_precisions)
        if cfg.channels_last == "auto":
            self.channels_last = devices.use_channels_last(self.device, self.precision)
        else:
            self.channels_last = cfg.channels_last == "on"
        self.amp_dtype = devices.torch_dtype(self.precision)
        use_scaler = self.precision == "fp16"  # bf16 has fp32's range: no loss scaling needed
        try:
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
            self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        except (RuntimeError, ValueError) as exc:  # a backend without GradScaler support
            log.warning(
                "no gradient scaling on %s (%s): fp16 may underflow; prefer bf16 or fp32", self.device.type, exc
            )
            self.scaler = torch.amp.GradScaler("cpu", enabled=False)
            self.scaler_d = torch.amp.GradScaler("cpu", enabled=False)
        self.hardware = hardware_info(self.device)
        self.hardware["precision"] = self.precision
        self.hardware["channels_last"] = self.channels_last

    def _autocast(self):
        return devices.autocast(self.device, self.precision)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def _setup_models(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        spec = self.registry.backbone(cfg.backbone)
        self.model = spec.build(**cfg.hparams)
        if cfg.init and getattr(self, "_init_model", None) is not None:
            self.model.load_state_dict(adapt_channels(self._init_model.module.state_dict(), self.model.state_dict()))
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.ema = EMA(self.model, cfg.ema) if cfg.ema > 0 else None
        self.forward_model = torch.compile(self.model) if cfg.compile else self.model
        self.opt_g = torch.optim.Adam(
            self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
        )
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, self._schedule())
        from napari_rrim_sr.training.losses import AdversarialLoss, pixel_loss

        self.pixel_loss = pixel_loss(cfg.pixel_loss)
        self.disc = None
        self.percep = None
        if cfg.stage == "gan":
            self.gan_w = cfg.gan_weights()
            self.disc = self.registry.backbone(cfg.discriminator).build(**cfg.d_hparams).to(self.device)
            if self.channels_last:
                self.disc.to(memory_format=torch.channels_last)
            self.disc.train()
            d_lr = cfg.d_lr or cfg.lr
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=d_lr, betas=tuple(cfg.betas))
            self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, self._schedule())
            self.adv_loss = AdversarialLoss(cfg.gan_type)
            if self.gan_w["percep_weight"] > 0 or cfg.gram_weight > 0:
                from napari_rrim_sr.training.losses import perceptual_loss_for

                self.percep = perceptual_loss_for(self.cfg).to(self.device)  # fills vgg_layers/vgg_input
                if self.channels_last:
                    self.percep.to(memory_format=torch.channels_last)

    def _schedule(self) -> LRSchedule:
        cfg = self.cfg
        return LRSchedule(
            cfg.schedule, cfg.steps, cfg.warmup, min(1.0, cfg.lr_min / cfg.lr), list(cfg.milestones) or None, cfg.gamma
        )

    def _setup_data(self) -> None:
        cfg = self.cfg
        if self._dataset is not None:  # given by the caller (see the class docstring)
            self.dataset, self.val_images = self._dataset, []
            self.data_report = DataReport(sources=list(cfg.data), cache="memory")
            return
        min_side = max(cfg.patch_size, cfg.min_size)
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else self.run_dir / "cache"
        records, report = load_records(
            cfg.data,
            channels=cfg.channels,
            min_side=min_side,
            exclude=cfg.exclude,
            normalize=cfg.normalize,
            percentiles=cfg.percentiles,
            cache=cfg.cache,
            cache_dir=cache_dir if cfg.cache == "disk" else None,
        )
        self.data_report: DataReport = report
        log.info("training data: %s", report.summary())  # skipped files were logged by load_records
        from napari_rrim_sr.safe_write import check_target

        for name in RUN_FILES:  # --out equal to --data: refuse now, not after the run (read_guard)
            check_target(self.run_dir / name, overwrite=True)
        atomic_write(
            self.run_dir / "data.json", json.dumps(jsonable(report.as_dict()), indent=2) + "\n", overwrite=True
        )
        self.dataset = PatchDataset(
            records,
            patch_size=cfg.patch_size,
            scale=cfg.scale,
            channels=cfg.channels,
            degradations=Degradations.from_config(cfg),
            augment=cfg.augment,
            seed=cfg.seed,
            length=cfg.steps * cfg.batch_size,
            normalize=cfg.normalize,
            percentiles=cfg.percentiles,
        )
        self.val_images = []
        if cfg.val:
            self.val_images, problems = load_validation(
                cfg.val,
                channels=cfg.channels,
                scale=cfg.scale,
                limit=cfg.val_limit,
                crop=cfg.val_crop,
                normalize=cfg.normalize,
                percentiles=cfg.percentiles,
            )  # `exclude` applies to training data only: held-out files are what validation is for
            for p, reason in problems:
                log.warning("validation: skipped %s: %s", p, reason)

    def _seed_all(self) -> None:
        random.seed(self.cfg.seed)
        np.random.seed(self.cfg.seed % 2**32)
        torch.manual_seed(self.cfg.seed)

    def _restore(self, ckpt: dict, path: Path) -> None:
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self._load_sched(self.sched_g, ckpt["sched_g"])
        self.scaler.load_state_dict(ckpt["scaler"]) if ckpt.get("scaler") else None
        if self.disc is not None:
            if ckpt.get("disc") is None:
                raise TrainingError(f"{path} has no discriminator state (not a GAN-stage checkpoint)")
            self.disc.load_state_dict(ckpt["disc"])
            self.opt_d.load_state_dict(ckpt["opt_d"])
            self._load_sched(self.sched_d, ckpt["sched_d"])
            if ckpt.get("scaler_d"):
                self.scaler_d.load_state_dict(ckpt["scaler_d"])
        self.step = int(ckpt["step"])
        self.wall_time = float(ckpt.get("wall_time", 0.0))
        self.sessions = list(ckpt.get("sessions", []))
        self.val_history = list(ckpt.get("val_history", []))
        self.bicubic_metrics = ckpt.get("bicubic_metrics")
        self.init_info = ckpt.get("init_info", {}) or {}
        self.run_id = str(ckpt.get("run_id") or self.run_id)
        set_rng_state(ckpt["rng"])
        self._trim_log(self.step)
        self._log_event("resume", checkpoint=str(path))
        log.info("resumed from %s at step %d", path, self.step)

    def _load_sched(self, sched, state: dict) -> None:
        sched.load_state_dict(state)
        # the schedule follows the current config (e.g. a longer --steps), not the saved lambda
        sched.lr_lambdas[0].__dict__.update(self._schedule().__dict__)
        for group, base in zip(sched.optimizer.param_groups, sched.base_lrs):
            group["lr"] = base * sched.lr_lambdas[0](sched.last_epoch)
        sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]

    # -- logging (runlog.py) -------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.runlog.path

    def _write_log(self, record: dict) -> None:
        self.runlog.write(record)

    def _log_event(self, event: str, **extra) -> None:
        self.runlog.event(event, self.step, **extra)

    def _trim_log(self, step: int) -> None:
        """On resume, drop records written after the checkpoint (they will be written again)."""
        self.history = self.runlog.trim(step)

    def _write_csv(self) -> None:
        self.runlog.write_csv(self.history, self.val_history)

    def plot(self) -> None:
        """loss.png and val.png from the logged history (matplotlib Agg; skipped if missing)."""
        self.runlog.plot(
            self.history,
            self.val_history,
            name=self.cfg.name,
            gan=self.disc is not None,
            bicubic=self.bicubic_metrics,
            convention=self.val_convention(),
        )

    # -- validation (validation.py) ----------------------------------------------------------
    def val_convention(self) -> str:
        return val_convention(self.cfg)

    @torch.no_grad()
    def validate(self) -> dict:
        """Mean PSNR/SSIM/FSIM over the validation images (EMA model), plus a sample grid."""
        net = self.ema.module if self.ema is not None else self.model
        t0 = time.perf_counter()
        mean, self.bicubic_metrics, first = validate_images(
            net, self.val_images, self.cfg, self.device, bicubic=self.bicubic_metrics
        )
        rec = {
            "kind": "val",
            "step": self.step,
            **mean,
            "n": len(self.val_images),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if self.bicubic_metrics:
            rec.update({f"bicubic_{k}": v for k, v in self.bicubic_metrics.items()})
        self.val_history.append(rec)
        self._write_log(rec)
        if first is not None:
            save_sample_grid(*first, scale=self.cfg.scale, path=self.run_dir / "samples" / f"step_{self.step:07d}.png")
        return rec

    def set_total_steps(self, steps: int) -> None:
        """End the running loop at ``steps`` instead of ``cfg.steps`` (not beyond the steps it was
        started with: its data loader ends there), and fit the LR schedule to it (fine-tuning
        fits a time budget once the real speed is known)."""
        self.cfg.steps = max(self.step, int(steps))
        for sched in (self.sched_g, getattr(self, "sched_d", None)):
            if sched is not None:
                sched.lr_lambdas[0].steps = self.cfg.steps

    # -- checkpoints ------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.wall_time + (time.perf_counter() - self._t_start)

    def checkpoint_state(self) -> dict:
        sessions = self.sessions + [self._session_record()]
        state = {
            "format": CKPT_FORMAT,
            "run_id": self.run_id,
            "step": self.step,
            "config": self.cfg.to_dict(),
            "backbone": self.cfg.backbone,
            "hparams": plain(dict(self.cfg.hparams)),
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "opt_d": self.opt_d.state_dict() if self.disc is not None else None,
            "sched_d": self.sched_d.state_dict() if self.disc is not None else None,
            "scaler_d": self.scaler_d.state_dict() if self.disc is not None and self.scaler_d.is_enabled() else None,
            "rng": rng_state(),
            "wall_time": self.elapsed(),
            "time": time.time(),
        }
        # plain JSON types only (weights_only=True refuses str subclasses, numpy scalars...)
        state.update(
            plain(
                {
                    "config": self.cfg.to_dict(),
                    "sessions": sessions,
                    "val_history": self.val_history,
                    "bicubic_metrics": self.bicubic_metrics,
                    "val_convention": self.val_convention() if self.val_images else "",
                    "data": self.data_report.as_dict(),
                    "init_info": self.init_info,
                }
            )
        )
        return state

    def _session_record(self) -> dict:
        return {
            "hardware": self.hardware,
            "start_step": self._session_start,
            "end_step": self.step,
            "seconds": round(time.perf_counter() - self._t_start, 1),
        }

    def save_checkpoint(self) -> Path:
        ckdir = self.run_dir / "checkpoints"
        last = ckdir / "last.pt"
        save_checkpoint(self.checkpoint_state(), last)
        if self.cfg.keep_ckpts > 0:
            named = ckdir / f"step_{self.step:07d}.pt"
            named.unlink(missing_ok=True)
            try:
                os.link(last, named)
            except OSError:
                import shutil

                shutil.copyfile(last, named)
            old = sorted(ckdir.glob("step_*.pt"))[: -self.cfg.keep_ckpts]
            for p in old:
                p.unlink(missing_ok=True)
        self._log_event("checkpoint", path=str(last))
        return last

    # -- signals ----------------------------------------------------------------------------
    def handle_signal(self, signum, frame=None) -> None:
        """SIGINT/SIGTERM: finish the current step, write a checkpoint and return.
        A second SIGINT while stopping interrupts at once."""
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_signal = int(signum)
        log.warning("signal %s received: writing a checkpoint after this step", signal.Signals(signum).name)

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, self.handle_signal)
            except (ValueError, OSError):
                pass
        return old

    @staticmethod
    def _restore_signals(old: dict) -> None:
        for sig, handler in old.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError, TypeError):
                pass

    # -- steps (steps.py) ---------------------------------------------------------------------
    def train_step(self, lr: torch.Tensor, hr: torch.Tensor) -> dict:
        """One optimiser step of the run's stage (PSNR or GAN); returns its statistics."""
        return train_step(self, lr, hr)

    # -- the loop ---------------------------------------------------------------------------
    @read_guard.guarded_method
    def run(self) -> TrainResult:
        cfg = self.cfg
        self._t_start = time.perf_counter()
        self._session_start = self.step
        self._log_event("start", hardware=self.hardware, data=self.data_report.summary())
        old = self._install_signals()
        status = "completed"
        try:
            status = self._loop()
        finally:
            self._restore_signals(old)
        result = TrainResult(
            self.run_dir,
            self.step,
            status,
            history=self.val_history,
            signal=self.stop_signal if status == "interrupted" else None,
        )
        if status == "completed":
            if self.val_images and (not self.val_history or self.val_history[-1]["step"] != self.step):
                self.validate()
            self.save_checkpoint()
            self._write_csv()
            self.plot()
            from napari_rrim_sr.training.export import ExportError, export_run

            try:
                exported = export_run(self.run_dir, register=cfg.register, dtype=cfg.export_dtype)
            except ExportError as exc:  # e.g. a different model of that name is installed
                log.warning("%s", exc)
                print(f"warning: {exc}")
                exported = export_run(self.run_dir, register=False, dtype=cfg.export_dtype, overwrite=True)
            result.weights, result.installed = exported.path, exported.installed
            self._log_event(
                "exported", path=str(exported.path), installed=str(exported.installed) if exported.installed else None
            )
        result.metrics = self.val_history[-1] if self.val_history else {}
        return result

    def _make_loader(self):
        """Batches ``(lr, hr)`` for steps ``self.step .. cfg.steps-1`` (a subclass may make them on the GPU)."""
        cfg = self.cfg
        return make_loader(
            self.dataset,
            batch_size=cfg.batch_size,
            start_step=self.step,
            steps=cfg.steps,
            workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
        )

    def _loop(self) -> str:
        cfg = self.cfg
        if self.step >= cfg.steps:
            return "completed"

        def worker_init(_):  # Ctrl-C reaches the main process, which stops the workers
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        loader = self._make_loader()
        if cfg.workers:
            loader.worker_init_fn = worker_init
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=cfg.name, dynamic_ncols=True, unit="step")
        window: dict[str, list[float]] = {}
        t_window = time.perf_counter()
        wait = 0.0
        status = "completed"
        try:
            t_fetch = time.perf_counter()
            for lr, hr in loader:
                wait += time.perf_counter() - t_fetch
                stats = self.train_step(lr, hr)
                self.step += 1
                for k, v in stats.items():
                    window.setdefault(k, []).append(v)
                for fn in self.callbacks:
                    fn(self, stats)
                if bar is not None:
                    bar.update(1)
                    post = {"loss": f"{stats.get('loss', float('nan')):.4g}", "lr": f"{stats.get('lr', 0):.2e}"}
                    if self.val_history:
                        post["psnr"] = f"{self.val_history[-1].get('psnr', 0):.2f}"
                    bar.set_postfix(post, refresh=False)
                if cfg.max_minutes and time.perf_counter() - self._t_start >= 60.0 * cfg.max_minutes:
                    cfg.steps = self.step  # wall-clock budget spent: finish now (validate, export)
                    self._log_event("deadline", max_minutes=cfg.max_minutes)
                last = self.step >= cfg.steps
                if self.step % cfg.log_every == 0 or last or self.stop_signal is not None:
                    dt = time.perf_counter() - t_window
                    n = len(window.get("loss", [])) or 1
                    rec = {"kind": "train", "step": self.step}
                    for k, vals in window.items():
                        finite = [v for v in vals if math.isfinite(v)]
                        rec[k] = float(np.mean(finite)) if finite else float("nan")
                    rec["lr"] = stats.get("lr", self.opt_g.param_groups[0]["lr"])
                    rec["patches_per_s"] = round(n * cfg.batch_size / dt, 2) if dt > 0 else None
                    rec["data_wait"] = round(wait / dt, 3) if dt > 0 else None
                    rec["elapsed_s"] = round(self.elapsed(), 1)
                    self.history.append(rec)
                    self._write_log(rec)
                    window, t_window, wait = {}, time.perf_counter(), 0.0
                if self.val_images and cfg.val_every and self.step % cfg.val_every == 0 and not last:
                    v = self.validate()
                    self.plot()
                    msg = f"step {self.step}: val PSNR {v.get('psnr', 0):.3f} dB SSIM {v.get('ssim', 0):.4f}"
                    (bar.write(msg) if bar is not None else log.info(msg))
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and not last:
                    self.save_checkpoint()
                if self.stop_signal is not None and not last:
                    status = "interrupted"
                    break
                if last:  # also when max_minutes moved the end before the loader's
                    break
                t_fetch = time.perf_counter()
        finally:
            if bar is not None:
                bar.close()
        if status == "interrupted":
            path = self.save_checkpoint()
            self._write_csv()
            self.plot()
            self._log_event("interrupted", signal=self.stop_signal)
            msg = (
                f"stopped by signal {self.stop_signal} at step {self.step}; checkpoint {path}; "
                f"continue with --resume --out {self.run_dir}"
            )
            log.warning(msg)
            print(msg)
        return status


def train(cfg: TrainConfig, *, resume=None, callbacks=None) -> TrainResult:
    """Convenience: build a :class:`Trainer` and run it."""
    return Trainer(cfg, resume=resume, callbacks=callbacks).run()
