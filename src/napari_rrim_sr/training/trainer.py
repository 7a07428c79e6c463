"""The training loop: PSNR stage and GAN stage, checkpoints, resume, validation, run directory.

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
"""

from __future__ import annotations

import copy
import csv
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
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .. import devices
from ..errors import RRIMError
from .config import ConfigError, TrainConfig
from .data import DataReport, Degradations, PatchDataset, load_records, load_validation, make_loader

log = logging.getLogger(__name__)

CKPT_FORMAT = 1
#: configuration keys that must not change when a run is resumed
STRUCTURAL_KEYS = ("backbone", "hparams", "channels", "scale", "stage", "discriminator", "d_hparams", "gan_type")


class TrainingError(RRIMError):
    """Training cannot go on (diverged, bad checkpoint...)."""


# -- small helpers ----------------------------------------------------------------------------

class LRSchedule:
    """LR factor per optimiser step: linear warm-up, then cosine / step / constant.

    A callable object with plain attributes, so ``LambdaLR.state_dict()`` stores it as a dict.
    """

    def __init__(self, kind: str, steps: int, warmup: int = 0, min_factor: float = 0.0,
                 milestones: list[int] | None = None, gamma: float = 0.5):
        self.kind, self.steps, self.warmup = kind, int(steps), int(warmup)
        self.min_factor, self.gamma = float(min_factor), float(gamma)
        self.milestones = sorted(int(m) for m in (milestones or [int(steps * f) for f in (0.5, 0.75, 0.9)]))

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return self.gamma ** sum(1 for m in self.milestones if step >= m)
        span = max(1, self.steps - self.warmup)
        t = min(1.0, (step - self.warmup) / span)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


class EMA:
    """Exponential moving average of a module's parameters (buffers copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))  # warm start: fast early tracking
        ema_p = [p for p in self.module.parameters()]
        cur_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)


def rng_state() -> dict:
    """All RNG states as tensors and plain values (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except Exception as exc:  # different GPU count: not fatal
            log.warning("could not restore CUDA RNG states: %s", exc)


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
    info = {"device": str(device), "cpu": cpu, "cpu_threads": torch.get_num_threads(),
            "torch": str(torch.__version__), "python": platform.python_version(), "os": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = str(torch.version.cuda)
    return info


def _plain(obj):
    """Round-trip through JSON: only dict/list/str/int/float/bool/None remain."""
    return json.loads(json.dumps(obj, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def save_checkpoint(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    os.replace(tmp, path)  # never leave a truncated checkpoint under the final name


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``weights_only=True`` (no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT or "model" not in ckpt:
        raise TrainingError(f"{path} is not a napari-rrim-sr training checkpoint")
    return ckpt


def find_checkpoint(run_dir: Path) -> Path | None:
    p = run_dir / "checkpoints" / "last.pt"
    return p if p.is_file() else None


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    status: str  # "completed" or "interrupted"
    weights: Path | None = None
    installed: Path | None = None
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)


# -- the trainer ------------------------------------------------------------------------------

def adapt_channels(src: dict, dst: dict) -> dict:
    """``src`` weights reshaped to ``dst``'s channel count (RGB <-> gray) so the new model computes
    exactly what the old one did on replicated gray input averaged back (the engine's rule for a
    3-channel model on 1-channel data): input convs sum their RGB kernels, output convs average
    their RGB filters; the reverse direction splits/replicates. Other tensors must match."""
    out = {}
    for key, w in src.items():
        target = dst.get(key)
        if target is None or tuple(w.shape) == tuple(target.shape):
            out[key] = w
            continue
        ws, ts = tuple(w.shape), tuple(target.shape)
        if w.dim() >= 2 and ws[0] == ts[0] and ws[2:] == ts[2:] and {ws[1], ts[1]} == {1, 3}:
            out[key] = w.sum(1, keepdim=True) if ts[1] == 1 else w.repeat(1, 3, *([1] * (w.dim() - 2))) / 3
        elif ws[1:] == ts[1:] and {ws[0], ts[0]} == {1, 3}:
            out[key] = w.mean(0, keepdim=True) if ts[0] == 1 else w.repeat(3, *([1] * (w.dim() - 1)))
        else:
            raise ConfigError(f"--init tensor {key} has shape {ws}, the model needs {ts}")
    return out


class Trainer:
    """Set up from a :class:`TrainConfig`; :meth:`run` trains to ``cfg.steps``.

    ``resume``: a checkpoint path, ``True``/"last" (the run directory's last checkpoint, which
    must exist) or "auto" (resume if there is one). ``callbacks`` are called as
    ``fn(trainer, stats)`` after each step (tests, notebooks). ``dataset``: a map-style dataset
    of ``(lr, hr)`` pairs to train on instead of the images of ``cfg.data`` (which then only
    describes them; in-memory layers, registered LR/HR pairs), with no validation images.
    """

    def __init__(self, cfg: TrainConfig, *, resume: str | os.PathLike | bool | None = None,
                 callbacks: list[Callable[["Trainer", dict], None]] | None = None, registry=None,
                 dataset=None):
        from ..registry import get_registry

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
            raise TrainingError(f"{self.run_dir} already holds a training run (checkpoints/last.pt): "
                                "continue it with --resume, or choose another --out / --name")
        self.run_dir.mkdir(parents=True, exist_ok=True)
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
                        raise ConfigError(f"cannot resume with different {key} {bad} (checkpoint has "
                                          f"{ {k: saved.__dict__[key].get(k) for k in bad} })")
                    continue
                if mine != getattr(saved, key):
                    raise ConfigError(f"cannot resume with {key}={mine!r}: the checkpoint was trained with "
                                      f"{key}={getattr(saved, key)!r}")
            for key in ("backbone", "hparams", "channels", "scale", "d_hparams", "name"):
                setattr(cfg, key, copy.deepcopy(getattr(saved, key)))
            if not cfg.out:
                cfg.out = saved.out
            return cfg.validate()
        cfg.validate()
        init_hp: dict = {}
        if cfg.init:
            from ..weights_io import load_model

            lm = load_model(cfg.init, registry=self.registry)
            if cfg.backbone and cfg.backbone != lm.backbone:
                raise ConfigError(f"--init {cfg.init} is a {lm.backbone!r} model, not {cfg.backbone!r}")
            cfg.backbone = lm.backbone
            init_hp = dict(lm.hparams)
            self._init_model = lm
            self.init_info = {"source": str(cfg.init), "path": str(lm.path), "sha256": lm.sha256,
                              "id": lm.id, "metrics": lm.metadata.get("metrics", {})}
            if cfg.channels and cfg.channels != lm.in_channels and {cfg.channels, lm.in_channels} != {1, 3}:
                raise ConfigError(f"--init {cfg.init} has channels={lm.in_channels}, the config asks {cfg.channels} "
                                  "(only RGB <-> gray initialisation is supported)")
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
            log.warning("no gradient scaling on %s (%s): fp16 may underflow; prefer bf16 or fp32",
                        self.device.type, exc)
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
        self.opt_g = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                      weight_decay=cfg.weight_decay)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, self._schedule())
        from .losses import AdversarialLoss, pixel_loss

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
                from .losses import PerceptualLoss, build_vgg, default_vgg_layers, detect_vgg_arch, read_vgg_state_dict

                layers = dict(cfg.vgg_layers)
                if not layers:
                    arch = cfg.vgg_arch
                    if arch == "auto":
                        arch = ("vgg19" if cfg.vgg_weights.endswith("vgg19") else "vgg16") \
                            if cfg.vgg_weights.startswith("torchvision:") \
                            else detect_vgg_arch(read_vgg_state_dict(cfg.vgg_weights))
                    layers = default_vgg_layers(arch)
                    self.cfg.vgg_layers = layers
                vgg = build_vgg(cfg.vgg_weights, list(layers), arch=cfg.vgg_arch, input_convention=cfg.vgg_input)
                if cfg.vgg_input == "auto":
                    self.cfg.vgg_input = vgg.input_convention
                self.percep = PerceptualLoss(vgg, layers, cfg.percep_criterion, gram=cfg.gram_weight > 0).to(self.device)
                if self.channels_last:
                    self.percep.to(memory_format=torch.channels_last)

    def _schedule(self) -> LRSchedule:
        cfg = self.cfg
        return LRSchedule(cfg.schedule, cfg.steps, cfg.warmup, min(1.0, cfg.lr_min / cfg.lr),
                          list(cfg.milestones) or None, cfg.gamma)

    def _setup_data(self) -> None:
        cfg = self.cfg
        if self._dataset is not None:  # given by the caller (see the class docstring)
            self.dataset, self.val_images = self._dataset, []
            self.data_report = DataReport(sources=list(cfg.data), cache="memory")
            return
        min_side = max(cfg.patch_size, cfg.min_size)
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else self.run_dir / "cache"
        records, report = load_records(
            cfg.data, channels=cfg.channels, min_side=min_side, exclude=cfg.exclude, normalize=cfg.normalize,
            percentiles=cfg.percentiles, cache=cfg.cache, cache_dir=cache_dir if cfg.cache == "disk" else None,
        )
        self.data_report: DataReport = report
        log.info("training data: %s", report.summary())  # skipped files were logged by load_records
        (self.run_dir / "data.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        self.dataset = PatchDataset(
            records, patch_size=cfg.patch_size, scale=cfg.scale, channels=cfg.channels,
            degradations=Degradations.from_config(cfg), augment=cfg.augment, seed=cfg.seed,
            length=cfg.steps * cfg.batch_size, normalize=cfg.normalize, percentiles=cfg.percentiles,
        )
        self.val_images = []
        if cfg.val:
            self.val_images, problems = load_validation(
                cfg.val, channels=cfg.channels, scale=cfg.scale, limit=cfg.val_limit, crop=cfg.val_crop,
                normalize=cfg.normalize, percentiles=cfg.percentiles,
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

    # -- logging ----------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.jsonl"

    def _write_log(self, record: dict) -> None:
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _log_event(self, event: str, **extra) -> None:
        self._write_log({"kind": "event", "event": event, "step": self.step, "time": time.time(), **extra})

    def _trim_log(self, step: int) -> None:
        """On resume, drop records written after the checkpoint (they will be written again)."""
        if not self.log_path.exists():
            return
        kept = []
        for line in self.log_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("kind") == "event" or int(rec.get("step", 0)) <= step:
                kept.append(rec)
        self.log_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.history = [r for r in kept if r.get("kind") == "train"]

    def _write_csv(self) -> None:
        rows = self.history + [dict(r, kind="val") for r in self.val_history]
        if not rows:
            return
        keys: list[str] = []
        for r in rows:
            for k, v in r.items():
                if k not in keys and not isinstance(v, (dict, list)):
                    keys.append(k)
        rows = sorted(rows, key=lambda r: (r.get("step", 0), r.get("kind") != "train"))
        with open(self.run_dir / "log.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def plot(self) -> None:
        """loss.png and val.png from the logged history (matplotlib Agg; skipped if missing)."""
        try:
            import matplotlib

            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError:
            log.warning("matplotlib is not installed: no plots (pip install matplotlib)")
            return
        if self.history:
            fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
            steps = [r["step"] for r in self.history]
            keys = ("loss", "l_pix", "l_percep", "l_gram", "l_adv", "l_d") if self.disc is not None else ("loss",)
            for key in keys:
                vals = [r.get(key) for r in self.history]
                if any(v is not None for v in vals):
                    ax.plot(steps, [v if v is not None else np.nan for v in vals], label=key, lw=1)
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            if all((r.get("loss") or 0) > 0 for r in self.history):
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend()
            ax.set_title(f"{self.cfg.name}: training losses")
            fig.tight_layout()
            fig.savefig(self.run_dir / "loss.png")
            plt.close(fig)
        if self.val_history:
            keys = [k for k in ("psnr", "ssim", "fsim") if k in self.val_history[-1]]
            fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), dpi=100, squeeze=False)
            steps = [r["step"] for r in self.val_history]
            for ax, key in zip(axes[0], keys):
                ax.plot(steps, [r[key] for r in self.val_history], "o-", label=self.cfg.name, ms=3)
                if self.bicubic_metrics and key in self.bicubic_metrics:
                    ax.axhline(self.bicubic_metrics[key], color="gray", ls="--", label="bicubic")
                ax.set_xlabel("step")
                ax.set_title(key.upper() + (" (dB)" if key == "psnr" else ""))
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
            fig.suptitle(f"validation: {self.val_convention()}", fontsize=8)
            fig.tight_layout()
            fig.savefig(self.run_dir / "val.png")
            plt.close(fig)

    # -- validation -------------------------------------------------------------------------
    def val_convention(self) -> str:
        what = "Y channel (BT.601)" if self.cfg.channels == 3 else "gray"
        return (f"x{self.cfg.scale}, LR = MATLAB-style bicubic of the mod-{self.cfg.scale} crop, "
                f"{what}, {self.cfg.scale}-px border, data range 255"
                + (f", first {self.cfg.val_limit} images" if self.cfg.val_limit else "")
                + (f", centre crops <= {self.cfg.val_crop} px" if self.cfg.val_crop else ""))

    def _infer(self, net: nn.Module, lr01: np.ndarray) -> np.ndarray:
        """SR of an (h, w, C) 0..1 image, fp32, through the engine (tiling as in the product)."""
        try:
            from ..engine import upscale
        except ImportError:
            upscale = None
        if upscale is not None:
            from ..weights_io import LoadedModel

            lm = LoadedModel.from_module(net, self.cfg.backbone, self.cfg.hparams)
            kwargs = {"device": self.device, "precision": "fp32"}
            if self.cfg.val_tile:
                kwargs["tile"] = self.cfg.val_tile
            img = lm_input = lr01.astype(np.float32)
            if img.shape[2] == 1:
                lm_input = img[..., 0]
            out = upscale(lm_input, lm, **kwargs)
            out = np.asarray(getattr(out, "image", out), dtype=np.float64)
            return out[..., None] if out.ndim == 2 else out
        with torch.no_grad():
            x = torch.from_numpy(lr01.transpose(2, 0, 1)[None].astype(np.float32)).to(self.device)
            y = net(x).float().clamp_(0, 1)
        return y[0].permute(1, 2, 0).cpu().numpy().astype(np.float64)

    @torch.no_grad()
    def validate(self) -> dict:
        """Mean PSNR/SSIM/FSIM over the validation images (EMA model), plus a sample grid."""
        from ..bicubic import bicubic_downscale, bicubic_upscale
        from ..metrics import compare

        cfg = self.cfg
        net = self.ema.module if self.ema is not None else self.model
        was_training = net.training
        net.eval()
        s = cfg.scale
        t0 = time.perf_counter()
        rows, bic_rows = [], []
        first = None
        try:
            for k, v in enumerate(self.val_images):
                levels = 255.0 if v.bits == 8 else 65535.0
                lr = bicubic_downscale(v.hr, s, channel_axis=-1)
                lr = np.clip(np.floor(lr * (levels / 255.0) + 0.5), 0, levels) * (255.0 / levels)  # quantise
                sr = self._infer(net, lr / 255.0) * 255.0
                sr = np.clip(sr, 0, 255)
                if v.bits == 8:
                    sr = np.floor(sr + 0.5)
                hr = v.hr
                rows.append(self._metrics(compare, sr, hr))
                if self.bicubic_metrics is None:
                    bic = np.clip(bicubic_upscale(lr, s, channel_axis=-1), 0, 255)
                    if v.bits == 8:
                        bic = np.floor(bic + 0.5)
                    bic_rows.append(self._metrics(compare, bic, hr))
                if k == 0:
                    first = (lr, sr, hr, rows[-1])
        finally:
            if was_training:
                net.train()
        mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
        if bic_rows:
            self.bicubic_metrics = {key: float(np.mean([r[key] for r in bic_rows])) for key in bic_rows[0]}
        rec = {"kind": "val", "step": self.step, **mean, "n": len(rows), "seconds": round(time.perf_counter() - t0, 2)}
        if self.bicubic_metrics:
            rec.update({f"bicubic_{k}": v for k, v in self.bicubic_metrics.items()})
        self.val_history.append(rec)
        self._write_log(rec)
        if first is not None:
            self._sample_grid(*first)
        return rec

    def _metrics(self, compare, sr: np.ndarray, hr: np.ndarray) -> dict:
        y = sr.shape[2] == 3
        a, b = (sr, hr) if y else (sr[..., 0], hr[..., 0])
        m = compare(a, b, data_range=255.0, y_channel=y, border=self.cfg.scale)
        return {k: float(m[k]) for k in ("psnr", "ssim", "fsim") if k in m}

    def _sample_grid(self, lr: np.ndarray, sr: np.ndarray, hr: np.ndarray, m: dict) -> None:
        from PIL import Image, ImageDraw

        from ..bicubic import bicubic_upscale

        s = self.cfg.scale
        h, w = hr.shape[:2]
        side = min(h, w, 192)
        side -= side % s
        y0 = ((h - side) // 2) // s * s
        x0 = ((w - side) // 2) // s * s
        bic = np.clip(bicubic_upscale(lr, s, channel_axis=-1), 0, 255)
        lr_crop = lr[y0 // s:(y0 + side) // s, x0 // s:(x0 + side) // s]
        lr_near = np.repeat(np.repeat(lr_crop, s, axis=0), s, axis=1)
        panels = [lr_near, bic[y0:y0 + side, x0:x0 + side], sr[y0:y0 + side, x0:x0 + side],
                  hr[y0:y0 + side, x0:x0 + side]]
        labels = ["LR (nearest)", "bicubic", f"SR {m.get('psnr', 0):.2f} dB", "HR"]
        gap, head = 4, 14
        c = hr.shape[2]
        canvas = np.full((side + head, 4 * side + 3 * gap, c), 255, np.uint8)
        for i, p in enumerate(panels):
            canvas[head:, i * (side + gap):i * (side + gap) + side] = np.clip(np.floor(p + 0.5), 0, 255).astype(np.uint8)
        img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
        draw = ImageDraw.Draw(img)
        for i, text in enumerate(labels):
            draw.text((i * (side + gap) + 2, 1), text, fill=0)
        out = self.run_dir / "samples"
        out.mkdir(exist_ok=True)
        img.save(out / f"step_{self.step:07d}.png")

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
            "hparams": _plain(dict(self.cfg.hparams)),
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
        state.update(_plain({
            "config": self.cfg.to_dict(),
            "sessions": sessions,
            "val_history": self.val_history,
            "bicubic_metrics": self.bicubic_metrics,
            "val_convention": self.val_convention() if self.val_images else "",
            "data": self.data_report.as_dict(),
            "init_info": self.init_info,
        }))
        return state

    def _session_record(self) -> dict:
        return {"hardware": self.hardware, "start_step": self._session_start,
                "end_step": self.step, "seconds": round(time.perf_counter() - self._t_start, 1)}

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

    # -- steps ------------------------------------------------------------------------------
    def _clip_and_step(self, loss: torch.Tensor, opt, scaler, params, clip: float) -> float | None:
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        gnorm = None
        if clip > 0:
            scaler.unscale_(opt)
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        scaler.step(opt)
        scaler.update()
        return gnorm

    def train_step(self, lr: torch.Tensor, hr: torch.Tensor) -> dict:
        cfg = self.cfg
        lr, hr = self._to_device(lr), self._to_device(hr)
        stats: dict[str, float] = {}
        if self.disc is None:
            with self._autocast():
                sr = self.forward_model(lr)
            loss = self.pixel_loss(sr.float(), hr)
            stats["l_pix"] = float(loss.detach())
        else:
            w = self.gan_w
            self.disc.requires_grad_(False)
            with self._autocast():
                sr = self.forward_model(lr)
            sr32 = sr.float()
            loss = sr32.new_zeros(())
            if w["pixel_weight"] > 0:
                l_pix = self.pixel_loss(sr32, hr)
                loss = loss + w["pixel_weight"] * l_pix
                stats["l_pix"] = float(l_pix.detach())
            if self.percep is not None:
                with self._autocast():
                    l_percep, l_gram = self.percep(sr32, hr)
                if w["percep_weight"] > 0:
                    loss = loss + w["percep_weight"] * l_percep
                    stats["l_percep"] = float(l_percep.detach())
                if cfg.gram_weight > 0:
                    loss = loss + cfg.gram_weight * l_gram
                    stats["l_gram"] = float(l_gram.detach())
            with self._autocast():
                fake = self.disc(sr)
                real = self.disc(hr) if self.adv_loss.kind == "esrgan" else None
            l_adv = self.adv_loss.generator(real, fake)
            loss = loss + w["adv_weight"] * l_adv
            stats["l_adv"] = float(l_adv.detach())
        if not torch.isfinite(loss):
            self.bad_steps += 1
            if self.bad_steps >= 10:
                raise TrainingError(f"loss is not finite for {self.bad_steps} consecutive steps at step {self.step}: "
                                    "training diverged (lower --lr, use --grad-clip, or --precision fp32)")
            log.warning("non-finite loss at step %d: step skipped", self.step)
            self.opt_g.zero_grad(set_to_none=True)
            self.sched_g.step()
            if self.disc is not None:
                self.sched_d.step()
            return {"loss": float("nan"), "skipped": 1.0}
        self.bad_steps = 0
        gnorm = self._clip_and_step(loss, self.opt_g, self.scaler, self.model.parameters(), cfg.grad_clip)
        stats["loss"] = float(loss.detach())
        if gnorm is not None:
            stats["grad_norm"] = gnorm
        stats["lr"] = self.opt_g.param_groups[0]["lr"]
        self.sched_g.step()
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        if self.disc is not None:
            self.disc.requires_grad_(True)
            with self._autocast():
                real = self.disc(hr)
                fake = self.disc(sr.detach())
            l_d = self.adv_loss.discriminator(real, fake)
            if torch.isfinite(l_d):
                self._clip_and_step(l_d, self.opt_d, self.scaler_d, self.disc.parameters(), cfg.grad_clip)
            self.sched_d.step()
            stats["l_d"] = float(l_d.detach())
            stats["d_real"] = float(torch.sigmoid(real.detach().float()).mean())
            stats["d_fake"] = float(torch.sigmoid(fake.detach().float()).mean())
        return stats

    # -- the loop ---------------------------------------------------------------------------
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
        result = TrainResult(self.run_dir, self.step, status, history=self.val_history)
        if status == "completed":
            if self.val_images and (not self.val_history or self.val_history[-1]["step"] != self.step):
                self.validate()
            self.save_checkpoint()
            self._write_csv()
            self.plot()
            from .export import ExportError, export_run

            try:
                exported = export_run(self.run_dir, register=cfg.register, dtype=cfg.export_dtype)
            except ExportError as exc:  # e.g. a different model of that name is installed
                log.warning("%s", exc)
                print(f"warning: {exc}")
                exported = export_run(self.run_dir, register=False, dtype=cfg.export_dtype, overwrite=True)
            result.weights, result.installed = exported.path, exported.installed
            self._log_event("exported", path=str(exported.path),
                            installed=str(exported.installed) if exported.installed else None)
        result.metrics = self.val_history[-1] if self.val_history else {}
        return result

    def _make_loader(self):
        """Batches ``(lr, hr)`` for steps ``self.step .. cfg.steps-1`` (a subclass may make them on the GPU)."""
        cfg = self.cfg
        return make_loader(self.dataset, batch_size=cfg.batch_size, start_step=self.step, steps=cfg.steps,
                           workers=cfg.workers, pin_memory=self.device.type == "cuda")

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
            msg = (f"stopped by signal {self.stop_signal} at step {self.step}; checkpoint {path}; "
                   f"continue with --resume --out {self.run_dir}")
            log.warning(msg)
            print(msg)
        return status


def train(cfg: TrainConfig, *, resume=None, callbacks=None) -> TrainResult:
    """Convenience: build a :class:`Trainer` and run it."""
    return Trainer(cfg, resume=resume, callbacks=callbacks).run()
