"""``bench --arch-compare``: RRIM against the public architectures at their real sizes (random
weights), in output MPix/s and MACs per LR pixel, all cases interleaved in one run so a shared
machine's load hits them alike (docs/benchmarks.md, "Architectures side by side")."""

from __future__ import annotations

from napari_rrim_sr.cli.bench_common import _interleaved, _macs, _sync, photo, random_model

#: the side-by-side architectures (issue 14): real sizes, x4 RGB, random weights
ARCH_CASES = (
    ("RRIM 64x8", "rrim", {}),
    ("ESRGAN-23 (RRDBNet 64x23)", "rrdbnet", {"num_feat": 64, "num_block": 23, "num_grow_ch": 32}),
    ("Compact 64x32", "compact", {"num_feat": 64, "num_conv": 32}),
    ("SPAN-48", "span", {"num_feat": 48}),
    (
        "SwinIR-light (60, 6x4, w8)",
        "swinir",
        {
            "embed_dim": 60,
            "depths": [6, 6, 6, 6],
            "num_heads": [6, 6, 6, 6],
            "window_size": 8,
            "upsampler": "pixelshuffledirect",
        },
    ),
)


def _attention_macs_per_px(loaded) -> float:
    """SwinIR's q·k and attn·v matmuls (not Conv2d/Linear, so not in ``count_macs_per_pixel``):
    2·ws²·C per token per block."""
    hp = loaded.hparams
    if loaded.backbone != "swinir":
        return 0.0
    return float(sum(hp["depths"]) * 2 * hp["window_size"] ** 2 * hp["embed_dim"])


def measure_arch_compare(device, precisions, size: int, repeat: int, threads=None) -> list[dict]:
    """Engine MP/s (untiled, uint8 RGB ``size``² in, x4 out, all conversions included) of the
    :data:`ARCH_CASES`, all cases interleaved so load on a shared machine hits them alike."""
    from napari_rrim_sr.engine import devices
    from napari_rrim_sr.engine.api import Upscaler

    dev = devices.resolve_device(device)
    img, _ = photo(size, 3)
    cases, meta, keep = {}, {}, []
    for label, backbone, hp in ARCH_CASES:
        loaded = random_model(backbone, scale=4, in_channels=3, out_channels=3, **hp)
        for prec in precisions:
            up = Upscaler(loaded, device=dev, precision=prec, threads=threads)
            keep.append(up)

            def eng(up=up):
                up.upscale(img, tile=0)
                _sync(up.device)

            cases[(label, up.precision)] = eng
            meta[(label, up.precision)] = loaded
    t = _interleaved(cases, repeat)
    for up in keep:
        up.close()
    rows = []
    for (label, prec), loaded in meta.items():
        macs = _macs(loaded, 3) + _attention_macs_per_px(loaded)
        out_mp = (size * 4) ** 2 / 1e6
        params = sum(p.numel() for p in loaded.module.parameters())
        rows.append(
            {
                "model": label,
                "backbone": loaded.backbone,
                "hparams": loaded.hparams,
                "precision": prec,
                "size": size,
                "params": params,
                "engine_s": t[(label, prec)],
                "engine_mp_s": out_mp / t[(label, prec)],
                "macs_per_lr_px": macs,
                "engine_gmac_s": macs * size * size / t[(label, prec)] / 1e9,
            }
        )
    return rows


def format_arch_compare(res: dict) -> str:
    env, rows = res["env"], res["arch_compare"]
    lines = [
        f"device: {env['device']}; CPU: {env['cpu']}; torch {env['torch']}; threads {env['threads']}",
        f"load average at start {tuple(round(v, 2) for v in env['load_avg_start'])}, "
        f"at end {tuple(round(v, 2) for v in env.get('load_avg_end', ()))}",
        "",
        "| model | precision | input | params | MACs / LR px | engine MP/s (out) | vs RRIM | GMAC/s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    base = {r["precision"]: r["engine_mp_s"] for r in rows if r["backbone"] == "rrim"}
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['size']}² RGB, x4 | {r['params'] / 1e6:.3f} M "
            f"| {r['macs_per_lr_px'] / 1e6:.3f} M | {r['engine_mp_s']:.4f} "
            f"| {r['engine_mp_s'] / base[r['precision']]:.2f}x | {r['engine_gmac_s']:.1f} |"
        )
    lines.append("")
    lines.append("MACs: Conv2d/Linear layers, plus SwinIR's attention matmuls (2·ws²·C per token per block).")
    return "\n".join(lines)
