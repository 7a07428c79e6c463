"""``python -m napari_rrim_sr.training``: train, export, interpolate, bench.

::

    python -m napari_rrim_sr.training train --data DIR [DIR...] --val DIR --steps N ...
    python -m napari_rrim_sr.training --config training/recipes/rrim-x4-rgb-psnr.toml   # "train" implied
    python -m napari_rrim_sr.training train --resume --out runs/NAME                     # continue a run
    python -m napari_rrim_sr.training export RUN_DIR [--name NAME]
    python -m napari_rrim_sr.training interpolate A B --alpha 0.8 -o OUT.safetensors
    python -m napari_rrim_sr.training bench [--data DIR]
    python -m napari_rrim_sr.training finetune --data PATH... --init WEIGHTS --minutes N --out DIR

Every key of the TOML config is also a ``--flag`` (``batch_size`` -> ``--batch-size``); flags
override the file. Dict keys are given repeatedly: ``--hparam num_feat=32``,
``--d-hparam num_feat=32``, ``--vgg-layer conv5_3=1.0``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from napari_rrim_sr import read_guard
from napari_rrim_sr.engine.devices import COMPUTE_PRECISIONS, PRECISIONS, STORE_DTYPES
from napari_rrim_sr.errors import RRIMError
from napari_rrim_sr.training.config import ConfigError, TrainConfig, field_help, load_toml, parse_scalar

SUBCOMMANDS = ("train", "export", "interpolate", "bench", "finetune")

#: dict-typed config keys and the repeatable flag that fills each
DICT_FLAGS = {"hparams": "--hparam", "d_hparams": "--d-hparam", "vgg_layers": "--vgg-layer"}
#: list keys that take exactly two values (ranges)
PAIR_KEYS = {"blur_sigma", "noise_sigma", "poisson_peak", "jpeg_quality", "betas", "percentiles"}
CHOICES = {
    "stage": ("psnr", "gan"),
    "schedule": ("cosine", "step", "constant"),
    "pixel_loss": ("l1", "mse", "charbonnier"),
    "gan_type": ("srgan", "esrgan"),
    "vgg_arch": ("auto", "vgg16", "vgg19"),
    "vgg_input": ("auto", "bgr-caffe", "rgb-imagenet", "rgb-01"),
    "percep_criterion": ("l1", "mse"),
    "normalize": ("auto", "dtype", "percentile", "minmax"),
    "cache": ("memory", "disk", "none"),
    "precision": PRECISIONS,
    "channels_last": ("auto", "on", "off"),
    "export_dtype": STORE_DTYPES,
}


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    if not k.strip():
        raise argparse.ArgumentTypeError(f"empty key in {text!r}")
    return k.strip(), parse_scalar(v)


def _layer_weight(text: str) -> tuple[str, float]:
    if "=" not in text:
        return text.strip(), 1.0
    k, v = text.split("=", 1)
    try:
        return k.strip(), float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAYER=WEIGHT with a number, got {text!r}") from None


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (default: not given, so the config file's value stays)."""
    helps = field_help()
    groups = {
        "run": p.add_argument_group("run"),
        "data": p.add_argument_group("data and degradations"),
        "model": p.add_argument_group("model and optimisation"),
        "gan": p.add_argument_group("GAN stage"),
        "hw": p.add_argument_group("hardware and bookkeeping"),
    }
    order = [f.name for f in dataclasses.fields(TrainConfig)]

    def group_of(name: str) -> argparse._ArgumentGroup:
        i = order.index(name)
        if i < order.index("data"):
            return groups["run"]
        if i < order.index("backbone"):
            return groups["data"]
        if i < order.index("gan_type"):
            return groups["model"]
        if i < order.index("blur_sigma"):
            return groups["gan"]
        if i < order.index("device"):
            return groups["data"]
        return groups["hw"]

    for f in dataclasses.fields(TrainConfig):
        g = group_of(f.name)
        kind = str(f.type)
        h = helps.get(f.name, "").replace("%", "%%")
        flag = "--" + f.name.replace("_", "-")
        common: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if f.name in DICT_FLAGS:
            if f.name == "vgg_layers":
                g.add_argument(
                    DICT_FLAGS[f.name],
                    action="append",
                    type=_layer_weight,
                    metavar="LAYER[=W]",
                    help=h + " Repeatable.",
                    **common,
                )
            else:
                g.add_argument(
                    DICT_FLAGS[f.name],
                    action="append",
                    type=_key_value,
                    metavar="KEY=VALUE",
                    help=h + " Repeatable.",
                    **common,
                )
            continue
        if kind == "bool":
            g.add_argument(flag, action=argparse.BooleanOptionalAction, help=h, **common)
        elif kind.startswith("list"):
            typ = float if "float" in kind else int if "int" in kind else str
            nargs = 2 if f.name in PAIR_KEYS else "+"
            metavar = ("LOW", "HIGH") if f.name in PAIR_KEYS else None
            if f.name == "betas":
                metavar = ("B1", "B2")
            if f.name in ("data",):
                metavar = "PATH"
            g.add_argument(flag, nargs=nargs, type=typ, metavar=metavar, help=h, **common)
        elif kind == "int":
            g.add_argument(flag, type=int, metavar="N", help=h, **common)
        elif kind.startswith("float"):
            g.add_argument(flag, type=float, metavar="X", help=h, **common)
        else:
            choices = CHOICES.get(f.name)
            g.add_argument(
                flag, choices=choices, metavar=None if choices else f.name.split("_")[-1].upper(), help=h, **common
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m napari_rrim_sr.training",
        description="Train, validate, export and register super-resolution weights for any registered "
        "backbone (PSNR stage, GAN stage). Without a subcommand, 'train' is assumed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("::", 1)[1].split("Every key")[0] if "::" in __doc__ else None,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train (or --resume) a model",
        description="Train a generator. Every config key is also a flag; flags override "
        "--config. The resolved config is saved in the run directory.",
    )
    t.add_argument("--config", metavar="FILE", help="TOML config (e.g. training/recipes/*.toml)")
    t.add_argument(
        "--resume",
        nargs="?",
        const="last",
        metavar="CKPT|auto",
        help="continue the run in --out (its checkpoints/last.pt), a given checkpoint file, or "
        "'auto' (resume if a checkpoint exists, else start)",
    )
    t.add_argument("--print-config", action="store_true", help="print the merged config as TOML and exit")
    t.add_argument(
        "--benchmark",
        action="store_true",
        help="measure training throughput with this config's model, batch and patch size, then exit",
    )
    add_config_flags(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "export",
        help="export a run's weights (.safetensors) and register them",
        description="Write RUN_DIR/NAME.safetensors from the run's last checkpoint (EMA weights) "
        "with full metadata, and copy it into the user weights folder.",
    )
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--name", help="weights id (default: the run's name)")
    e.add_argument("--checkpoint", metavar="CKPT", help="a specific checkpoint (default: checkpoints/last.pt)")
    e.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    e.add_argument("--dtype", choices=STORE_DTYPES, default="fp32", help="stored dtype (default fp32)")
    e.add_argument("--no-register", action="store_true", help="do not copy into the user weights folder")
    e.add_argument("--overwrite", action="store_true", help="replace existing files of that name")
    e.add_argument("--description", help="description stored in the metadata")
    e.set_defaults(func=cmd_export)

    i = sub.add_parser(
        "interpolate",
        help="ESRGAN network interpolation of two weights",
        description="theta = (1 - alpha) * A + alpha * B for two weights of the same backbone and "
        "hyper-parameters (A: PSNR model, B: GAN model).",
    )
    i.add_argument("a", metavar="A", help="weights file or registered id (alpha = 0)")
    i.add_argument("b", metavar="B", help="weights file or registered id (alpha = 1)")
    i.add_argument("--alpha", type=float, required=True, help="weight of B, in 0..1")
    i.add_argument("-o", "--out", required=True, help="output .safetensors")
    i.add_argument("--name", help="weights id (default: output file name)")
    i.add_argument("--register", action="store_true", help="also copy into the user weights folder")
    i.add_argument("--overwrite", action="store_true")
    i.add_argument("--dtype", choices=STORE_DTYPES, default=None, help="stored dtype (default fp32)")
    i.set_defaults(func=cmd_interpolate)

    b = sub.add_parser(
        "bench",
        help="training throughput (HR patches/s), fp32 vs bf16",
        description="Time full training steps (forward, L1, backward, Adam) on random tensors "
        "for each precision; optionally time the data loader on --data.",
    )
    b.add_argument("--backbone", default="rrim")
    b.add_argument("--hparam", action="append", type=_key_value, default=[], metavar="KEY=VALUE")
    b.add_argument("--channels", type=int, default=3, choices=(1, 3))
    b.add_argument("--scale", type=int, default=4)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--patch-size", type=int, default=128, help="HR patch side")
    b.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=COMPUTE_PRECISIONS)
    b.add_argument("--channels-last", choices=("auto", "on", "off", "both"), default="auto")
    b.add_argument("--device", default="auto")
    b.add_argument("--threads", type=int, default=0)
    b.add_argument("--data", nargs="+", metavar="PATH", help="also measure the data loader on these images")
    b.add_argument("--workers", type=int, nargs="+", default=[0], help="loader worker counts to try")
    b.add_argument("--loader-only", action="store_true", help="only measure the data loader")
    b.add_argument(
        "--degrade",
        action="store_true",
        help="loader with degradations (blur sigma 0.2-2, noise sigma 1-10, JPEG quality 50-95)",
    )
    b.add_argument("--json", action="store_true", help="print JSON")
    b.set_defaults(func=cmd_bench)
    for name, (_, text) in TOOLS.items():  # listed here; main() hands their arguments to them
        sub.add_parser(name, help=text, add_help=False)
    add_finetune_parser(sub)
    return parser


#: measurements and the shipped-GAN assembly: ``python -m napari_rrim_sr.training NAME ...`` runs
#: ``main(argv)`` of the module (its own options; NAME --help lists them)
TOOLS = {
    "robust-check": (
        "napari_rrim_sr.training.measure.robust",
        "score RGB (or --gray) models on degraded LR and measure overshoot",
    ),
    "grid-check": ("napari_rrim_sr.training.measure.grid", "measure the 2-/4-px GAN grid and detail on Kodak24"),
    "compare-gray": (
        "napari_rrim_sr.training.measure.gray",
        "gray model vs bicubic and the RGB model on held-out microscopy",
    ),
    "size-speed": ("napari_rrim_sr.training.measure.size_speed", "inference speed of RRIM sizes"),
    "measure-choice": (
        "napari_rrim_sr.training.measure.choice",
        "the automatic model choice: overshoot on native data, Kodak24 clean LR",
    ),
    "measure-means": (
        "napari_rrim_sr.training.measure.means",
        "default upscale of every uint16 microscopy file: mean intensity kept (and bicubic's)",
    ),
    "finetune-report": (
        "napari_rrim_sr.training.measure.finetune_report",
        "docs table of fine-tune runs from their finetune --json files",
    ),
    "ship-gan": (
        "napari_rrim_sr.training.ship_gan",
        "assemble the shipped GAN weights (interpolation + recipe + metrics)",
    ),
}


def run_tool(name: str, argv: list[str]) -> int:
    import importlib

    return int(importlib.import_module(TOOLS[name][0]).main(argv) or 0)


def add_finetune_parser(sub) -> None:
    f = sub.add_parser(
        "finetune",
        help="fine-tune registered weights on your own data within a time budget",
        description="Fine-tune WEIGHTS on images or stacks (unpaired: LR made with degradations "
        "chosen from the data's measured noise) or on registered LR/HR pairs, for a "
        "time budget; score model, base model and bicubic on an automatic held-out "
        "split; register the best weights with a model card.",
    )
    f.add_argument("--data", nargs="+", metavar="PATH", default=[], help="images, stacks or folders (unpaired)")
    f.add_argument(
        "--pairs",
        nargs=2,
        metavar=("LR_DIR", "HR_DIR"),
        help="paired data: files of the same name in the two folders (or two files)",
    )
    f.add_argument("--init", default="rrim-x4-gray", metavar="WEIGHTS", help="weights id or file to start from")
    f.add_argument("--minutes", type=float, required=True, help="training time budget in minutes")
    f.add_argument("--out", required=True, metavar="DIR", help="run folder (weights, model card, training run)")
    f.add_argument("--name", help="id of the new weights (default: INIT-ft-DATE-TIME)")
    f.add_argument("--degradations", default="auto", choices=("auto", "clean", "shot", "read", "shot+read"))
    f.add_argument("--blur", action="store_true", help="also blur the HR before downscaling")
    f.add_argument("--photons", type=float, help="photons at full scale (override the measured shot noise)")
    f.add_argument("--read-sigma", type=float, help="read-noise sigma in 0..1 units (override the measurement)")
    f.add_argument("--max-steps", type=int, default=0, help="cap on the number of steps (0 = from the budget)")
    f.add_argument("--batch-size", type=int, default=0, help="0 = from the budget")
    f.add_argument("--patch-size", type=int, default=0, help="HR patch side; 0 = from the budget")
    f.add_argument("--lr", type=float, default=1e-4)
    f.add_argument("--heldout-crops", type=int, default=4, help="held-out crops scored (default 4)")
    f.add_argument("--heldout-side", type=int, default=192, help="held-out crop side in HR px (default 192)")
    f.add_argument("--max-residual", type=float, default=0.5, help="refuse pairs that register worse than this")
    f.add_argument("--compare", nargs="+", default=[], metavar="WEIGHTS", help="also score these on the held-out part")
    f.add_argument("--no-register", action="store_true", help="do not install into the user weights folder")
    f.add_argument("--overwrite", action="store_true", help="replace weights of that name")
    f.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--json", metavar="FILE", help="also write the result (scores, curve, recipe) as JSON")
    f.set_defaults(func=cmd_finetune)


def _pair_files(lr_src: str, hr_src: str) -> list[tuple[str, str]]:
    from napari_rrim_sr.training.data import find_images

    lr_p, hr_p = Path(lr_src), Path(hr_src)
    if lr_p.is_file() and hr_p.is_file():
        return [(str(lr_p), str(hr_p))]
    lr_files, _ = find_images([lr_p])
    hr_files, _ = find_images([hr_p])
    hr_by = {f.stem: f for f in hr_files}
    pairs = [(str(f), str(hr_by[f.stem])) for f in lr_files if f.stem in hr_by]
    if not pairs:
        raise ConfigError(f"--pairs: no file names in common between {lr_src} and {hr_src}")
    return pairs


def cmd_finetune(ns: argparse.Namespace) -> int:
    from napari_rrim_sr.jsonable import jsonable
    from napari_rrim_sr.training.finetune import FinetuneSettings, finetune

    if not ns.data and not ns.pairs:
        raise ConfigError("finetune needs --data PATH... or --pairs LR_DIR HR_DIR")
    settings = FinetuneSettings(
        data=list(ns.data),
        pairs=_pair_files(*ns.pairs) if ns.pairs else [],
        init=ns.init,
        minutes=ns.minutes,
        out=ns.out,
        name=ns.name or "",
        degradations=ns.degradations,
        blur=ns.blur,
        photons=ns.photons,
        read_sigma=ns.read_sigma,
        max_steps=ns.max_steps,
        batch_size=ns.batch_size,
        patch_size=ns.patch_size,
        lr=ns.lr,
        heldout_crops=ns.heldout_crops,
        heldout_side=ns.heldout_side,
        max_residual=ns.max_residual,
        compare=list(ns.compare),
        register=not ns.no_register,
        overwrite=ns.overwrite,
        threads=ns.threads,
        seed=ns.seed,
    )
    if ns.json:  # refuse a --json onto the data or the --init weights before the run, not after it
        from napari_rrim_sr.engine.upscaler import resolve_model
        from napari_rrim_sr.safe_write import check_target
        from napari_rrim_sr.training.data import find_images

        find_images(ns.data)  # the data files are recorded as read (read_guard)
        resolve_model(ns.init, 1)  # so is the --init weights file
        check_target(ns.json, overwrite=True)

    def point(p: dict) -> None:
        print(
            f"  step {p['step']:>6} ({p['elapsed_s']:>7.1f} s): held-out PSNR {p['psnr']:.3f} dB "
            f"SSIM {p['ssim']:.4f} (base {p['base_psnr']:.3f}, bicubic {p['bicubic_psnr']:.3f})",
            flush=True,
        )

    res = finetune(settings, on_point=point, on_status=lambda m: print(m, flush=True))
    print(f"{res.status} after {res.steps} steps (best held-out step {res.best_step})")
    print("held-out scores:")
    print(res.table())
    print(
        ("the fine-tuned model beats" if res.beats_base else "the fine-tuned model does NOT beat")
        + " its base model on held-out data"
        + ("" if res.beats_base else ": keep using the base model")
    )
    print(f"weights: {res.weights}\nmodel card: {res.card}")
    if res.installed:
        print(f"registered as {res.name!r}: {res.installed}")
    if ns.json:
        from napari_rrim_sr.safe_write import atomic_write

        doc = {
            "name": res.name,
            "status": res.status,
            "steps": res.steps,
            "best_step": res.best_step,
            "beats_base": res.beats_base,
            "scores": res.scores,
            "curve": res.curve,
            "recipe": res.recipe,
            "weights": str(res.weights),
            "installed": str(res.installed) if res.installed else None,
        }
        atomic_write(ns.json, json.dumps(jsonable(doc), indent=2) + "\n", overwrite=True)
    return 0


# -- config merging ---------------------------------------------------------------------------


def _cli_values(ns: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for k, v in vars(ns).items():
        if k not in names:
            continue
        if k in DICT_FLAGS:
            v = dict(v)
        out[k] = v
    return out


def config_from_args(ns: argparse.Namespace) -> tuple[TrainConfig, Any]:
    """Merge defaults < --config < (on --resume) the saved run config < flags. Returns (cfg, resume)."""
    cli = _cli_values(ns)
    base = TrainConfig()
    resume = getattr(ns, "resume", None)
    if ns.config:
        base = TrainConfig.from_dict(load_toml(ns.config))
    elif resume:
        saved = None
        if resume not in ("last", "auto"):
            from napari_rrim_sr.training.checkpoint import load_checkpoint

            ck = Path(resume)
            saved = load_checkpoint(ck)["config"]
            cli.setdefault("out", str(ck.resolve().parent.parent))
        else:
            probe = TrainConfig.from_dict({k: v for k, v in cli.items()})
            cfg_file = probe.run_dir() / "config.toml"
            if cfg_file.is_file():
                saved = load_toml(cfg_file)
            elif resume == "last":
                raise ConfigError(f"--resume: no run in {probe.run_dir()} (give --out RUN_DIR)")
        if saved is not None:
            base = TrainConfig.from_dict(saved)
    merged = dataclasses.replace(base)
    for k, v in cli.items():
        if k in DICT_FLAGS:
            d = dict(getattr(merged, k))
            d.update(v)
            v = d
        merged = TrainConfig.from_dict({k: v}, base=merged)
    return merged, resume


# -- commands ---------------------------------------------------------------------------------


def cmd_train(ns: argparse.Namespace) -> int:
    cfg, resume = config_from_args(ns)
    if ns.print_config:
        print(cfg.to_toml(), end="")
        return 0
    if ns.benchmark:
        return _bench_rows(
            backbone=cfg.backbone or "rrim",
            hparams=cfg.hparams,
            channels=cfg.channels or 3,
            scale=cfg.scale or 4,
            batch_size=cfg.batch_size,
            patch_size=cfg.patch_size,
            precisions=("fp32", "bf16") if cfg.precision == "auto" else (cfg.precision,),
            device=cfg.device,
            threads=cfg.threads,
            as_json=False,
        )
    from napari_rrim_sr.training.trainer import Trainer

    trainer = Trainer(cfg, resume=resume)
    print(f"run directory: {trainer.run_dir}")
    print(
        f"data: {trainer.data_report.summary()}"
        + (f" (listed in {trainer.run_dir / 'data.json'})" if trainer.data_report.skipped else "")
    )
    print(
        f"model: {trainer.cfg.backbone} {trainer.cfg.hparams}; device {trainer.device}, "
        f"precision {trainer.precision}, channels_last {trainer.channels_last}; step {trainer.step}/{cfg.steps}"
    )
    result = trainer.run()
    print(f"{result.status} at step {result.step}")
    if result.metrics:
        m = result.metrics
        bic = f" (bicubic {m['bicubic_psnr']:.3f} dB)" if "bicubic_psnr" in m else ""
        print(
            f"validation: PSNR {m.get('psnr', float('nan')):.3f} dB{bic}, SSIM {m.get('ssim', float('nan')):.4f}, "
            f"FSIM {m.get('fsim', float('nan')):.4f} [{trainer.val_convention()}]"
        )
    if result.weights:
        print(f"weights: {result.weights}")
    if result.installed:
        print(f"registered as {result.weights.stem!r}: {result.installed}")
    if result.status == "completed":
        return 0
    # stopped by a signal (checkpoint written): the shell's convention 128 + N, so SIGINT gives
    # 130 and SIGTERM (a scheduler's kill) 143
    return 128 + int(result.signal or signal.SIGINT)


def cmd_export(ns: argparse.Namespace) -> int:
    from napari_rrim_sr.training.export import export_run

    res = export_run(
        ns.run_dir,
        name=ns.name,
        checkpoint=ns.checkpoint,
        use_ema=not ns.no_ema,
        dtype=ns.dtype,
        register=not ns.no_register,
        description=ns.description,
        overwrite=ns.overwrite,
    )
    print(f"wrote {res.path}")
    m = res.metadata.get("metrics") or {}
    if "psnr" in m:
        print(f"validation at step {m.get('step')}: PSNR {m['psnr']:.3f} dB, SSIM {m.get('ssim', float('nan')):.4f}")
    if res.installed:
        print(f"registered as {res.metadata.get('name')!r}: {res.installed}")
    return 0


def cmd_interpolate(ns: argparse.Namespace) -> int:
    from napari_rrim_sr.training.export import interpolate

    res = interpolate(
        ns.a, ns.b, ns.alpha, ns.out, name=ns.name, register=ns.register, overwrite=ns.overwrite, dtype=ns.dtype
    )
    print(f"wrote {res.path} ((1 - {ns.alpha:g}) * A + {ns.alpha:g} * B)")
    if res.installed:
        print(f"registered: {res.installed}")
    return 0


def _bench_rows(*, as_json: bool, **kwargs) -> int:
    from napari_rrim_sr.training.bench import bench_training

    def show(row):
        if not as_json:
            print(
                f"  {row['precision']:>5} channels_last={str(row['channels_last']):<5} "
                f"{row['s_per_step_median']:.3f} s/step  {row['patches_per_s']:.1f} HR patches/s"
            )

    if not as_json:
        print(
            f"training throughput: {kwargs['backbone']} batch {kwargs['batch_size']} x "
            f"{kwargs['patch_size']}px HR patches (forward + L1 + backward + Adam)"
        )
    rows = bench_training(progress=show, **kwargs)
    for r in rows:
        if "error" in r and not as_json:
            print(f"  {r['precision']}: {r['error']}")
    if as_json:
        print(json.dumps(rows, indent=2))
    return 0


def cmd_bench(ns: argparse.Namespace) -> int:
    out: dict[str, Any] = {}
    if ns.data:
        from napari_rrim_sr.training.bench import bench_loader

        deg = None
        if ns.degrade:
            from napari_rrim_sr.training.data import Degradations

            deg = Degradations(blur_sigma=(0.2, 2.0), noise_sigma=(1.0, 10.0), jpeg_quality=(50, 95))
        res = bench_loader(
            ns.data,
            channels=ns.channels,
            scale=ns.scale,
            batch_size=ns.batch_size,
            patch_size=ns.patch_size,
            workers=ns.workers,
            degradations=deg,
        )
        out["loader"] = res
        if not ns.json:
            print(f"data: {res['data']}")
            for r in res["loader"]:
                print(
                    f"  loader workers={r['workers']}: {r['patches_per_s']:.1f} patches/s "
                    f"({r['patch_size']}px HR + LR, batch {r['batch_size']})"
                )
    if ns.loader_only:
        if ns.json:
            print(json.dumps(out, indent=2))
        return 0
    cl = {"auto": None, "on": [True], "off": [False], "both": [False, True]}[ns.channels_last]
    kwargs = dict(
        backbone=ns.backbone,
        hparams=dict(ns.hparam),
        channels=ns.channels,
        scale=ns.scale,
        batch_size=ns.batch_size,
        patch_size=ns.patch_size,
        steps=ns.steps,
        warmup=ns.warmup,
        precisions=ns.precisions,
        channels_last=cl,
        device=ns.device,
        threads=ns.threads,
    )
    if ns.json:
        from napari_rrim_sr.training.bench import bench_training

        out["training"] = bench_training(**kwargs)
        print(json.dumps(out, indent=2))
        return 0
    return _bench_rows(as_json=False, **kwargs)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if a not in ("-v", "--verbose")), None)
    if first in TOOLS:
        rest = argv[argv.index(first) + 1 :]
        try:
            with read_guard.reading():
                return run_tool(first, rest)
        except RRIMError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except BrokenPipeError:  # `... | head`
            from napari_rrim_sr.cli.main import silence_broken_pipe

            silence_broken_pipe()
            return 0
    if first is not None and first not in SUBCOMMANDS and first not in ("-h", "--help"):
        i = argv.index(first)
        argv.insert(i, "train")  # flags without a subcommand: train
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not ns.verbose:
        logging.getLogger("napari_rrim_sr.training").setLevel(logging.INFO)
    if not getattr(ns, "func", None):
        parser.print_help()
        return 2
    try:
        with read_guard.reading():  # every file the command opens is protected from its writes
            return int(ns.func(ns) or 0)
    except RRIMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader is gone
        from napari_rrim_sr.cli.main import silence_broken_pipe

        silence_broken_pipe()
        return 0
