"""Markdown table of fine-tune measurements from ``finetune --json`` files (docs/models.md).

python -m napari_rrim_sr.training finetune-report runs/measure/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(path: Path) -> str:
    d = json.loads(path.read_text())
    sc, r = d["scores"], d["recipe"]
    others = {k: v for k, v in sc.items() if k not in ("model", "base", "bicubic")}
    real = others.get("rrim-x4-gray-real")

    def cell(m):
        return f"{m['psnr']:.2f} / {m['ssim']:.3f}" if m else "-"

    wall = d["curve"][-1]["elapsed_s"] if d.get("curve") else 0
    return (
        f"| {d['name']} | {r['minutes']:g} | {d['steps']} ({r['batch_size']}×{r['patch_size']} px), best {d['best_step']} "
        f"| {wall / 60:.1f} | {cell(sc['model'])} | {cell(sc['base'])} | {cell(real)} | {cell(sc['bicubic'])} "
        f"| {'yes' if d['beats_base'] else '**no**'} |"
    )


def main(paths: list[str]) -> int:
    print(
        "| run | budget (min) | steps (batch×patch), best step | training wall (min) | fine-tuned PSNR / SSIM "
        "| rrim-x4-gray | rrim-x4-gray-real | bicubic | beats base |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for p in sorted(paths):
        print(row(Path(p)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
