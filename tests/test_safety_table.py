"""The README's Safety guarantee as a table: command x the file it reads x the output flag.

Each row points an output flag (``--json``, ``-o``, ``--out``, with or without ``--overwrite``) of a
command at something that command reads (its data, its weights, its ``--init``, its store, an
array inside its store) and asserts: exit code non-zero, one ``error:`` line, and the read file's
bytes and mtime unchanged. Commands run in-process through their ``main(argv)``; data and models
are tiny, so the table stays fast.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ome_zarr")


def _digest(p: Path) -> tuple:
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest(), [os.stat(f).st_mtime_ns for f in files]


class Files:
    """Tiny inputs in one folder: an image, an HR image, weights, a folder of training images,
    an OME-Zarr store."""

    def __init__(self, root: Path, weights: Path) -> None:
        import tifffile
        import zarr
        from ome_zarr.writer import write_image
        from PIL import Image
        from scipy.ndimage import gaussian_filter

        rng = np.random.default_rng(0)
        plane = gaussian_filter(rng.random((64, 64)), 2)
        plane = (plane - plane.min()) / (plane.max() - plane.min())
        self.root = root
        self.img = root / "img.tif"
        tifffile.imwrite(self.img, (plane[:24, :24] * 3000 + 100).astype(np.uint16))
        self.hr = root / "hr.png"
        Image.fromarray((plane * 200 + 20).astype(np.uint8)).save(self.hr)
        self.weights = root / "w.safetensors"
        shutil.copyfile(weights, self.weights)
        self.in_out = root / "OUT" / "in.ome.zarr" / "w.safetensors"  # weights inside a future output
        self.in_out.parent.mkdir(parents=True)
        shutil.copyfile(weights, self.in_out)
        self.other = root / "w2.safetensors"
        shutil.copyfile(weights, self.other)
        self.data = root / "D"
        self.data.mkdir()
        for name in ("val.png", "loss.png", "a.png"):
            Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(self.data / name)
        self.stack = root / "stack.tif"
        tifffile.imwrite(self.stack, (np.stack([plane, plane.T]) * 3000 + 100).astype(np.uint16))
        self.store = root / "in.ome.zarr"
        write_image(
            (plane[None, :24, :24] * 200).astype(np.uint8),
            zarr.open_group(str(self.store), mode="w"),
            axes="zyx",
            storage_options={"chunks": (1, 16, 16)},
        )
        from napari_rrim_sr.io.ngff import open_source

        self.level = self.store / open_source(self.store).array_path


def _cli(argv: list[str]) -> int:
    from napari_rrim_sr.cli.main import main

    return main(argv)


def _training(argv: list[str]) -> int:
    from napari_rrim_sr.training.cli import main

    return main(argv)


FT = ["--minutes", "0.05", "--max-steps", "1", "--batch-size", "1", "--patch-size", "16", "--no-register"]
TRAIN = ["--steps", "1", "--hparam", "num_feat=8", "--hparam", "num_block=1", "--batch-size", "1"]
TRAIN += ["--patch-size", "32", "--threads", "1", "--precision", "fp32", "--val-every", "0"]
TRAIN += ["--no-register", "--no-progress"]

# (command, what it reads, flag): (runner, argv builder, the read path that is the target)
Row = tuple[Callable, Callable[[Files], list[str]], Callable[[Files], Path]]
TABLE: dict[tuple[str, str, str], Row] = {
    # upscale
    ("upscale", "data", "-o"): (
        _cli,
        lambda f: ["upscale", str(f.img), "--model", str(f.weights), "-o", str(f.img)],
        lambda f: f.img,
    ),
    ("upscale", "data", "--overwrite"): (
        _cli,
        lambda f: ["upscale", str(f.img), "--model", str(f.weights), "-o", str(f.root), "--overwrite"],
        lambda f: f.img,
    ),
    ("upscale", "weights", "--overwrite"): (
        _cli,
        lambda f: ["upscale", str(f.img), "--model", str(f.weights), "-o", str(f.weights), "--overwrite"],
        lambda f: f.weights,
    ),
    ("upscale", "store", "--overwrite"): (
        _cli,
        lambda f: ["upscale", str(f.store), "--model", str(f.weights), "-o", str(f.root), "--overwrite", "--quiet"],
        lambda f: f.store,
    ),
    ("upscale", "store arrays", "-o"): (
        _cli,
        lambda f: ["upscale", str(f.store), "--model", str(f.weights), "-o", str(f.level), "--quiet"],
        lambda f: f.store,
    ),
    ("upscale", "weights", "-o"): (  # the output store would hold the weights (issue 23, 3)
        _cli,
        lambda f: ["upscale", str(f.store), "--model", str(f.in_out), "-o", str(f.root / "OUT"), "--overwrite"],
        lambda f: f.in_out,
    ),
    # evaluate
    ("evaluate", "data", "--json"): (
        _cli,
        lambda f: ["evaluate", str(f.hr), "--model", str(f.weights), "--json", str(f.hr), "--overwrite"],
        lambda f: f.hr,
    ),
    ("evaluate", "weights", "--json"): (
        _cli,
        lambda f: ["evaluate", str(f.hr), "--model", str(f.weights), "--json", str(f.weights), "--overwrite"],
        lambda f: f.weights,
    ),
    # export
    ("export", "weights", "--overwrite"): (
        _cli,
        lambda f: ["export", str(f.weights), "--format", "onnx", "-o", str(f.weights), "--overwrite", "--quiet"],
        lambda f: f.weights,
    ),
    # bench-zarr
    ("bench-zarr", "weights", "--json"): (
        _cli,
        lambda f: [
            "bench-zarr",
            "--model",
            str(f.weights),
            "--workers",
            "1",
            "--shape",
            "1",
            "16",
            "16",
            "--big-factor",
            "0",
            "--json",
            str(f.weights),
        ],
        lambda f: f.weights,
    ),
    # training train
    ("training train", "data", "--out"): (
        _training,
        lambda f: ["train", "--data", str(f.data), "--out", str(f.data), *TRAIN],
        lambda f: f.data / "val.png",
    ),
    ("training train", "init", "--out"): (
        _training,
        lambda f: [
            "train",
            "--data",
            str(f.data),
            "--init",
            str(f.data / "w.safetensors"),
            "--out",
            str(f.data),
            *TRAIN,
        ],
        lambda f: f.data / "w.safetensors",
    ),
    # training finetune
    ("training finetune", "data", "--json"): (
        _training,
        lambda f: [
            "finetune",
            "--data",
            str(f.stack),
            "--init",
            str(f.weights),
            "--out",
            str(f.root / "ft"),
            *FT,
            "--json",
            str(f.stack),
        ],
        lambda f: f.stack,
    ),
    ("training finetune", "init", "--json"): (
        _training,
        lambda f: [
            "finetune",
            "--data",
            str(f.stack),
            "--init",
            str(f.weights),
            "--out",
            str(f.root / "ft"),
            *FT,
            "--json",
            str(f.weights),
        ],
        lambda f: f.weights,
    ),
    ("training finetune", "init", "--out"): (
        _training,
        lambda f: [
            "finetune",
            "--data",
            str(f.stack),
            "--init",
            str(f.weights),
            "--out",
            str(f.root),
            "--name",
            "w",
            *FT,
            "--overwrite",
        ],
        lambda f: f.weights,
    ),
    # training interpolate
    ("training interpolate", "weights", "-o"): (
        _training,
        lambda f: ["interpolate", str(f.weights), str(f.other), "--alpha", "0.5", "-o", str(f.weights), "--overwrite"],
        lambda f: f.weights,
    ),
}


@pytest.mark.parametrize("key", list(TABLE), ids=[" x ".join(k) for k in TABLE])
def test_a_command_never_writes_what_it_reads(key, tmp_path, tiny_weights_files, capsys):
    if key[0] == "bench-zarr":
        pytest.importorskip("distributed")
    run, argv, target = TABLE[key]
    root = tmp_path / "in"
    root.mkdir()
    files = Files(root, tiny_weights_files["tiny-rrim-x4-gray"])
    if key == ("training train", "init", "--out"):
        shutil.copyfile(files.weights, files.data / "w.safetensors")
    t = target(files)
    before = _digest(t)
    rc = run(argv(files))
    err = capsys.readouterr().err
    assert rc != 0, f"{key}: exit 0 ({err})"
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("warning")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert t.exists() and _digest(t) == before, f"{key}: {t} changed"
