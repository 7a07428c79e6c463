"""``demo``: the main job in one command.

* ``napari-rrim-sr demo`` opens napari with the microscopy sample and the *Upscale (RRIM x4)*
  widget docked (needs napari with a Qt backend).
* ``napari-rrim-sr demo --headless -o OUTDIR`` imports no Qt: it upscales the three samples
  (microscopy, satellite, photo) with the weights ``--model auto`` picks (as the CLI and the
  widget do; the reason goes into the report) and with bicubic, scores both by the
  self-check protocol of :func:`napari_rrim_sr.quality.evaluate.evaluate`, and writes per sample the
  source, RRIM and bicubic TIFFs (with provenance), PNG previews and a side-by-side crop, plus
  ``report.md`` and ``report.json`` (metrics, timings, device, model provenance).

Without trained weights the headless demo stops with a plain message, unless
``--allow-untrained``: then a randomly initialised RRIM runs the same pipeline, and every
output says loudly that its numbers and pictures are meaningless.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

from napari_rrim_sr.errors import InputError, RRIMError
from napari_rrim_sr.jsonable import jsonable
from napari_rrim_sr.safe_write import atomic_write

log = logging.getLogger(__name__)

SAMPLES = ("microscopy", "satellite", "photo")
UNTRAINED_BANNER = (
    "WARNING: NO TRAINED WEIGHTS - this demo ran a RANDOMLY INITIALISED RRIM. Its images and "
    "metrics show that the pipeline works, NOT what the model can do."
)


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="open napari with a sample and the upscale widget (or --headless: upscale the samples and write a report)",
        description="Without options: open napari with the microscopy sample and the Upscale "
        "(RRIM x4) widget. With --headless -o OUTDIR: upscale the microscopy, "
        "satellite and photo samples with the weights --model auto picks for each (the "
        "sample's own request, else the clean or robust model measured from the data; "
        "the reason is in the report) and with bicubic, and write images plus "
        "report.md/report.json (no GUI, no Qt).",
    )
    p.add_argument("--headless", action="store_true", help="no GUI: compute and write a report")
    p.add_argument("-o", "--output", metavar="OUTDIR", help="output folder (--headless)")
    p.add_argument(
        "--samples", default=",".join(SAMPLES), help=f"comma-separated samples to run (default: {','.join(SAMPLES)})"
    )
    p.add_argument(
        "--model",
        default="auto",
        help="weights id or file for every sample, or 'auto' (default): the weights the sample's "
        "metadata asks for when installed, else the clean or robust model measured from the "
        "data (as `upscale --model auto` and the widget), else the default per channel count",
    )
    p.add_argument(
        "--allow-untrained",
        action="store_true",
        help="run with a randomly initialised RRIM when no trained weights are "
        "installed (the results are then meaningless; labelled as such)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16")
    p.add_argument("--tile", type=int, default=None, help="tile size in input pixels (0 = none)")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        metavar="N",
        help="use a central N x N crop of each sample (a quick run; samples are 256)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace files in OUTDIR")
    p.set_defaults(func=run)


def run(args) -> int:
    if not args.headless:
        if args.output:
            raise InputError("-o/--output is for --headless runs; the GUI demo writes nothing")
        return run_gui()
    if not args.output:
        raise InputError("--headless needs -o OUTDIR")
    samples = [s.strip() for s in args.samples.split(",") if s.strip()]
    unknown = sorted(set(samples) - set(SAMPLES))
    if unknown or not samples:
        raise InputError(f"unknown sample(s) {unknown}; choose from {', '.join(SAMPLES)}")
    report = run_headless(
        Path(args.output),
        samples=samples,
        model=args.model,
        allow_untrained=args.allow_untrained,
        device=args.device,
        precision=args.precision,
        tile=args.tile,
        overwrite=args.overwrite,
        size=args.size,
    )
    print(f"wrote {Path(args.output) / 'report.md'}")
    if report["untrained"]:
        print(UNTRAINED_BANNER, file=sys.stderr)
    return 0


# -- GUI -----------------------------------------------------------------------------------


def run_gui() -> int:  # pragma: no cover - interactive
    try:
        import napari
    except ImportError as exc:
        raise RRIMError(
            f"the GUI demo needs napari with a Qt backend ({exc}); "
            "pip install 'napari-rrim-sr[napari]' or use --headless"
        ) from None
    from napari_rrim_sr._napari import PLUGIN_NAME, UPSCALE_WIDGET_NAME

    viewer = napari.Viewer(title="napari-rrim-sr demo")
    viewer.open_sample(PLUGIN_NAME, "microscopy")
    viewer.window.add_plugin_dock_widget(PLUGIN_NAME, UPSCALE_WIDGET_NAME)
    napari.run()
    return 0


# -- headless ------------------------------------------------------------------------------


def _load_samples(names, size=None):
    from napari_rrim_sr._napari import sample_data as sd

    out = {}
    for name in names:
        ((data, kwargs, _),) = getattr(sd, name)()
        if size:
            if size < 16:
                raise InputError("--size must be at least 16 pixels")
            h, w = data.shape[:2]
            y0, x0 = max((h - size) // 2, 0), max((w - size) // 2, 0)
            data = np.ascontiguousarray(data[y0 : y0 + size, x0 : x0 + size])
        out[name] = (data, kwargs)
    return out


def _models(model_arg, samples, allow_untrained):
    """``({sample name: LoadedModel}, untrained, {sample name: ModelChoice})``.

    ``--model ID|PATH`` is used for every sample. Otherwise (``auto``, the default) each sample
    gets what the CLI and the widget give it: the weights its metadata asks for when installed,
    else the model measured from the data (:func:`napari_rrim_sr.registry.choice.choose_for_layer`:
    clean or robust), else the registry default for its channel count.
    """
    from napari_rrim_sr.io.geometry import suggested_weights
    from napari_rrim_sr.pipeline import weight_ids
    from napari_rrim_sr.registry.choice import ModelChoice, choose_for_layer
    from napari_rrim_sr.registry.core import get_registry
    from napari_rrim_sr.registry.loading import load_model

    reg = get_registry()
    installed = weight_ids(reg)
    explicit = model_arg not in (None, "auto")
    choices: dict = {}
    if not explicit:
        for name, (data, kw) in samples.items():
            meta = kw.get("metadata")
            if data is None:  # nothing to measure: the layer's request only
                wid = suggested_weights(meta, installed)
                if wid:
                    choices[name] = ModelChoice(wid, "requested by the layer's metadata (napari_rrim_sr_weights)")
                continue
            c = choose_for_layer(data, rgb=bool(kw.get("rgb")), available_ids=installed, metadata=meta)
            if c.weights_id:
                choices[name] = c
    own = {name: c.weights_id for name, c in choices.items()}
    chans = {3 if kw.get("rgb") else 1 for name, (_, kw) in samples.items() if name not in own}
    by_channels, untrained = _default_models(reg, model_arg if explicit else None, sorted(chans), allow_untrained)
    models = {name: load_model(wid, registry=reg) for name, wid in own.items()}
    for name, (_, kw) in samples.items():
        models.setdefault(name, by_channels.get(3 if kw.get("rgb") else 1))
    return models, untrained, choices


def _default_models(reg, model_arg, chans, allow_untrained):
    """``{channels: LoadedModel}`` for the channel counts ``chans``, and whether any is untrained."""
    from napari_rrim_sr.registry.loading import LoadedModel, load_model

    models, untrained = {}, False
    for ch in chans:
        if model_arg:
            models[ch] = load_model(model_arg, registry=reg)
            continue
        entry = reg.default_weights(ch)
        if entry is not None:
            models[ch] = load_model(entry, registry=reg)
            continue
        if not allow_untrained:
            from napari_rrim_sr.pipeline import no_weights_message

            raise RRIMError(
                no_weights_message() + " To check the pipeline anyway, run the demo "
                "with --allow-untrained (a randomly initialised model; meaningless "
                "results, clearly labelled)."
            )
        import torch

        torch.manual_seed(0)
        module = reg.build("rrim", in_channels=ch, out_channels=ch, scale=4)
        models[ch] = LoadedModel.from_module(module, "rrim", id=f"UNTRAINED rrim x4 {ch}ch (random init, seed 0)")
        models[ch].metadata = {"untrained": True}
        untrained = True
    return models, untrained


def _preview_u8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    a = (np.asarray(arr, dtype=np.float64) - lo) / max(hi - lo, 1e-12)
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def _side_by_side(src, bic, sr, lo, hi, *, rgb, factor=4, crop=48) -> np.ndarray:
    """Nearest-neighbour source | bicubic | RRIM of a central crop, for the report."""
    h, w = src.shape[:2]
    c = min(crop, h, w)
    y0, x0 = (h - c) // 2, (w - c) // 2
    s = src[y0 : y0 + c, x0 : x0 + c]
    nn = np.repeat(np.repeat(s, factor, axis=0), factor, axis=1)
    b = bic[y0 * factor : (y0 + c) * factor, x0 * factor : (x0 + c) * factor]
    r = sr[y0 * factor : (y0 + c) * factor, x0 * factor : (x0 + c) * factor]
    gap_shape = (nn.shape[0], 6) + nn.shape[2:]
    gap = np.full(gap_shape, 255, np.uint8)
    return np.concatenate([_preview_u8(nn, lo, hi), gap, _preview_u8(b, lo, hi), gap, _preview_u8(r, lo, hi)], axis=1)


def run_headless(
    outdir: Path,
    *,
    samples=SAMPLES,
    model=None,
    allow_untrained=False,
    device="auto",
    precision="auto",
    tile=None,
    overwrite=False,
    size: int | None = None,
) -> dict:
    """Upscale the samples, evaluate, write images and the report; returns the report dict."""
    from napari_rrim_sr import __version__
    from napari_rrim_sr.engine.devices import describe
    from napari_rrim_sr.io.bundle import write_layer_tiff
    from napari_rrim_sr.io.geometry import source_from_data
    from napari_rrim_sr.pipeline import Source, UpscaleRequest, plan, run
    from napari_rrim_sr.quality.evaluate import evaluate
    from napari_rrim_sr.quality.layer_metrics import metrics_data_range

    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir}: exists and is not a folder")
    if (outdir / "report.md").exists() and not overwrite:
        raise InputError(f"{outdir} already holds a demo report; use --overwrite or another folder")
    loaded = _load_samples(samples, size)
    models, untrained, choices = _models(model, loaded, allow_untrained)
    outdir.mkdir(parents=True, exist_ok=True)  # only once samples and models are there
    if untrained:
        log.warning(UNTRAINED_BANNER)
        print(UNTRAINED_BANNER, file=sys.stderr)

    rows = []
    for name, (data, kwargs) in loaded.items():
        rgb = bool(kwargs.get("rgb", False))
        m = models[name]
        src = source_from_data(data, kwargs)
        # the pipeline every entry point runs: same plan (normalisation, precision), engine call,
        # result-vs-input check and provenance
        request = UpscaleRequest(
            Source(data, name=kwargs["name"], rgb=rgb, metadata=dict(kwargs.get("metadata") or {}), layer=src),
            # the planner chooses (as for the CLI and the widget) unless a model was named or is untrained
            model=m if (model not in (None, "auto") or m.metadata.get("untrained")) else "auto",
            device=device,
            precision=precision,
            tile=tile,
            bicubic=True,
        )
        result = run(plan(request))
        m = result.plan.model
        sr, bic = result.data, result.bicubic
        t_model, t_bic = result.elapsed_s, result.bicubic_elapsed_s
        dev_desc = describe(result.device, result.precision)
        lo_hi = (float(data.min()), float(data.max()))
        norm_used = result.plan.parts[0].normalization
        # the self-check scores by evaluate's protocol (the numbers the README quotes)
        t0 = time.perf_counter()
        ev = evaluate(
            data,
            m,
            device=device,
            precision=result.plan.precision,
            data_range=metrics_data_range(data.dtype, data),
            tile=tile,
            normalization=norm_used.mode,
            percentiles=tuple(result.plan.request.percentiles),
        )
        t_eval = time.perf_counter() - t0
        result.metrics = ev
        prov_model = result.provenance["model"]
        files = {}
        base_meta = {
            "name": kwargs["name"],
            "scale": src["scale"],
            "rgb": rgb,
            "metadata": kwargs.get("metadata", {}),
            "units": kwargs.get("units"),
            "colormap": kwargs.get("colormap"),
            "contrast_limits": kwargs.get("contrast_limits"),
        }
        files["source"] = write_layer_tiff(outdir / f"{name}_source.tif", data, base_meta, overwrite=overwrite)
        for kind, arr in (("rrim", sr), ("bicubic", bic)):
            extra = {"metrics": ev}
            if kind == "rrim" and untrained:
                extra["untrained"] = True
            kw = result.layer_kwargs(kind, extra=extra)
            files[kind] = write_layer_tiff(outdir / f"{name}_{kind}_x{m.scale}.tif", arr, kw, overwrite=overwrite)
        norm = {"normalization": result.provenance["normalization"]["mode"]}
        run_info = {"precision": result.precision, "tile": result.tile}
        lo, hi = lo_hi if data.dtype != np.uint8 else (0.0, 255.0)
        if kwargs.get("contrast_limits"):
            lo, hi = kwargs["contrast_limits"]
        for kind, arr in (("rrim", sr), ("bicubic", bic)):
            png = outdir / f"{name}_{kind}_x{m.scale}.png"
            _save_png(png, _preview_u8(arr, lo, hi), overwrite)
            files[f"{kind}_png"] = png
        cmp_png = outdir / f"{name}_comparison.png"
        _save_png(cmp_png, _side_by_side(data, bic, sr, lo, hi, rgb=rgb, factor=m.scale), overwrite)
        files["comparison_png"] = cmp_png
        rows.append(
            {
                "sample": name,
                "layer_name": kwargs["name"],
                "shape": list(data.shape),
                "dtype": str(data.dtype),
                "output_shape": list(sr.shape),
                "normalization": norm["normalization"],
                "model": prov_model,
                "model_choice": result.provenance.get("model_choice"),
                "untrained": bool(m.metadata.get("untrained")),
                "device": dev_desc,
                "precision": run_info.get("precision"),
                "tile": run_info.get("tile"),
                "seconds": {"rrim": round(t_model, 3), "bicubic": round(t_bic, 3), "self_check": round(t_eval, 3)},
                "megapixels_per_s": round(sr.shape[0] * sr.shape[1] / 1e6 / max(t_model, 1e-9), 4),
                "metrics": ev,
                "check": result.check,
                "warnings": result.warnings,
                "provenance": result.provenance,
                "files": {k: Path(v).name for k, v in files.items()},
            }
        )

    report = {
        "software": f"napari-rrim-sr {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "samples": list(samples),
            "model": model,
            "device": device,
            "precision": precision,
            "tile": tile,
            "size": size,
            "allow_untrained": allow_untrained,
        },
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
        },
        "untrained": untrained,
        "warning": UNTRAINED_BANNER if untrained else None,
        "samples": rows,
    }
    atomic_write(outdir / "report.json", json.dumps(jsonable(report), indent=2) + "\n", overwrite=overwrite)
    atomic_write(outdir / "report.md", _markdown(report), overwrite=overwrite)
    return report


def _save_png(path: Path, u8: np.ndarray, overwrite: bool) -> Path:
    from PIL import Image as PILImage

    return atomic_write(path, lambda tmp: PILImage.fromarray(u8).save(tmp, format="PNG"), overwrite=overwrite)


def _check_line(c) -> str:
    """The result-vs-input check, one line (the CLI's and the widget's numbers)."""
    if not c:
        return "- result vs input: not checked"
    som = c.get("shift_of_mean")
    return (
        f"- result vs input (bicubic x1/scale of the result): mean {c['mean_in']:.4g} -> {c['mean_out']:.4g}"
        + (f" ({100 * som:+.2f} % of the mean" if som is not None else " (")
        + f", {100 * c['shift_of_range']:+.2f} % of the range), PSNR {c['psnr']:.1f} dB"
    )


def _fmt(v, nd=3):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not np.isfinite(v):
        return "inf" if v > 0 else "n/a"
    return f"{v:.{nd}f}"


def _markdown(report: dict) -> str:
    lines = ["# napari-rrim-sr demo report", ""]
    if report["untrained"]:
        lines += [f"> **{report['warning']}**", ""]
    lines += [
        f"{report['software']}, {report['created']}; {report['machine']['platform']}, "
        f"Python {report['machine']['python']}.",
        "",
    ]
    for r in report["samples"]:
        m = r["metrics"]
        lines += [
            f"## {r['sample']}: {r['layer_name']}",
            "",
            f"- input {tuple(r['shape'])} {r['dtype']} -> output {tuple(r['output_shape'])}; "
            f"normalisation `{r['normalization']}`",
            (f"- model choice: {r['model_choice']['reason']}\n" if r.get("model_choice") else "")
            + f"- model `{r['model']['model_id']}` ({r['model']['backbone']}), weights sha256 "
            f"`{r['model'].get('weights_sha256') or 'n/a (in memory)'}`"
            + (" — **UNTRAINED**" if r["untrained"] else ""),
            f"- device {r['device']}, tile {r['tile']}; RRIM {r['seconds']['rrim']} s "
            f"({r['megapixels_per_s']} output MP/s), bicubic {r['seconds']['bicubic']} s, "
            f"self-check {r['seconds']['self_check']} s",
            _check_line(r.get("check")),
            *[f"- **warning: {w}**" for w in r.get("warnings") or []],
            "",
            "Self-check (the sample is the HR reference):",
            "",
            "| metric | RRIM | bicubic | RRIM - bicubic |",
            "|---|---|---|---|",
        ]
        for key, label in (("rmse", "RMSE"), ("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("fsim", "FSIM")):
            a, b = m["model"].get(key), m["bicubic"].get(key)
            try:
                d = float(a) - float(b)
            except (TypeError, ValueError):
                d = float("nan")
            lines.append(f"| {label} | {_fmt(a, 4)} | {_fmt(b, 4)} | {_fmt(d, 4)} |")
        lines += [
            "",
            f"Convention: {m.get('convention', '')}",
            "",
            f"![{r['sample']}: source (nearest) | bicubic | RRIM]({r['files']['comparison_png']})",
            "",
            "Files: " + ", ".join(f"`{v}`" for v in r["files"].values()),
            "",
        ]
    return "\n".join(lines)
