"""Every command in README.md's ```bash blocks runs, on small data, with the options it shows.

The commands are read from the README itself (comments dropped, ``\\`` continuations joined), so a
command added or changed there without a handler here fails :func:`test_every_readme_command_has_a_handler`.
Each command runs as written with its optional ``[...]`` groups left out (the defaults a new user
gets), and once more with its ``[--json FILE]`` group where it shows one. Placeholders become small
files this module writes (``img.tif``: a uint16 stack, ``photo.png``: an RGB photo crop,
``hr/*.png``, ``volume.ome.zarr``, ``plain.zarr``, ``mosaic.tif``, training folders). Commands run
in-process (``main(argv)``) with the shipped weights, and each result is checked against its input
(4x downsampled result vs input), not only its shape.

Changed on purpose, each for a reason given where it happens: sizes of the two benchmarks and of the
training run (minutes to hours as written), ``--scheduler local:8`` -> ``local:1`` (8 worker
processes on a 2-core runner) and ``tcp://head:8786`` -> a scheduler this module starts.
Skipped: ``bash scripts/run.sh`` (opens a napari window) and ``bash scripts/test.sh`` (this suite).
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

SKIP = {
    "bash scripts/run.sh": "opens a napari window with the widget (GUI)",
    "bash scripts/test.sh": "runs this whole test suite (it would run itself)",
}


def readme_commands(text: str | None = None) -> list[str]:
    """The commands of the README's ```bash blocks, one string each, in order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    out: list[str] = []
    for block in re.findall(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(re.sub(r"\s+", " ", line))
    return out


def without_options(cmd: str, keep: str | None = None) -> str:
    """``cmd`` without its ``[...]`` optional groups (those starting with ``keep`` stay, unbracketed)."""

    def repl(m: re.Match) -> str:
        inner = m.group(1)
        return f" {inner}" if keep and inner.startswith(keep) else ""

    return re.sub(r"\s*\[([^\[\]]*)\]", repl, cmd).strip()


def variants(cmd: str) -> list[str]:
    """As written without options, and with its ``[--json ...]`` group where it has one."""
    out = [without_options(cmd)]
    if "[--json" in cmd:
        out.append(without_options(cmd, keep="--json"))
    return out


# -- data ------------------------------------------------------------------------------------


def _smooth(shape, seed, lo, hi, dtype):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.random(shape), sigma=[0] * (len(shape) - 2) + [2, 2])
    x = (x - x.min()) / (x.max() - x.min())
    return (lo + x * (hi - lo)).astype(dtype)


def _photo(seed: int, side: int) -> np.ndarray:
    """An RGB photograph crop (scikit-image's bundled samples), ``side`` px, uint8."""
    from skimage import data
    from skimage.transform import resize

    img = [data.astronaut, data.coffee, data.chelsea][seed % 3]()
    small = resize(img, (img.shape[0] // 4, img.shape[1] // 4), anti_aliasing=True)
    return (small[:side, :side] * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The working directory of the commands, with every placeholder file, and the shipped weights on."""
    import tifffile
    import zarr
    from ome_zarr.writer import write_image
    from PIL import Image

    from napari_rrim_sr.registry import core as registry

    d = tmp_path_factory.mktemp("readme")
    tifffile.imwrite(d / "img.tif", _smooth((4, 24, 24), 0, 800, 30000, np.uint16), photometric="minisblack")
    Image.fromarray(_photo(0, 32)).save(d / "photo.png")
    (d / "hr").mkdir()
    for i in range(2):
        Image.fromarray(_photo(i, 48)).save(d / "hr" / f"hr{i}.png")
    g = zarr.open_group(str(d / "volume.ome.zarr"), mode="w")
    write_image(_smooth((2, 32, 32), 1, 300, 9000, np.uint16), g, axes="zyx", storage_options=dict(chunks=(1, 16, 16)))
    plain = zarr.open_array(
        str(d / "plain.zarr"), mode="w", shape=(1, 2, 24, 24), chunks=(1, 1, 24, 24), dtype="uint16"
    )
    plain[:] = _smooth((1, 2, 24, 24), 2, 100, 4000, np.uint16)
    tifffile.imwrite(d / "mosaic.tif", _smooth((40, 40), 3, 500, 20000, np.uint16), tile=(16, 16))
    for name, n, side in (("my_hr_images", 3, 64), ("my_val", 1, 48)):
        (d / name).mkdir()
        for i in range(n):
            Image.fromarray(_photo(i + 1, side)).save(d / name / f"{i}.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        mp.setenv(registry.SHIPPED_ENV, "1")  # conftest hides them; the README's users have them
        mp.setenv(registry.WEIGHTS_DIR_ENV, str(d / "user-weights"))  # training registers its result here
        mp.setenv(registry.PLUGINS_ENV, "none")
        registry.reset_registry()
        yield d
    registry.reset_registry()


def run(cmd: str) -> int:
    """Run one ``python -m ...`` command line in-process (globs expanded as the shell would)."""
    argv = []
    for a in shlex.split(cmd):
        argv += sorted(glob.glob(a)) if any(c in a for c in "*?") else [a]
    assert argv[:2] == ["python", "-m"], cmd
    if argv[2] == "napari_rrim_sr":
        from napari_rrim_sr.cli.main import main
    elif argv[2] == "napari_rrim_sr.training":
        from napari_rrim_sr.training.cli import main
    else:
        raise AssertionError(f"no in-process runner for {argv[2]}")
    try:
        return int(main(argv[3:]) or 0)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)


# -- checks ----------------------------------------------------------------------------------


def check_sr(sr: np.ndarray, lr: np.ndarray, channel_axis: int | None = None) -> None:
    """x4 in Y and X, same dtype, and the result averaged back over 4x4 blocks matches the input."""
    sr, lr = np.asarray(sr), np.asarray(lr)
    if channel_axis is not None:
        sr, lr = np.moveaxis(sr, channel_axis, 0), np.moveaxis(lr, channel_axis, 0)
    assert sr.dtype == lr.dtype
    assert sr.shape[:-2] == lr.shape[:-2] and sr.shape[-2:] == (4 * lr.shape[-2], 4 * lr.shape[-1])
    down = sr.astype(np.float64).reshape(*lr.shape[:-2], lr.shape[-2], 4, lr.shape[-1], 4).mean(axis=(-3, -1))
    ref = lr.astype(np.float64)
    span = float(ref.max() - ref.min())
    assert abs(down.mean() - ref.mean()) < 0.03 * span, (down.mean(), ref.mean())
    assert np.corrcoef(down.ravel(), ref.ravel())[0, 1] > 0.95
    assert np.abs(down - ref).mean() < 0.05 * span


def _read(path: Path) -> np.ndarray:
    import tifffile
    from PIL import Image

    if path.suffix in (".tif", ".tiff"):
        return tifffile.imread(path)
    return np.asarray(Image.open(path))


def _zarr_image(path: Path) -> np.ndarray:
    import zarr

    g = zarr.open_group(str(path), mode="r")
    ms = dict(g.attrs).get("ome", dict(g.attrs)).get("multiscales", [{}])
    level0 = (ms[0].get("datasets") or [{"path": "0"}])[0]["path"]  # ome-zarr writes "s0", we write "0"
    return np.asarray(g[level0])


def _fresh(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- one handler per README command ------------------------------------------------------------
# each: (pattern on the command without options, function(cmd, ws, capsys)); the function runs it


def h_help(cmd, ws, capsys):
    assert run(cmd) == 0
    out = capsys.readouterr().out
    for word in ("upscale", "evaluate", "models", "bench", "export"):
        assert word in out


def h_models(cmd, ws, capsys):
    assert run(cmd) == 0
    out = capsys.readouterr().out
    if cmd.endswith("--json"):
        listing = json.loads(out)
        ids = {w["id"] for w in listing["weights"]}
        assert {"rrim-x4-gray", "rrim-x4-rgb-psnr"} <= ids
        assert any(b["id"] == "rrim" for b in listing["backbones"])
    else:
        assert "rrim-x4-gray" in out and "rrim-x4-rgb-psnr" in out


def h_upscale_files(cmd, ws, capsys):
    _fresh("out")
    assert run(cmd) == 0
    check_sr(_read(ws / "out" / "img.tif"), _read(ws / "img.tif"))
    check_sr(_read(ws / "out" / "photo.png"), _read(ws / "photo.png"), channel_axis=-1)
    # inputs untouched, as the project promises
    assert sorted(p.name for p in ws.glob("*.tif")) == ["img.tif", "mosaic.tif"]


def h_evaluate(cmd, ws, capsys):
    cmd = cmd.replace("--model ID", "--model rrim-x4-rgb-psnr")  # ID: a weights id the README lets you pick
    Path("metrics.json").unlink(missing_ok=True)
    assert run(cmd) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out.upper()
    if "--json" in cmd:
        rows = json.loads(Path("metrics.json").read_text())
        text = json.dumps(rows)
        psnrs = [float(v) for v in re.findall(r'"psnr"\s*:\s*([0-9.]+)', text, re.IGNORECASE)]
        assert psnrs and all(15.0 < v < 60.0 for v in psnrs), psnrs
        assert "hr0.png" in text and "hr1.png" in text


def h_bench(cmd, ws, capsys):
    # as written it measures for minutes (192 px throughput, 768 px tiling, a 4096 px memory test);
    # --quick with the smallest sizes still runs every case and writes the same report
    cmd += " --quick --size 32 --tile-size 96 --mem-size 0 --no-rrdbnet --repeat 1 --overwrite"
    assert run(cmd) == 0
    if "--json" in cmd:
        report = json.loads(Path("bench.json").read_text())
        assert report and "Traceback" not in json.dumps(report)
        mpix = [float(v) for v in re.findall(r'"[a-z_]*mp_s"\s*:\s*([0-9.eE+-]+)', json.dumps(report))]
        assert mpix and all(v > 0 for v in mpix)


def h_export_bioimageio(cmd, ws, capsys):
    import zipfile

    import yaml

    Path("rrim-x4-gray.zip").unlink(missing_ok=True)
    assert run(cmd) == 0
    with zipfile.ZipFile("rrim-x4-gray.zip") as z:
        names = z.namelist()
        rdf = yaml.safe_load(z.read("rdf.yaml"))
    assert any(n.endswith(".safetensors") or n.endswith(".pt") for n in names)
    assert rdf["type"] == "model" and rdf["weights"]


def h_export_onnx(cmd, ws, capsys):
    import onnxruntime as ort

    Path("rrim-x4-rgb-psnr.onnx").unlink(missing_ok=True)
    assert run(cmd) == 0
    sess = ort.InferenceSession("rrim-x4-rgb-psnr.onnx", providers=["CPUExecutionProvider"])
    lr = _read(ws / "photo.png")
    x = (np.moveaxis(lr, -1, 0)[None].astype(np.float32)) / 255.0
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    sr = (np.clip(y[0], 0, 1) * 255).round().astype(np.uint8)
    check_sr(sr, np.moveaxis(lr, -1, 0), channel_axis=0)


def _check_volume_out(ws):
    check_sr(_zarr_image(ws / "out" / "volume.ome.zarr"), _zarr_image(ws / "volume.ome.zarr"))


def h_zarr_default(cmd, ws, capsys):
    _fresh("out")
    assert run(cmd) == 0, capsys.readouterr().err
    _check_volume_out(ws)


def h_zarr_local(cmd, ws, capsys):
    # 8 worker processes (each importing torch) on a 2-core runner: one shows the same path
    _fresh("out")
    assert run(cmd.replace("local:8", "local:1")) == 0, capsys.readouterr().err
    _check_volume_out(ws)


def h_zarr_tcp(cmd, ws, capsys):
    # "head:8786" is the user's own scheduler: here one this test starts (one in-process worker)
    distributed = pytest.importorskip("distributed")
    _fresh("out")
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    ) as cluster:
        assert run(cmd.replace("tcp://head:8786", cluster.scheduler_address)) == 0, capsys.readouterr().err
    _check_volume_out(ws)


def h_zarr_resume(cmd, ws, capsys):
    # after a finished run (the README's case is a killed one; tests/pipeline/test_zarr.py kills one)
    _fresh("out")
    assert run(cmd.replace(" --resume", "")) == 0, capsys.readouterr().err
    assert run(cmd) == 0, capsys.readouterr().err
    _check_volume_out(ws)


def h_zarr_plain(cmd, ws, capsys):
    _fresh("out")
    assert run(cmd) == 0, capsys.readouterr().err
    outs = list((ws / "out").glob("plain*.zarr"))
    assert len(outs) == 1, list((ws / "out").iterdir())
    check_sr(_zarr_image(outs[0]), np.asarray(__import__("zarr").open_array(str(ws / "plain.zarr"), mode="r")))


def h_zarr_mosaic(cmd, ws, capsys):
    _fresh("out")
    assert run(cmd) == 0, capsys.readouterr().err
    outs = list((ws / "out").glob("mosaic*.zarr"))
    assert len(outs) == 1, list((ws / "out").iterdir())
    check_sr(_zarr_image(outs[0]), _read(ws / "mosaic.tif"))


def h_bench_zarr(cmd, ws, capsys):
    # as written: 1 and 2 workers on a 16x192x192 volume plus a 4x larger memory run (minutes);
    # here one worker on a 2x48x48 volume, which runs the same measurement and report
    cmd += " --workers 1 --shape 2 48 48 --big-factor 0 --chunk 48 --json bench-zarr.json"
    Path("bench-zarr.json").unlink(missing_ok=True)
    assert run(cmd) == 0
    report = json.loads(Path("bench-zarr.json").read_text())
    speeds = [float(v) for v in re.findall(r'"out_mpix_s"\s*:\s*([0-9.eE+-]+)', json.dumps(report))]
    assert speeds and all(v > 0 for v in speeds)


# training: as written it trains 200000 steps of a full-size RRIM; here 2 steps of a tiny one
TINY_TRAIN = "--hparam num_feat=8 --hparam num_block=1 --batch-size 2 --patch-size 32 --threads 1 --no-progress"


def _vgg(path: Path) -> Path:
    """A random VGG16-shaped features file (the GAN stage's perceptual loss; no download here)."""
    import torch
    from safetensors.torch import save_file

    from napari_rrim_sr.training.losses import _conv_indices

    g = torch.Generator().manual_seed(0)
    sd, prev = {}, 3
    for i in _conv_indices("vgg16"):
        sd[f"features.{i}.weight"] = (torch.randn(4, prev, 3, 3, generator=g) * 0.3).half()
        sd[f"features.{i}.bias"] = torch.zeros(4).half()
        prev = 4
    save_file(sd, str(path))
    return path


def h_train_psnr(cmd, ws, capsys):
    from napari_rrim_sr.registry.core import get_registry, reset_registry
    from napari_rrim_sr.registry.loading import load_model

    cmd = cmd.replace("--steps 200000", "--steps 2") + " " + TINY_TRAIN
    _fresh("runs/my-psnr")
    assert run(cmd) == 0, capsys.readouterr().err
    path = ws / "runs" / "my-psnr" / "my-rrim-x4.safetensors"
    model = load_model(path)
    assert model.scale == 4
    reset_registry()
    assert "my-rrim-x4" in {w.id for w in get_registry().weights()}  # registered for `upscale --model`


def h_train_gan(cmd, ws, capsys):
    import torch
    from safetensors.torch import load_file

    init = ws / "runs" / "my-psnr" / "my-rrim-x4.safetensors"
    if not init.exists():
        h_train_psnr(next(c for c in readme_commands() if "--stage psnr" in c), ws, capsys)
    # `...`: the rest of the options, as for the PSNR stage, plus the perceptual loss's VGG weights
    rest = (
        f"--data my_hr_images/ --steps 2 --out runs/my-gan --name my-gan --vgg-weights {_vgg(ws / 'vgg.safetensors')}"
    )
    rest += " --d-hparam num_feat=8 --batch-size 2 --patch-size 32 --threads 1 --no-progress"
    _fresh("runs/my-gan")
    assert run(cmd.replace("...", rest)) == 0, capsys.readouterr().err
    gan = load_file(str(ws / "runs" / "my-gan" / "my-gan.safetensors"))
    psnr = load_file(str(init))
    assert gan.keys() == psnr.keys()
    assert any(not torch.equal(gan[k].float(), psnr[k].float()) for k in gan)  # it trained


def h_interpolate(cmd, ws, capsys):
    import torch
    from safetensors.torch import load_file

    # A and B: the shipped PSNR/GAN pair, the interpolation ESRGAN made known
    shutil.copy(ROOT / "weights" / "rrim-x4-rgb-psnr.safetensors", "A.safetensors")
    shutil.copy(ROOT / "weights" / "rrim-x4-rgb-gan.safetensors", "B.safetensors")
    Path("C.safetensors").unlink(missing_ok=True)
    assert run(cmd) == 0, capsys.readouterr().err
    a, b, c = (load_file(f"{n}.safetensors") for n in "ABC")
    assert c.keys() == a.keys()
    for k in a:
        want = 0.2 * a[k].float() + 0.8 * b[k].float()
        assert torch.allclose(c[k].float(), want, atol=2e-3, rtol=1e-2), k


def h_training_help(cmd, ws, capsys):
    assert run(cmd) == 0
    out = capsys.readouterr().out
    for word in ("train", "interpolate", "export", "finetune"):
        assert word in out


HANDLERS = [
    (r"^python -m napari_rrim_sr --help$", h_help),
    (r"^python -m napari_rrim_sr models( --json)?$", h_models),
    (r"^python -m napari_rrim_sr upscale img\.tif photo\.png -o out/$", h_upscale_files),
    (r"^python -m napari_rrim_sr evaluate hr/\*\.png --model ID( --json metrics\.json)?$", h_evaluate),
    (r"^python -m napari_rrim_sr bench( --json bench\.json)?$", h_bench),
    (r"^python -m napari_rrim_sr export --format bioimageio rrim-x4-gray -o rrim-x4-gray\.zip$", h_export_bioimageio),
    (r"^python -m napari_rrim_sr export --format onnx rrim-x4-rgb-psnr -o rrim-x4-rgb-psnr\.onnx$", h_export_onnx),
    (r"^python -m napari_rrim_sr upscale volume\.ome\.zarr -o out/$", h_zarr_default),
    (r"^python -m napari_rrim_sr upscale volume\.ome\.zarr -o out/ --scheduler local:8$", h_zarr_local),
    (r"^python -m napari_rrim_sr upscale volume\.ome\.zarr -o out/ --scheduler tcp://head:8786$", h_zarr_tcp),
    (r"^python -m napari_rrim_sr upscale volume\.ome\.zarr -o out/ --resume$", h_zarr_resume),
    (r"^python -m napari_rrim_sr upscale plain\.zarr -o out/ --axes czyx$", h_zarr_plain),
    (r"^python -m napari_rrim_sr upscale mosaic\.tif -o out/ --scheduler threads$", h_zarr_mosaic),
    (r"^python -m napari_rrim_sr bench-zarr$", h_bench_zarr),
    (r"^python -m napari_rrim_sr\.training train .*--stage psnr .*--steps 200000 .*$", h_train_psnr),
    (r"^python -m napari_rrim_sr\.training train --stage gan --init \S+ \.\.\.$", h_train_gan),
    (
        r"^python -m napari_rrim_sr\.training interpolate A\.safetensors B\.safetensors --alpha 0\.8 -o C\.safetensors$",
        h_interpolate,
    ),
    (r"^python -m napari_rrim_sr\.training --help$", h_training_help),
]


def handler(cmd: str):
    return next((fn for pat, fn in HANDLERS if re.match(pat, cmd)), None)


CASES = [v for c in readme_commands() if c not in SKIP for v in variants(c)]


def test_readme_has_commands_and_the_parser_reads_them():
    cmds = readme_commands()
    assert len(cmds) >= 15 and "python -m napari_rrim_sr --help" in cmds
    sample = "```bash\npython -m x a \\\n   b   # note\n# only a comment\n```\n"
    assert readme_commands(sample) == ["python -m x a b"]
    assert without_options("p up a -o o/ [--tile N|0] [--json f.json]", keep="--json") == "p up a -o o/ --json f.json"


def test_every_readme_command_has_a_handler():
    """A command added to the README needs a handler here (or a reason in SKIP)."""
    missing = [c for c in CASES if handler(c) is None]
    assert not missing, f"README commands without a test: {missing}"


@pytest.mark.parametrize("cmd", CASES, ids=[re.sub(r"\W+", "-", c.split(" ", 2)[-1])[:60] for c in CASES])
def test_readme_command(cmd, ws, capsys):
    fn = handler(cmd)
    if fn is None:
        pytest.fail(f"no handler for README command {cmd!r}")
    fn(cmd, ws, capsys)
