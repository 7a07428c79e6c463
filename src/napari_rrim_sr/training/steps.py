"""Per-step training pieces: the LR schedule, the EMA of the weights and the PSNR / GAN step.

The loop (:mod:`.trainer`) calls :func:`train_step` once per batch; what a step does depends on
the stage: the PSNR stage minimises the pixel loss, the GAN stage adds the perceptual, Gram and
adversarial terms and then updates the discriminator.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
from torch import nn

from napari_rrim_sr.training.checkpoint import TrainingError

log = logging.getLogger("napari_rrim_sr.training.trainer")  # the messages users know

__all__ = ["EMA", "LRSchedule", "clip_and_step", "train_step"]


class LRSchedule:
    """LR factor per optimiser step: linear warm-up, then cosine / step / constant.

    A callable object with plain attributes, so ``LambdaLR.state_dict()`` stores it as a dict.
    """

    def __init__(
        self,
        kind: str,
        steps: int,
        warmup: int = 0,
        min_factor: float = 0.0,
        milestones: list[int] | None = None,
        gamma: float = 0.5,
    ):
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


def clip_and_step(loss: torch.Tensor, opt, scaler, params, clip: float) -> float | None:
    """Backward (scaled for fp16), optional gradient-norm clipping, optimiser step; the norm."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    gnorm = None
    if clip > 0:
        scaler.unscale_(opt)
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, clip))
    scaler.step(opt)
    scaler.update()
    return gnorm


def train_step(tr, lr: torch.Tensor, hr: torch.Tensor) -> dict:
    """One step of ``tr`` (a :class:`~.trainer.Trainer`): the generator (pixel loss; in the GAN
    stage plus perceptual, Gram and adversarial terms), then in the GAN stage the discriminator.
    A non-finite loss skips the step (ten in a row: :class:`TrainingError`)."""
    cfg = tr.cfg
    lr, hr = tr._to_device(lr), tr._to_device(hr)
    stats: dict[str, float] = {}
    if tr.disc is None:
        with tr._autocast():
            sr = tr.forward_model(lr)
        loss = tr.pixel_loss(sr.float(), hr)
        stats["l_pix"] = float(loss.detach())
    else:
        w = tr.gan_w
        tr.disc.requires_grad_(False)
        with tr._autocast():
            sr = tr.forward_model(lr)
        sr32 = sr.float()
        loss = sr32.new_zeros(())
        if w["pixel_weight"] > 0:
            l_pix = tr.pixel_loss(sr32, hr)
            loss = loss + w["pixel_weight"] * l_pix
            stats["l_pix"] = float(l_pix.detach())
        if tr.percep is not None:
            with tr._autocast():
                l_percep, l_gram = tr.percep(sr32, hr)
            if w["percep_weight"] > 0:
                loss = loss + w["percep_weight"] * l_percep
                stats["l_percep"] = float(l_percep.detach())
            if cfg.gram_weight > 0:
                loss = loss + cfg.gram_weight * l_gram
                stats["l_gram"] = float(l_gram.detach())
        with tr._autocast():
            fake = tr.disc(sr)
            real = tr.disc(hr) if tr.adv_loss.kind == "esrgan" else None
        l_adv = tr.adv_loss.generator(real, fake)
        loss = loss + w["adv_weight"] * l_adv
        stats["l_adv"] = float(l_adv.detach())
    if not torch.isfinite(loss):
        tr.bad_steps += 1
        if tr.bad_steps >= 10:
            raise TrainingError(
                f"loss is not finite for {tr.bad_steps} consecutive steps at step {tr.step}: "
                "training diverged (lower --lr, use --grad-clip, or --precision fp32)"
            )
        log.warning("non-finite loss at step %d: step skipped", tr.step)
        tr.opt_g.zero_grad(set_to_none=True)
        tr.sched_g.step()
        if tr.disc is not None:
            tr.sched_d.step()
        return {"loss": float("nan"), "skipped": 1.0}
    tr.bad_steps = 0
    gnorm = clip_and_step(loss, tr.opt_g, tr.scaler, tr.model.parameters(), cfg.grad_clip)
    stats["loss"] = float(loss.detach())
    if gnorm is not None:
        stats["grad_norm"] = gnorm
    stats["lr"] = tr.opt_g.param_groups[0]["lr"]
    tr.sched_g.step()
    if tr.ema is not None:
        tr.ema.update(tr.model, tr.step)
    if tr.disc is not None:
        tr.disc.requires_grad_(True)
        with tr._autocast():
            real = tr.disc(hr)
            fake = tr.disc(sr.detach())
        l_d = tr.adv_loss.discriminator(real, fake)
        if torch.isfinite(l_d):
            clip_and_step(l_d, tr.opt_d, tr.scaler_d, tr.disc.parameters(), cfg.grad_clip)
        tr.sched_d.step()
        stats["l_d"] = float(l_d.detach())
        stats["d_real"] = float(torch.sigmoid(real.detach().float()).mean())
        stats["d_fake"] = float(torch.sigmoid(fake.detach().float()).mean())
    return stats
