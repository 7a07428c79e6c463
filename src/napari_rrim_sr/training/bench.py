"""Training throughput: HR patches per second of full optimiser steps, per precision and layout.

A step is what the PSNR stage does: forward, L1 loss, backward, Adam update (EMA excluded),
on random tensors so the data loader is not measured; :func:`bench_loader` measures the loader
separately (decode cache, patch cutting, MATLAB bicubic LR and degradations).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from napari_rrim_sr.engine import devices


def bench_training(
    *,
    backbone: str = "rrim",
    hparams: dict | None = None,
    channels: int = 3,
    scale: int = 4,
    batch_size: int = 16,
    patch_size: int = 128,
    steps: int = 5,
    warmup: int = 2,
    precisions: Sequence[str] = ("fp32", "bf16"),
    channels_last: Sequence[bool] | None = None,
    device: str = "auto",
    threads: int = 0,
    registry=None,
    progress=None,
) -> list[dict[str, Any]]:
    """One row per (precision, layout): seconds per step and HR patches/s."""
    from napari_rrim_sr.registry.core import get_registry

    registry = registry or get_registry()
    if threads:
        torch.set_num_threads(threads)
    dev = devices.resolve_device(device)
    spec = registry.backbone(backbone)
    hp = dict(hparams or {})
    hp.update({"in_channels": channels, "out_channels": channels, "scale": scale})
    hp = spec.resolve_hparams(**hp)
    rows = []
    for precision in precisions:
        try:
            prec = devices.resolve_precision(precision, dev, spec.half_precisions)
        except Exception as exc:
            rows.append({"precision": precision, "error": str(exc)})
            continue
        layouts = channels_last if channels_last is not None else [devices.use_channels_last(dev, prec)]
        for cl in layouts:
            torch.manual_seed(0)
            model = spec.build(**hp).to(dev)
            if cl:
                model.to(memory_format=torch.channels_last)
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.99))
            g = torch.Generator().manual_seed(0)
            p_lr = patch_size // scale
            lr = torch.rand(batch_size, channels, p_lr, p_lr, generator=g).to(dev)
            hr = torch.rand(batch_size, channels, patch_size, patch_size, generator=g).to(dev)
            if cl:
                lr = lr.contiguous(memory_format=torch.channels_last)
                hr = hr.contiguous(memory_format=torch.channels_last)
            loss_fn = torch.nn.L1Loss()

            def step(model=model, opt=opt, lr=lr, hr=hr, loss_fn=loss_fn, prec=prec):
                with devices.autocast(dev, prec):
                    sr = model(lr)
                loss = loss_fn(sr.float(), hr)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return loss

            for _ in range(warmup):
                step()
            devices.sync(dev)
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                step()
                devices.sync(dev)
                times.append(time.perf_counter() - t0)
            times.sort()
            med = times[len(times) // 2]
            total = sum(times)
            row = {
                "backbone": backbone,
                "hparams": {k: hp[k] for k in hp if k not in ("in_channels", "out_channels")},
                "device": str(dev),
                "precision": prec,
                "channels_last": bool(cl),
                "batch_size": batch_size,
                "patch_size": patch_size,
                "threads": torch.get_num_threads(),
                "steps": steps,
                "s_per_step_median": round(med, 4),
                "s_per_step_min": round(times[0], 4),
                "patches_per_s": round(batch_size * steps / total, 2),
                "patches_per_s_median": round(batch_size / med, 2),
            }
            if dev.type == "cuda":
                row["gpu"] = torch.cuda.get_device_name(dev)
                row["max_memory_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20)
                torch.cuda.reset_peak_memory_stats(dev)
            rows.append(row)
            if progress:
                progress(row)
            del model, opt
    return rows


def bench_loader(
    data: Sequence[str],
    *,
    channels: int = 3,
    scale: int = 4,
    batch_size: int = 16,
    patch_size: int = 128,
    workers: Sequence[int] = (0,),
    batches: int = 20,
    degradations=None,
    cache: str = "memory",
) -> dict[str, Any]:
    """Decode time and patches/s of the training data loader (LR made on the fly)."""
    from napari_rrim_sr.training.data import Degradations, PatchDataset, load_records, measure_loader

    records, report = load_records(list(data), channels=channels, min_side=patch_size, cache=cache, cache_dir=None)
    ds = PatchDataset(
        records,
        patch_size=patch_size,
        scale=scale,
        channels=channels,
        degradations=degradations or Degradations(),
        seed=0,
    )
    out = {"data": report.summary(), "decode_seconds": round(report.decode_seconds, 2), "loader": []}
    for w in workers:
        out["loader"].append(measure_loader(ds, batch_size=batch_size, workers=w, batches=batches))
    return out
