"""The run directory's log: ``log.jsonl`` (one JSON record per line: train, val, event),
``log.csv`` (the same, flat) and the plots ``loss.png`` and ``val.png``.

``log.jsonl`` is appended as training goes (a kill loses at most the line being written); the
rewrites (trim on resume, the CSV, the plots) go through
:func:`napari_rrim_sr.safe_write.atomic_write`, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path

import numpy as np

from napari_rrim_sr.safe_write import atomic_write

log = logging.getLogger(__name__)

__all__ = ["RunLog"]


class RunLog:
    """The log files of one run directory."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "log.jsonl"

    def write(self, record: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")  # NaN stays NaN (a skipped step), as json.loads reads it

    def event(self, event: str, step: int, **extra) -> None:
        self.write({"kind": "event", "event": event, "step": step, "time": time.time(), **extra})

    def trim(self, step: int) -> list[dict]:
        """Drop records written after ``step`` (a resumed run writes them again); return the
        train records kept (the loss history)."""
        if not self.path.exists():
            return []
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("kind") == "event" or int(rec.get("step", 0)) <= step:
                kept.append(rec)
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept), overwrite=True)
        return [r for r in kept if r.get("kind") == "train"]

    def write_csv(self, history: list[dict], val_history: list[dict]) -> None:
        rows = history + [dict(r, kind="val") for r in val_history]
        if not rows:
            return
        keys: list[str] = []
        for r in rows:
            for k, v in r.items():
                if k not in keys and not isinstance(v, (dict, list)):
                    keys.append(k)
        rows = sorted(rows, key=lambda r: (r.get("step", 0), r.get("kind") != "train"))
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write(self.run_dir / "log.csv", buf.getvalue(), overwrite=True)

    def plot(
        self,
        history: list[dict],
        val_history: list[dict],
        *,
        name: str,
        gan: bool,
        bicubic: dict | None,
        convention: str,
    ) -> None:
        """loss.png and val.png (matplotlib Agg; skipped with a warning when it is missing)."""
        try:
            import matplotlib

            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError:
            log.warning("matplotlib is not installed: no plots (pip install matplotlib)")
            return
        if history:
            fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
            steps = [r["step"] for r in history]
            keys = ("loss", "l_pix", "l_percep", "l_gram", "l_adv", "l_d") if gan else ("loss",)
            for key in keys:
                vals = [r.get(key) for r in history]
                if any(v is not None for v in vals):
                    ax.plot(steps, [v if v is not None else np.nan for v in vals], label=key, lw=1)
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            if all((r.get("loss") or 0) > 0 for r in history):
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend()
            ax.set_title(f"{name}: training losses")
            fig.tight_layout()
            atomic_write(self.run_dir / "loss.png", lambda tmp: fig.savefig(tmp, format="png"), overwrite=True)
            plt.close(fig)
        if val_history:
            keys = [k for k in ("psnr", "ssim", "fsim") if k in val_history[-1]]
            fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), dpi=100, squeeze=False)
            steps = [r["step"] for r in val_history]
            for ax, key in zip(axes[0], keys):
                ax.plot(steps, [r[key] for r in val_history], "o-", label=name, ms=3)
                if bicubic and key in bicubic:
                    ax.axhline(bicubic[key], color="gray", ls="--", label="bicubic")
                ax.set_xlabel("step")
                ax.set_title(key.upper() + (" (dB)" if key == "psnr" else ""))
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
            fig.suptitle(f"validation: {convention}", fontsize=8)
            fig.tight_layout()
            atomic_write(self.run_dir / "val.png", lambda tmp: fig.savefig(tmp, format="png"), overwrite=True)
            plt.close(fig)
