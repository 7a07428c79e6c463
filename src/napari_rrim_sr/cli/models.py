"""``models``: list registered backbones and weights, and the weights files that are broken."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list registered backbones and weights",
        description="List the backbones registered through plugins and the weights files found "
        "(shipped, user folder, plugin-contributed). Files that cannot be read are listed under "
        "'Broken' with their problem and are otherwise ignored.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run)


def run(args) -> int:
    from napari_rrim_sr.registry.core import get_registry, user_weights_dir

    reg = get_registry()
    backbones = [
        {
            "id": s.id,
            "kind": s.kind,
            "source": s.source,
            "scales": list(s.scales),
            "channels": list(s.channels) if s.channels is not None else "any",
            "description": s.description,
        }
        for s in reg.backbones().values()
    ]
    weights = [e.as_dict() for e in reg.weights()]
    broken = [b.as_dict() for b in reg.broken]
    if args.json:
        print(
            json.dumps(
                {"backbones": backbones, "weights": weights, "broken": broken, "problems": [m for _, m in reg.failed]},
                indent=2,
            )
        )
        return 0
    print("Backbones:")
    for b in backbones:
        print(f"  {b['id']:<22} {b['source']:<10} {b['description']}")
    print("\nWeights:")
    if not weights:
        print(f"  none found (shipped folder, user folder {user_weights_dir()}, plugins)")
    for w in weights:
        print(
            f"  {w['id']:<22} {w['backbone']:<10} x{w['scale']} {w['in_channels']}->{w['out_channels']}ch "
            f"{w['source']:<8} {w['path']}\n  {'':<22} sha256 {w['sha256']}"
        )
    if broken:
        print("\nBroken (skipped):")
        for b in broken:
            print(f"  {b['path']} ({b['source']}): {b['problem']}")
    for _, msg in reg.failed:
        print(f"\nwarning: {msg}")
    return 0
