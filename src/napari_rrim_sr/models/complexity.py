"""Parameter and multiply-accumulate counts of the generators.

``python -m napari_rrim_sr.models.complexity`` prints the table of docs/architecture.md
(models built on the ``meta`` device: shapes only, instant). ``--time`` adds a CPU fp32
single-thread latency column for a 64×64 input (slow: real weights, real compute).
"""

from __future__ import annotations

import argparse
import time
from typing import Iterable

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs_per_pixel(model: nn.Module, in_channels: int, size: int = 64) -> float:
    """Multiply-accumulates of every Conv2d/Linear per input (LR) pixel, for a ``size``×``size`` input.

    Counted with forward hooks on one forward pass (batch 1, no grad) on the model's device
    (``meta`` works: shapes only). Element-wise ops, activations, pixel-shuffle and
    interpolation are not counted. ``size`` must be a multiple of the model's ``size_multiple``.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inp, out) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, size, size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total / float(size * size)


def _rows() -> Iterable[tuple[str, str, dict]]:
    yield "rrim", "RRIM 64 feat × 8 blocks (default)", {}
    yield "srresnet", "SRResNet 64 × 16 blocks (no BN)", {}
    yield "rrdbnet", "RRDBNet 64 × 23 blocks, grow 32 (ESRGAN)", {}
    yield "rrim", "RRIM 32 × 4", {"num_feat": 32, "num_block": 4}
    yield "rrim", "RRIM 48 × 6", {"num_feat": 48, "num_block": 6}
    yield "rrim", "RRIM 64 × 4", {"num_feat": 64, "num_block": 4}
    yield "rrim", "RRIM 64 × 12", {"num_feat": 64, "num_block": 12}


def _cpu_ms(model: nn.Module, in_channels: int, size: int = 64, repeat: int = 3) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.rand(1, in_channels, size, size)
        model.eval()
        with torch.inference_mode():
            model(x)
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                model(x)
                best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return best * 1000.0


def table(scale: int = 4, channels: int = 3, timing: bool = False) -> str:
    from napari_rrim_sr.registry.core import Registry

    reg = Registry(discover=False)
    head = "| model | scale | params | MACs / LR pixel | GMACs for a 256×256 LR input |"
    sep = "|---|---|---:|---:|---:|"
    if timing:
        head += " CPU ms, 64×64, fp32, 1 thread |"
        sep += "---:|"
    lines = [head, sep]
    for backbone, label, hp in _rows():
        kw = dict(scale=scale, in_channels=channels, out_channels=channels, **hp)
        with torch.device("meta"):
            model = reg.build(backbone, **kw)
        macs = count_macs_per_pixel(model, channels, size=64)
        line = (
            f"| {label} | ×{scale} | {count_params(model) / 1e6:.3f} M | {macs / 1e6:.3f} M "
            f"| {macs * 256 * 256 / 1e9:.1f} |"
        )
        if timing:
            line += f" {_cpu_ms(reg.build(backbone, **kw), channels):.0f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=4, choices=(2, 4))
    ap.add_argument("--channels", type=int, default=3, choices=(1, 3))
    ap.add_argument("--time", action="store_true", help="add a CPU latency column (slow)")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}; {args.channels}-channel input; MACs counted on Conv2d/Linear layers")
    print(table(args.scale, args.channels, args.time))


if __name__ == "__main__":
    main()
