"""Export a training run to ``.safetensors`` (full metadata) and register it; network interpolation.

``export_run(RUN_DIR)`` reads the run's last checkpoint (``weights_only=True``), takes the EMA
generator (or the raw one), and writes ``RUN_DIR/NAME.safetensors`` with
:func:`napari_rrim_sr.registry.loading.save_weights`: backbone, hparams, the resolved config as the
recipe, the validation metrics with their evaluation convention and the bicubic baseline, and
under ``training``: steps, wall time, hardware of every session, data description, the
``--init`` weights. With ``register=True`` the file is copied into the user weights folder
(:func:`napari_rrim_sr.registry.loading.install_weights`) so napari and the CLI list it at once.

``interpolate(A, B, alpha)`` is ESRGAN's network interpolation
``theta = (1 - alpha) * theta_A + alpha * theta_B`` of two weights of the same backbone and
hyper-parameters (typically A = PSNR model, B = GAN model of the same run lineage);
``lerp_weights(A, B, alpha)`` is the same in memory, for callers that write their own metadata.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_rrim_sr.errors import RRIMError, WeightsError

#: at most this many skipped-file entries are copied into the weights' metadata
MAX_SKIPPED_IN_METADATA = 50


class ExportError(RRIMError):
    """A run cannot be exported, or two weights cannot be interpolated."""


@dataclass
class ExportResult:
    path: Path
    installed: Path | None
    metadata: dict


def _describe(cfg: dict, step: int, data: dict) -> str:
    color = "gray (1 channel)" if int(cfg.get("channels", 3)) == 1 else "RGB"
    stage = "GAN-stage (perceptual + adversarial)" if cfg.get("stage") == "gan" else "PSNR-oriented (pixel loss)"
    folders = ", ".join(Path(s).name or str(s) for s in data.get("sources", cfg.get("data", [])))
    return (
        f"{cfg.get('backbone')} x{cfg.get('scale')} {color}, {stage}, {step} steps of "
        f"{cfg.get('batch_size')}x{cfg.get('patch_size')}px patches on {data.get('images_used', '?')} "
        f"images ({folders})"
    )


def export_run(
    run_dir,
    *,
    name: str | None = None,
    checkpoint=None,
    use_ema: bool = True,
    dtype: str | None = "fp32",
    register: bool = True,
    description: str | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write ``RUN_DIR/NAME.safetensors`` from the run's checkpoint and optionally register it."""
    from napari_rrim_sr.registry.core import user_weights_dir
    from napari_rrim_sr.registry.loading import install_weights, read_metadata
    from napari_rrim_sr.training.checkpoint import find_checkpoint, load_checkpoint

    run_dir = Path(run_dir)
    ckpt_path = Path(checkpoint) if checkpoint else find_checkpoint(run_dir)
    if ckpt_path is None:
        raise ExportError(f"no checkpoint in {run_dir / 'checkpoints'} (is {run_dir} a training run directory?)")
    ckpt = load_checkpoint(ckpt_path)
    cfg = dict(ckpt["config"])
    name = name or cfg.get("name") or run_dir.name
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ExportError(f"invalid weights name {name!r}")
    ema_used = bool(use_ema and ckpt.get("ema") is not None)
    sd = ckpt["ema"] if ema_used else ckpt["model"]
    step = int(ckpt["step"])
    data = dict(ckpt.get("data") or {})
    if len(data.get("skipped", [])) > MAX_SKIPPED_IN_METADATA:
        n = len(data["skipped"])
        data["skipped"] = data["skipped"][:MAX_SKIPPED_IN_METADATA] + [{"path": "...", "reason": f"{n} in total"}]
    val = [r for r in ckpt.get("val_history", []) if r.get("step") == step] or ckpt.get("val_history", [])[-1:]
    metrics: dict[str, Any] = {}
    if val:
        last = val[-1]
        metrics = {k: last[k] for k in ("psnr", "ssim", "fsim") if k in last}
        metrics.update(
            {
                "step": last.get("step"),
                "images": last.get("n"),
                "val_set": cfg.get("val"),
                "convention": ckpt.get("val_convention", ""),
                "model": "EMA" if ema_used else "raw",
            }
        )
        if ckpt.get("bicubic_metrics"):
            metrics["bicubic"] = dict(ckpt["bicubic_metrics"])
    sessions = list(ckpt.get("sessions") or [])
    wall = float(ckpt.get("wall_time", 0.0))
    training = {
        "run_id": ckpt.get("run_id", ""),
        "stage": cfg.get("stage"),
        "steps": step,
        "wall_time_s": round(wall, 1),
        "wall_time": str(_dt.timedelta(seconds=round(wall))),
        "hardware": sessions[-1]["hardware"] if sessions else {},
        "sessions": sessions,
        "data": data,
        "init": ckpt.get("init_info") or {},
        "ema": ema_used,
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    hparams = dict(ckpt.get("hparams") or cfg.get("hparams") or {})
    desc = description or cfg.get("description") or _describe(cfg, step, data)
    out = run_dir / f"{name}.safetensors"
    if out.exists() and not overwrite:
        old = read_metadata(out)
        same_run = (old.get("training") or {}).get("run_id") == training["run_id"] and training["run_id"]
        if not same_run:
            raise ExportError(f"{out} exists and comes from another run; pass --overwrite or another --name")
    _save(
        out,
        sd,
        protect=[ckpt_path],
        overwrite=True,
        backbone=str(ckpt.get("backbone") or cfg.get("backbone")),
        hparams=hparams,
        name=name,
        description=desc,
        recipe=cfg,
        metrics=metrics,
        dtype=dtype,
        extra={"training": training},
    )
    installed = None
    if register:
        dest = user_weights_dir() / f"{name}.safetensors"
        replace_ok = overwrite
        if dest.exists() and not overwrite:
            try:
                prev = read_metadata(dest)
            except WeightsError:
                prev = {}
            replace_ok = bool(training["run_id"]) and (prev.get("training") or {}).get("run_id") == training["run_id"]
        try:
            installed = install_weights(out, overwrite=replace_ok)
        except WeightsError as exc:
            raise ExportError(
                f"exported {out}, but cannot register it: {exc.problem} ({exc.path}); "
                "export again with another --name, or --overwrite"
            ) from None
    return ExportResult(out, installed, read_metadata(out))


def _save(out: Path, state_dict, *, protect: list, overwrite: bool, **kw) -> Path:
    """``save_weights`` through the project's one writer: atomic, umask permissions, and never
    over a file this command reads (the checkpoint, the interpolated inputs), even with overwrite."""
    from napari_rrim_sr.registry.loading import save_weights
    from napari_rrim_sr.safe_write import atomic_write

    return atomic_write(
        out, lambda tmp: save_weights(tmp, state_dict, overwrite=True, **kw), overwrite=overwrite, protect=protect
    )


# -- network interpolation --------------------------------------------------------------------


def _resolve_weights(source) -> Path:
    p = Path(str(source)).expanduser()
    if p.exists():
        return p
    from napari_rrim_sr.registry.core import get_registry

    try:
        return get_registry().find_weights(str(source)).path
    except RRIMError as exc:
        raise ExportError(f"{source}: not a file and not a registered weights id ({exc})") from None


@dataclass
class Interpolated:
    """ESRGAN network interpolation held in memory: the tensors and where they came from."""

    state_dict: dict
    backbone: str
    hparams: dict
    record: dict  #: formula, alpha and the two inputs' path / name / sha256
    meta_a: dict
    meta_b: dict


def lerp_weights(a, b, alpha: float) -> Interpolated:
    """``(1 - alpha) * A + alpha * B`` of two weights (ids or files), in memory; refuses different
    backbones, hyper-parameters, tensor names or shapes with a message naming the difference."""
    from napari_rrim_sr.registry.interpolation import lerp_state_dicts
    from napari_rrim_sr.registry.loading import detect_backbone, file_sha256, load_state_dict

    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise ExportError(f"alpha must be a number in 0..1, got {alpha!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise ExportError(f"alpha must be in 0..1 (0 = A, 1 = B), got {alpha}")
    pa, pb = _resolve_weights(a), _resolve_weights(b)
    sda, ma = load_state_dict(pa)
    sdb, mb = load_state_dict(pb)

    def ident(sd, meta, path):
        if meta.get("backbone"):
            return str(meta["backbone"]), dict(meta.get("hparams") or {})
        found = detect_backbone(sd)
        if found is None:
            raise ExportError(f"{path}: unknown architecture (no metadata, no registered backbone recognises it)")
        return found

    bba, hpa = ident(sda, ma, pa)
    bbb, hpb = ident(sdb, mb, pb)
    if bba != bbb:
        raise ExportError(f"cannot interpolate different backbones: {pa.name} is {bba!r}, {pb.name} is {bbb!r}")
    diff = {
        k: (hpa.get(k), hpb.get(k)) for k in set(hpa) | set(hpb) if k in hpa and k in hpb and hpa.get(k) != hpb.get(k)
    }
    if diff:
        text = ", ".join(f"{k}: {va!r} vs {vb!r}" for k, (va, vb) in sorted(diff.items()))
        raise ExportError(f"cannot interpolate {bba} models with different hyper-parameters ({text})")
    only_a, only_b = sorted(set(sda) - set(sdb)), sorted(set(sdb) - set(sda))
    if only_a or only_b:
        raise ExportError(f"cannot interpolate: tensor names differ (only in A: {only_a[:3]}, only in B: {only_b[:3]})")
    shapes = [f"{k} {tuple(sda[k].shape)} vs {tuple(sdb[k].shape)}" for k in sda if sda[k].shape != sdb[k].shape]
    if shapes:
        raise ExportError(f"cannot interpolate: {len(shapes)} tensor shapes differ (e.g. {'; '.join(shapes[:2])})")
    sd = lerp_state_dicts(sda, sdb, alpha)  # the one interpolation (also the widget's slider)
    record = {
        "formula": "(1 - alpha) * A + alpha * B (ESRGAN network interpolation)",
        "alpha": alpha,
        "a": {"path": str(pa), "name": ma.get("name", pa.stem), "sha256": file_sha256(pa)},
        "b": {"path": str(pb), "name": mb.get("name", pb.stem), "sha256": file_sha256(pb)},
    }
    return Interpolated(sd, bba, dict(hpa or hpb), record, ma, mb)


def interpolate(
    a,
    b,
    alpha: float,
    out,
    *,
    name: str | None = None,
    register: bool = False,
    overwrite: bool = False,
    dtype: str | None = None,
) -> ExportResult:
    """Write :func:`lerp_weights` of A and B to ``out`` (``.safetensors``)."""
    from napari_rrim_sr.registry.loading import install_weights, read_metadata
    from napari_rrim_sr.safe_write import check_target

    out = Path(out)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    # before loading anything: A and B are never replaced (same path, symlink, hard link)
    check_target(out, overwrite=overwrite, protect=[_resolve_weights(a), _resolve_weights(b)])
    lw = lerp_weights(a, b, alpha)
    ma, mb, pa, pb = lw.meta_a, lw.meta_b, Path(lw.record["a"]["path"]), Path(lw.record["b"]["path"])
    name = name or out.stem
    recipe = {"interpolation": lw.record, "a_recipe": ma.get("recipe", {}), "b_recipe": mb.get("recipe", {})}
    desc = (
        f"network interpolation {1 - lw.record['alpha']:g} x {ma.get('name', pa.stem)} + "
        f"{lw.record['alpha']:g} x {mb.get('name', pb.stem)} ({lw.backbone} x{lw.hparams.get('scale', '?')})"
    )
    _save(
        out,
        lw.state_dict,
        protect=[pa, pb],
        overwrite=overwrite,
        backbone=lw.backbone,
        hparams=lw.hparams,
        name=name,
        description=desc,
        recipe=recipe,
        metrics={},
        dtype=dtype,
    )
    installed = install_weights(out, overwrite=overwrite) if register else None
    return ExportResult(out, installed, read_metadata(out))
