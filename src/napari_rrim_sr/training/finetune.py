"""Fine-tune a registered model on the user's own data, within a time budget, scored on held-out data.

What a user with no GPU can do in minutes: start from any registered weights of the right
channel count, train on their own images (unpaired: LR made from them with degradations
chosen from what the data looks like; or paired: registered real LR/HR pairs), and learn
whether the result beats the model they started from, on data it never trained on.

* **Data**: arrays (2D planes, or stacks whose slices are samples) or image files/folders;
  or LR/HR pairs (:mod:`.pairs`: ratio check, sub-pixel registration, residual, overlap crop).
  Intensities go to 0..1 like the trainer's (8-bit: /255; other: 0.1-99.9 percentiles).
* **Held-out split** (:func:`split_heldout`): whole planes when there are several (the last
  ~20 %, after a one-plane gap, so neighbouring slices of a z-series do not leak), else the
  right-hand quarter of a single image (training uses the rest, minus a gap).
* **Degradations** (:func:`choose_degradations`) from measured statistics
  (:func:`measure_statistics`): white noise in flat regions
  (:func:`napari_rrim_sr.registry.choice.measure_condition`) as read noise, the slope of the
  local variance over the local mean as shot noise (photons at full scale = 1 / slope), and
  optional blur. :func:`degradation_preview` shows a synthetic LR patch next to real data.
* **Budget** (:func:`plan_budget`): a few training steps are timed on this machine; the patch
  and batch size are the largest of a ladder that still give enough steps in the budget.
  The trainer's ``max_minutes`` deadline guards against a slower machine later on.
* **Scores**: PSNR/SSIM (0..1 range, ``scale``-px border) on the held-out part for the base
  model, bicubic and the model being trained, periodically (``on_point`` gets each curve
  point) and at the end; ``cancel`` stops early and keeps the best checkpoint so far.
* **Result**: the best weights (by held-out PSNR) are written with the recipe, data
  description and scores in their metadata, registered in the user weights folder, and a
  one-paragraph model card is written beside them. If they do not beat the base model the
  card and the metadata say so (``"beats_base": false``) and callers must not make them the
  default.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_rrim_sr import read_guard
from napari_rrim_sr.errors import InputError, RRIMError, WeightsError
from napari_rrim_sr.training.data import ImageRecord, PatchDataset
from napari_rrim_sr.training.finetune_data import (  # noqa: F401 (re-exported: the data side of a fine-tune)
    BUDGET_LADDER,
    HELDOUT_FRACTION,
    MIN_STEPS,
    NORMALIZATION,
    Budget,
    DataStats,
    HeldOut,
    Planes,
    Split,
    _crops,
    _mean_variance,
    _sr,
    _unit,
    choose_degradations,
    degradation_preview,
    heldout_from_pairs,
    load_planes,
    make_heldout,
    measure_statistics,
    plan_budget,
    score,
    score_bicubic,
    score_model,
    split_heldout,
    synthesize_lr,
    time_steps,
)

log = logging.getLogger(__name__)

# -- the run ------------------------------------------------------------------------------------


@dataclass
class FinetuneSettings:
    """Everything a fine-tune needs; the widget and the CLI fill one of these."""

    data: list[Any] = field(default_factory=list)
    """Arrays (2D / stacks) or image paths (files, folders) for unpaired fine-tuning."""
    pairs: list[tuple[Any, Any]] = field(default_factory=list)
    """(LR, HR) arrays or paths for paired fine-tuning (used instead of ``data`` when given)."""
    init: str = "rrim-x4-gray"
    """Registered weights id or weights file to start from."""
    minutes: float = 5.0
    """Wall-clock budget of the training part."""
    out: str = ""
    """Run folder (weights, card, trainer run directory); required."""
    name: str = ""
    """Id of the new weights (default: INIT-ft-DATE-TIME)."""
    degradations: str = "auto"
    """auto, clean, shot, read or shot+read (unpaired data)."""
    blur: bool = False
    """Also blur the HR before downscaling (unpaired data)."""
    photons: float | None = None
    """Override the measured photon count at full scale (shot noise)."""
    read_sigma: float | None = None
    """Override the measured read-noise σ (0..1 units)."""
    max_steps: int = 0
    """Cap on the number of steps (0 = from the budget; tests)."""
    batch_size: int = 0
    """0 = from the budget."""
    patch_size: int = 0
    """0 = from the budget."""
    lr: float = 1e-4
    evals: int = 8
    """Held-out evaluations during training (plus the one at the end)."""
    heldout_crops: int = 4
    heldout_side: int = 192
    max_residual: float = 0.5
    """Largest registration residual accepted for a pair."""
    compare: list[str] = field(default_factory=list)
    """Other registered weights to score on the held-out part at the end (e.g. rrim-x4-gray-real)."""
    register: bool = True
    overwrite: bool = False
    seed: int = 0
    threads: int = 0
    precision: str = "fp32"
    device: str = "cpu"


@dataclass
class FinetuneResult:
    name: str
    weights: Path | None
    installed: Path | None
    card: Path | None
    scores: dict  #: {"model": {...}, "base": {...}, "bicubic": {...}, other ids...}
    beats_base: bool
    best_step: int
    steps: int
    status: str  #: completed, cancelled
    curve: list[dict]
    budget: Budget
    recipe: dict

    def table(self) -> str:
        rows = [("model", self.name), ("base", self.recipe.get("init", "")), ("bicubic", "")]
        rows += [(k, k) for k in self.scores if k not in ("model", "base", "bicubic")]
        lines = [f"{'':<8} {'weights':<40} {'PSNR dB':>8} {'SSIM':>7}"]
        for key, label in rows:
            m = self.scores.get(key)
            if m:
                tag = key if key in ("model", "base", "bicubic") else "other"
                lines.append(f"{tag:<8} {label[:40]:<40} {m['psnr']:8.3f} {m['ssim']:7.4f}")
        return "\n".join(lines)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "finetuned"


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def _prepare_pairs(settings: FinetuneSettings, scale: int, say: Callable[[str], None]):
    from napari_rrim_sr.training.pairs import register_pair

    loaded = []
    for lr_src, hr_src in settings.pairs:
        lr = load_planes([lr_src], channels=1).planes
        hr = load_planes([hr_src], channels=1).planes
        if len(lr) != len(hr):
            raise InputError(f"the LR and HR of a pair have {len(lr)} and {len(hr)} planes")
        for a, b in zip(lr, hr):
            p = register_pair(a[..., 0], b[..., 0], scale, max_residual=settings.max_residual)
            say(
                f"pair {len(loaded)}: HR shifted by ({p.shift[0]:.2f}, {p.shift[1]:.2f}) px, residual {p.residual:.3f}, "
                f"overlap {p.lr.shape[1]}x{p.lr.shape[0]} LR px"
            )
            loaded.append(p)
    return loaded


def shipped_weight_ids() -> set[str]:
    """Ids of the weights shipped in the package (whether or not they are enabled)."""
    from napari_rrim_sr.registry.core import entry_from_file, shipped_weights_dir

    ids = set()
    folder = shipped_weights_dir()
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        ids.add(path.stem)
        try:
            ids.add(entry_from_file(path, "shipped").id)
        except Exception:  # noqa: BLE001 - a broken shipped file still reserves its file name
            pass
    return ids


@read_guard.guarded  # the data and --init are never replaced by the run's outputs, whoever calls it
def finetune(
    settings: FinetuneSettings,
    *,
    on_point: Callable[[dict], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    cancel=None,
    registry=None,
) -> FinetuneResult:
    """Run a fine-tune (see the module doc). ``on_point(point)`` gets each held-out curve point
    (``step``, ``elapsed_s``, ``psnr``, ``ssim``, ``base_psnr``, ``bicubic_psnr``); ``cancel``
    (a ``threading.Event`` or a callable) stops after the current step, keeping the best so far."""
    import torch

    from napari_rrim_sr.registry.core import get_registry
    from napari_rrim_sr.registry.loading import load_model
    from napari_rrim_sr.training.config import TrainConfig
    from napari_rrim_sr.training.trainer import Trainer

    say = on_status or (lambda msg: log.info("%s", msg))
    if not settings.out:
        raise InputError("fine-tuning needs an output folder (out)")
    try:
        minutes = float(settings.minutes)
    except (TypeError, ValueError):
        minutes = float("nan")
    if not (math.isfinite(minutes) and minutes > 0):  # NaN and inf too: a budget is a finite time
        raise InputError(f"--minutes (the time budget) must be a positive finite number, got {settings.minutes}")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    registry = registry or get_registry()
    base = load_model(settings.init, registry=registry)
    s, ch = base.scale, base.in_channels
    out = Path(settings.out).expanduser()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = _safe_name(settings.name or f"{base.id or Path(str(settings.init)).stem}-ft-{stamp}")
    if settings.register and name in shipped_weight_ids():
        raise InputError(
            f"--name {name}: that is the id of weights shipped with the plugin; registered under it, the "
            "fine-tuned weights would silently replace them for every later run (auto included). "
            "Choose another name"
        )
    from napari_rrim_sr.registry.core import user_weights_dir
    from napari_rrim_sr.safe_write import check_target

    weights_path = out / f"{name}.safetensors"
    check_target(weights_path, overwrite=settings.overwrite)
    if settings.register:
        check_target(user_weights_dir() / f"{name}.safetensors", overwrite=settings.overwrite)

    # -- data, split, degradations, held-out
    paired = bool(settings.pairs)
    t0 = time.perf_counter()
    if paired:
        aligned = _prepare_pairs(settings, s, say)
        pair_arrays = [(a.lr.astype(np.float32)[..., None], a.hr.astype(np.float32)[..., None]) for a in aligned]
        max_patch = min(min(hr.shape[:2]) for _, hr in pair_arrays)
        if len(pair_arrays) >= 2:
            k = max(1, round(HELDOUT_FRACTION * len(pair_arrays)))
            train_pairs, held_pairs = pair_arrays[:-k], pair_arrays[-k:]
            how = f"pairs {len(pair_arrays) - k}..{len(pair_arrays) - 1} of {len(pair_arrays)} held out (real LR)"
        else:
            lr, hr = pair_arrays[0]
            cut = int(lr.shape[1] * 0.75)
            train_pairs, held_pairs = [(lr[:, : cut - 8], hr[:, : (cut - 8) * s])], [(lr[:, cut:], hr[:, cut * s :])]
            how = f"the right {lr.shape[1] - cut} of {lr.shape[1]} LR columns held out (real LR, 8-px gap)"
            max_patch = min(train_pairs[0][1].shape[:2])
        deg, deg_why, stats = None, "real LR/HR pairs (registered by translation)", None
        data_desc = {
            "kind": "paired",
            "pairs": [a.as_dict() for a in aligned],
            "sources": [
                [str(a) if isinstance(a, (str, Path)) else f"array{np.shape(a)}" for a in pr] for pr in settings.pairs
            ],
        }
    else:
        planes = load_planes(settings.data, channels=ch)
        stats = measure_statistics(planes.planes)
        deg, deg_why = choose_degradations(
            stats,
            kind=settings.degradations,
            blur=settings.blur,
            photons=settings.photons,
            read_sigma=settings.read_sigma,
        )
        split = split_heldout(planes.planes, patch_size=min(settings.patch_size or 64, 64), scale=s)
        how = split.how
        max_patch = min(min(p.shape[:2]) for p in split.train)
        data_desc = {
            "kind": "unpaired",
            "sources": planes.sources,
            "description": planes.describe(),
            "train_planes": len(split.train),
            "heldout_planes": len(split.heldout),
            "statistics": stats.as_dict(),
        }
    say(f"data ready in {time.perf_counter() - t0:.1f} s; held-out: {how}; LR: {deg_why}")

    # -- budget
    budget = plan_budget(
        base.module,
        settings.minutes,
        scale=s,
        channels=ch,
        max_patch=max_patch,
        precision=settings.precision,
        max_steps=settings.max_steps,
    )
    if settings.batch_size:
        budget.batch_size = settings.batch_size
    if settings.patch_size:
        budget.patch_size = settings.patch_size
    if budget.patch_size > max_patch:
        raise InputError(f"patch size {budget.patch_size} is larger than the training data ({max_patch} px)")
    say(
        f"budget {settings.minutes:g} min: {budget.steps} steps of {budget.batch_size} x {budget.patch_size} px "
        f"({budget.seconds_per_step:.2f} s/step measured)"
    )

    if paired:
        from napari_rrim_sr.training.pairs import PairedDataset

        held = heldout_from_pairs(held_pairs, s, crops=settings.heldout_crops, side=settings.heldout_side, how=how)
        dataset = PairedDataset(train_pairs, patch_size=budget.patch_size, scale=s, channels=ch, seed=settings.seed)
    else:
        held = make_heldout(
            split.heldout, deg, s, crops=settings.heldout_crops, side=settings.heldout_side, bits=planes.bits, how=how
        )
        records = []
        for i, p in enumerate(split.train):
            arr = np.rint(np.clip(p, 0, 1) * 65535.0).astype(np.uint16)[None]
            records.append(ImageRecord(f"plane{i}", tuple(arr.shape), 16, arr))
        dataset = PatchDataset(
            records, patch_size=budget.patch_size, scale=s, channels=ch, degradations=deg, seed=settings.seed
        )
        dataset.deg.quantize = True

    base_scores = score_model(base.module, held, s, ch)
    bic_scores = score_bicubic(held, s)
    say(f"held-out before: base {base_scores['psnr']:.3f} dB, bicubic {bic_scores['psnr']:.3f} dB")
    curve: list[dict] = []

    def point(step: int, m: dict, elapsed: float) -> dict:
        p = {
            "step": step,
            "elapsed_s": round(elapsed, 1),
            "psnr": m["psnr"],
            "ssim": m["ssim"],
            "base_psnr": base_scores["psnr"],
            "base_ssim": base_scores["ssim"],
            "bicubic_psnr": bic_scores["psnr"],
        }
        curve.append(p)
        if on_point is not None:
            on_point(dict(p))
        return p

    point(0, base_scores, 0.0)

    # -- train
    eval_every = max(1, budget.steps // max(1, settings.evals))
    warmup = min(50, budget.steps // 10)
    cfg = TrainConfig(
        name=name,
        out=str(out / "run"),
        description="",
        seed=settings.seed,
        data=[str(x) for x in data_desc["sources"]],
        init=str(base.path or settings.init),
        backbone=base.backbone,
        steps=budget.steps,
        batch_size=budget.batch_size,
        patch_size=budget.patch_size,
        lr=settings.lr,
        warmup=warmup,
        ema=0.995,
        schedule="cosine",
        device=settings.device,
        precision=settings.precision,
        threads=settings.threads,
        val_every=0,
        ckpt_every=0,
        keep_ckpts=0,
        log_every=max(1, eval_every),
        progress=False,
        register=False,
        max_minutes=settings.minutes,
    )
    if deg is not None:
        cfg.blur_sigma, cfg.blur_prob = list(deg.blur_sigma), deg.blur_prob
        cfg.noise_sigma, cfg.poisson_peak = list(deg.noise_sigma), list(deg.poisson_peak)
    best = {"psnr": base_scores["psnr"], "ssim": base_scores["ssim"], "step": 0, "state": None}
    state = {"cancelled": False, "eval_s": 0.0, "eval_every": eval_every, "replans": []}
    # without a step cap the loader is made for up to twice the planned steps, and the plan is
    # fitted to the real speed at 10 % and 50 % of the run (replan); the deadline stays the guard
    loader_steps = budget.steps if settings.max_steps else 2 * budget.steps
    replan_at = max(5, budget.steps // 10)
    cfg.steps = loader_steps

    def net_of(tr):
        return tr.ema.module if tr.ema is not None else tr.model

    def evaluate(tr) -> None:
        te = time.perf_counter()
        m = score_model(net_of(tr), held, s, ch)
        state["eval_s"] += time.perf_counter() - te
        point(tr.step, m, tr.elapsed())
        if m["psnr"] > best["psnr"] or best["state"] is None:
            best.update(
                psnr=m["psnr"],
                ssim=m["ssim"],
                step=tr.step,
                state={k: v.detach().cpu().clone() for k, v in net_of(tr).state_dict().items()},
            )

    def replan(tr) -> None:
        """Fit the remaining steps to the remaining time at the speed seen so far (evaluations
        included): the probe ran before training, on a machine whose load may have changed."""
        rate = tr.elapsed() / tr.step
        left = 60.0 * settings.minutes - tr.elapsed() - 2.0 * state["eval_s"] / max(1, len(curve) - 1)
        total = min(loader_steps, max(tr.step + 1, tr.step + int(left / rate)))
        state["replans"].append({"at_step": tr.step, "s_per_step": round(rate, 3), "steps": total})
        tr.set_total_steps(total)
        state["eval_every"] = max(1, total // max(1, settings.evals))
        say(f"step {tr.step}: {rate:.2f} s/step so far, {total} steps fit the budget")

    def callback(tr, stats) -> None:
        if _is_cancelled(cancel):
            state["cancelled"] = True
            tr.cfg.steps = tr.step  # the trainer finishes at once (as on its deadline)
        elif (
            not settings.max_steps
            and tr.step < tr.cfg.steps
            and (
                (not state["replans"] and tr.step >= replan_at)
                or (len(state["replans"]) == 1 and tr.step >= tr.cfg.steps // 2)
            )
        ):
            replan(tr)
        if tr.step % state["eval_every"] == 0 or tr.step >= tr.cfg.steps:
            evaluate(tr)

    trainer = Trainer(cfg, callbacks=[callback], registry=registry, dataset=dataset)
    say(f"training {budget.steps} steps on {trainer.device} ({trainer.precision})")
    tr_result = trainer.run()
    if not curve or curve[-1]["step"] != trainer.step:
        evaluate(trainer)
    status = "cancelled" if state["cancelled"] else tr_result.status

    # -- final scores (the best checkpoint)
    model_scores = {"psnr": best["psnr"], "ssim": best["ssim"]}
    beats = best["step"] > 0 and best["psnr"] > base_scores["psnr"]
    if best["step"] == 0:  # never better than the base: keep the last state, flagged
        best["state"] = {k: v.detach().cpu().clone() for k, v in net_of(trainer).state_dict().items()}
        best["step"] = trainer.step
        model_scores = {k: curve[-1][k] for k in ("psnr", "ssim")}
    scores = {"model": model_scores, "base": base_scores, "bicubic": bic_scores}
    for other in settings.compare:
        try:
            om = load_model(other, registry=registry)
        except RRIMError as exc:  # a missing comparison model is reported, not fatal
            say(f"cannot score {other}: {exc}")
            continue
        if om.scale != s or om.in_channels != ch:
            say(f"{other} is not an x{s} {ch}-channel model: not scored")
            continue
        scores[other] = score_model(om.module, held, s, ch)

    recipe = {
        "init": str(settings.init),
        "init_id": base.id,
        "init_sha256": base.sha256,
        "paired": paired,
        "degradations": deg.as_dict() if deg is not None else None,
        "degradations_why": deg_why,
        "minutes": settings.minutes,
        "steps_planned": budget.steps,
        "steps_done": trainer.step,
        "best_step": best["step"],
        "batch_size": budget.batch_size,
        "patch_size": budget.patch_size,
        "lr": settings.lr,
        "schedule": "cosine",
        "warmup": warmup,
        "ema": cfg.ema,
        "loss": "l1",
        "seconds_per_step": round(budget.seconds_per_step, 4),
        "budget_probe": budget.measured,
        "eval_seconds": round(state["eval_s"], 1),
        "replans": state["replans"],
        "status": status,
        "hardware": trainer.hardware,
    }
    heldout_desc = {
        "how": held.how,
        "crops": len(held.hr),
        "pixels": held.pixels,
        "lr": "real LR" if paired else "synthetic LR (the training degradations, fixed seed)",
        "metric": f"PSNR/SSIM on 0..1 data, {s}-px border",
    }
    result = FinetuneResult(
        name, None, None, None, scores, beats, best["step"], trainer.step, status, curve, budget, recipe
    )
    _write_outputs(result, best["state"], base, data_desc, heldout_desc, out, settings, registry)
    say(
        ("beats" if beats else "does NOT beat") + f" the base model on held-out data: {model_scores['psnr']:.3f} vs "
        f"{base_scores['psnr']:.3f} dB"
    )
    return result


def model_card(result: FinetuneResult, data_desc: dict, heldout_desc: dict) -> str:
    """One paragraph of Markdown: what it is, on what, how, how well, and whether to use it."""
    sc, r = result.scores, result.recipe
    m, b, c = sc["model"], sc["base"], sc["bicubic"]
    data = data_desc.get("description") or f"{len(data_desc.get('pairs', []))} registered LR/HR pair(s)"
    if "train_planes" in data_desc:
        data = f"{data_desc['train_planes']} training planes of {data}"
    others = "".join(f", {k} {v['psnr']:.2f} dB" for k, v in sc.items() if k not in ("model", "base", "bicubic"))
    verdict = (
        "It beats its base model on the held-out data."
        if result.beats_base
        else "**It does not beat its base model on the held-out data: keep using the base model** (this file is "
        "registered but is not recommended as a default)."
    )
    return (
        f"# {result.name}\n\n"
        f"`{result.name}` is `{r.get('init_id') or r.get('init')}` fine-tuned on {data} "
        f"({'paired real LR/HR' if r.get('paired') else 'unpaired: ' + str(r.get('degradations_why'))}), "
        f"for {result.steps} steps of {r['batch_size']} × {r['patch_size']} px patches "
        f"(L1, Adam lr {r['lr']:g}, cosine, EMA {r['ema']}; best held-out step {result.best_step}; "
        f"budget {r['minutes']:g} min on {r.get('hardware', {}).get('cpu', 'this machine')}, {result.status}). "
        f"On held-out data never trained on ({heldout_desc['how']}; {heldout_desc['lr']}; {heldout_desc['metric']}) "
        f"it scores {m['psnr']:.2f} dB / SSIM {m['ssim']:.4f}, against {b['psnr']:.2f} dB / {b['ssim']:.4f} for "
        f"the base model and {c['psnr']:.2f} dB / {c['ssim']:.4f} for bicubic{others}. {verdict} "
        f"Use it only on data like its training data, scaled the same way ({NORMALIZATION}).\n"
    )


def _write_outputs(
    result: FinetuneResult, state_dict, base, data_desc, heldout_desc, out: Path, settings: FinetuneSettings, registry
) -> None:
    from napari_rrim_sr.jsonable import jsonable
    from napari_rrim_sr.registry.core import user_weights_dir
    from napari_rrim_sr.registry.loading import save_weights
    from napari_rrim_sr.safe_write import atomic_write

    metrics = {
        **result.scores["model"],
        "base": result.scores["base"],
        "bicubic": result.scores["bicubic"],
        "others": {k: v for k, v in result.scores.items() if k not in ("model", "base", "bicubic")},
        "heldout": heldout_desc,
        "curve": result.curve,
    }
    desc = (
        f"{result.recipe.get('init_id') or settings.init} fine-tuned on "
        f"{data_desc.get('description') or 'LR/HR pairs'}" + ("" if result.beats_base else " (does not beat its base)")
    )
    extra = jsonable(
        {
            "finetune": {
                "data": data_desc,
                "heldout": heldout_desc,
                "scores": result.scores,
                "beats_base": result.beats_base,
                "status": result.status,
            },
            "beats_base": result.beats_base,
            "recommended": result.beats_base,
        }
    )

    def write(tmp: Path) -> None:
        save_weights(
            tmp,
            state_dict,
            backbone=base.backbone,
            hparams=base.hparams,
            name=result.name,
            description=desc,
            recipe=jsonable(result.recipe),
            metrics=jsonable(metrics),
            extra=extra,
            overwrite=True,
            normalization=NORMALIZATION,
        )

    card = model_card(result, data_desc, heldout_desc)
    result.weights = atomic_write(out / f"{result.name}.safetensors", write, overwrite=settings.overwrite)
    result.card = atomic_write(out / f"{result.name}.md", card, overwrite=settings.overwrite)
    if settings.register:
        folder = user_weights_dir(create=True)
        src = result.weights
        result.installed = atomic_write(
            folder / src.name, src.read_bytes(), overwrite=settings.overwrite, protect=[src]
        )
        atomic_write(folder / f"{result.name}.md", card, overwrite=settings.overwrite)
        registry.weights(refresh=True)
        if registry.find_weights(result.name) is None:  # pragma: no cover - the registry lists every file
            raise WeightsError(result.installed, "was written but the registry does not list it")
