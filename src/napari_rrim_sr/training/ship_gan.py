"""Assemble the shipped ``rrim-x4-rgb-gan`` file from a PSNR model and its GAN fine-tune.

The shipped GAN model is ESRGAN's network interpolation ``(1 - alpha) * PSNR + alpha * GAN``
(the raw GAN-stage weights draw a faint 2-px grid; alpha 0.5 keeps the texture without it).
This script does what was once done by hand: interpolate, then store the GAN run's recipe, the
interpolation record and the Kodak24 metrics of the result (from ``napari-rrim-sr evaluate
--json``) in the file's metadata, so ``napari-rrim-sr models --json`` shows where it came from.
When the evaluation JSON names the tensors it scored (``provenance.tensors_sha256``, written by
``evaluate --json`` since it records provenance), they must be the tensors shipped here.

    python -m napari_rrim_sr.training interpolate PSNR GAN --alpha 0.5 -o runs/gan-a05.safetensors
    python -m napari_rrim_sr evaluate ../shared/data/val/Kodak24 --model runs/gan-a05.safetensors \
        --json runs/eval_gan.json
    python -m napari_rrim_sr.training ship-gan --psnr PSNR --gan GAN --alpha 0.5 --eval runs/eval_gan.json \
        -o weights/rrim-x4-rgb-gan.safetensors --overwrite
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_rrim_sr.registry.loading import save_weights, tensors_sha256
from napari_rrim_sr.training.export import lerp_weights

DTYPE = "fp16"  # as the other shipped weights


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m napari_rrim_sr.training ship-gan", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--psnr", required=True, help="PSNR model (.safetensors): alpha = 0")
    ap.add_argument("--gan", required=True, help="its GAN-stage export (.safetensors): alpha = 1")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument(
        "--eval", required=True, type=Path, help="`napari-rrim-sr evaluate --json` output for the interpolated model"
    )
    ap.add_argument("-o", "--out", required=True, type=Path)
    ap.add_argument("--psnr-steps", type=int, help="total training steps of the PSNR model, for the description")
    ap.add_argument("--name", default="rrim-x4-rgb-gan")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    lw = lerp_weights(args.psnr, args.gan, args.alpha)
    sd = {k: v.half() if v.is_floating_point() else v for k, v in lw.state_dict.items()}
    ev = json.loads(args.eval.read_text())
    scored = (ev.get("provenance") or {}).get("tensors_sha256")
    if scored and scored != tensors_sha256(sd):
        raise SystemExit(
            f"{args.eval} scored other weights (tensors_sha256 {scored[:12]}...) than "
            f"{1 - args.alpha:g} x {args.psnr} + {args.alpha:g} x {args.gan} in {DTYPE}"
        )
    if not scored:
        print(f"note: {args.eval} does not say which tensors it scored; its metrics are taken as given")

    gan_meta, psnr_meta = lw.meta_b, lw.meta_a
    recipe = dict(gan_meta.get("recipe") or {})
    gan_training = dict(gan_meta.get("training") or {})
    gan_steps = gan_training.get("steps") or recipe.get("steps")
    # The GAN run may have read its --init from a copy outside git (runs/...). When that copy has
    # the --psnr file's bytes, record the --psnr path instead, so the lineage resolves in a clone.
    init = gan_training.get("init") or {}
    if init.get("sha256") and init["sha256"] == lw.record["a"]["sha256"]:  # the --psnr file's bytes
        recipe["init"] = Path(args.psnr).as_posix()
    elif init.get("sha256"):
        print(
            f"note: the GAN stage started from {init.get('path')} (sha256 {init['sha256'][:12]}...), "
            f"not from --psnr {args.psnr}; its recipe keeps that path"
        )
    recipe["init_sha256"] = init.get("sha256", "")
    recipe.update(
        interpolation=lw.record,
        gan_stage_steps=gan_steps,
        note=(
            f"shipped = {1 - args.alpha:g} x {psnr_meta.get('name')} ({Path(args.psnr).name}) + "
            f"{args.alpha:g} x the GAN stage's final EMA weights (step {gan_steps}); "
            "the raw GAN weights show a faint 2-px grid"
        ),
    )

    model, bic = ev["mean"]["model"], ev["mean"]["bicubic"]
    metrics = dict(
        model,
        bicubic=bic,
        convention=ev["convention"],
        images=len(ev["rows"]),
        val_set=str(Path(ev["rows"][0]["image"]).parent),
    )
    hp = gan_meta["hparams"]
    desc = (
        f"RRIM x{hp.get('scale', 4)}, RGB, GAN-stage: ESRGAN network interpolation (alpha {args.alpha:g}) "
        f"between rrim-x4-rgb-psnr and its GAN fine-tune (L1 + {recipe.get('percep_weight')} HED-VGG16 "
        f"perceptual + {recipe.get('adv_weight')} relativistic adversarial, {gan_steps} steps"
        + (f"; PSNR model of {args.psnr_steps:,} steps".replace(",", " ") if args.psnr_steps else "")
        + ")"
    )
    save_weights(
        args.out,
        sd,
        backbone=gan_meta["backbone"],
        hparams=hp,
        name=args.name,
        description=desc,
        recipe=recipe,
        metrics=metrics,
        dtype=DTYPE,
        overwrite=args.overwrite,
        extra={"training": dict(gan_training, interpolated_alpha=args.alpha)} if gan_training else None,
    )
    print(f"wrote {args.out}: Kodak24 {model['psnr']:.2f} dB / SSIM {model['ssim']:.4f} / FSIM {model['fsim']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
