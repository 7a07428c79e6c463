"""Training configuration: one dataclass, readable from TOML, every key also a CLI flag.

Precedence (lowest to highest): the dataclass defaults, a ``--config FILE`` (TOML), on
``--resume`` the run's saved ``config.toml`` (when no ``--config`` is given), then the flags
given on the command line. The resolved configuration is written to the run directory as
``config.toml`` (re-usable with ``--config``) and ``config.json``.

TOML layout: flat keys named like the fields (``batch_size`` or ``batch-size``), plus the
tables ``[hparams]`` (generator hyper-parameters), ``[d_hparams]`` (discriminator) and
``[vgg_layers]`` (layer name -> weight). Relative paths are resolved against the current
working directory (run recipes from the repository root).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import tomllib

from napari_rrim_sr.engine.devices import PRECISIONS, STORE_DTYPES
from napari_rrim_sr.errors import RRIMError


class ConfigError(RRIMError, ValueError):
    """A configuration value is missing, unknown or out of range."""


#: (perceptual, adversarial, pixel) loss weights of the two GAN styles (see losses.py).
GAN_STYLE_DEFAULTS = {
    # SRGAN (Ledig et al.): VGG content loss + 1e-3 adversarial (the study's setting).
    "srgan": {"percep_weight": 1.0, "adv_weight": 1e-3, "pixel_weight": 0.0},
    # ESRGAN (Wang et al.): L_percep + 5e-3 L_Ra + 1e-2 L1.
    "esrgan": {"percep_weight": 1.0, "adv_weight": 5e-3, "pixel_weight": 1e-2},
}


@dataclass
class TrainConfig:
    # -- run ----------------------------------------------------------------------------------
    name: str = ""
    """Run and weights name (default: BACKBONE-xSCALE-{rgb,gray}-STAGE-DATAFOLDER)."""
    out: str = ""
    """Run directory (default: runs/NAME)."""
    description: str = ""
    """Free text stored in the exported weights' metadata."""
    seed: int = 0
    """Seed of the model initialisation and of the patch sampler (sample i depends on (seed, i) only)."""
    # -- data ---------------------------------------------------------------------------------
    data: list[str] = field(default_factory=list)
    """HR training images: folders (searched recursively) and/or files."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns (matched against file names and full paths) of images to leave out, e.g. held-out files."""
    val: str = ""
    """Validation folder or file list (full images, mod-crop, LR by MATLAB-style bicubic)."""
    val_limit: int = 0
    """Use at most this many validation images (0 = all)."""
    val_crop: int = 0
    """Centre-crop validation images to at most this HR side (0 = full images)."""
    val_tile: int = 0
    """Tile size for validation inference by the engine (0 = the engine's default)."""
    normalize: str = "auto"
    """Intensity scaling to 0..1: auto (8-bit: /255; 16-bit, float: percentiles), dtype, percentile, minmax."""
    percentiles: list[float] = field(default_factory=lambda: [0.1, 99.9])
    """Low/high percentiles for normalize=percentile (and auto on non-8-bit images)."""
    cache: str = "memory"
    """Decoded-image cache: memory, disk (.npy files, memory-mapped) or none (decode per patch)."""
    cache_dir: str = ""
    """Folder for cache=disk (default: RUN_DIR/cache)."""
    min_size: int = 0
    """Skip images whose smaller side is below this (0 = the patch size)."""
    # -- model --------------------------------------------------------------------------------
    backbone: str = ""
    """Registered generator id (default rrim, or the --init file's backbone)."""
    hparams: dict[str, Any] = field(default_factory=dict)
    """Generator hyper-parameters (--hparam KEY=VALUE, repeatable)."""
    scale: int = 0
    """Upscaling factor (0 = 4, or the --init file's)."""
    channels: int = 0
    """Model channels: 3 (RGB) or 1 (gray; RGB data is converted to luminance); 0 = 3, or the --init file's."""
    init: str = ""
    """Weights file (.safetensors/.pth) or registry id to start from (required for stage gan)."""
    # -- optimisation -------------------------------------------------------------------------
    stage: str = "psnr"
    """psnr (pixel loss only) or gan (perceptual + adversarial + pixel)."""
    steps: int = 100000
    """Total optimiser steps."""
    batch_size: int = 16
    """HR patches per step."""
    patch_size: int = 128
    """HR patch side (the LR patch is patch_size / scale)."""
    lr: float = 2e-4
    """Generator learning rate (peak)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    """Adam betas."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    schedule: str = "cosine"
    """Learning-rate schedule: cosine, step or constant."""
    warmup: int = 0
    """Linear warm-up steps."""
    lr_min: float = 1e-7
    """Final learning rate of the cosine schedule."""
    milestones: list[int] = field(default_factory=list)
    """Steps at which the step schedule multiplies the LR by gamma (default: 50%, 75%, 90% of steps)."""
    gamma: float = 0.5
    """LR factor of the step schedule."""
    ema: float = 0.999
    """EMA decay of the generator weights (0 = off); validation and export use the EMA model."""
    grad_clip: float = 1.0
    """Clip the global gradient norm (0 = off)."""
    pixel_loss: str = "l1"
    """Pixel loss: l1, mse or charbonnier."""
    # -- GAN stage ----------------------------------------------------------------------------
    gan_type: str = "esrgan"
    """Adversarial loss: srgan (standard BCE) or esrgan (relativistic average)."""
    pixel_weight: float | None = None
    """Pixel-loss weight in the GAN stage (default from gan_type: srgan 0, esrgan 1e-2)."""
    percep_weight: float | None = None
    """Perceptual-loss weight (default 1)."""
    adv_weight: float | None = None
    """Adversarial weight (default from gan_type: srgan 1e-3, esrgan 5e-3)."""
    gram_weight: float = 0.0
    """Gram-matrix (style) loss weight on the same VGG layers (fastai feature loss; 0 = off)."""
    vgg_weights: str = ""
    """VGG16/19 features in torchvision key layout (.safetensors/.pth), or torchvision:vgg19 (needs internet once)."""
    vgg_arch: str = "auto"
    """vgg16, vgg19 or auto (from the number of conv layers in the file)."""
    vgg_input: str = "auto"
    """VGG input convention: bgr-caffe (BGR 0..255 minus Caffe mean), rgb-imagenet, rgb-01, or auto."""
    vgg_layers: dict[str, float] = field(default_factory=dict)
    """Layer -> weight, e.g. {conv5_4 = 1.0}; conv* = before activation, relu* = after (default: last conv, before activation)."""
    percep_criterion: str = "l1"
    """Distance between feature maps: l1 or mse."""
    discriminator: str = "srgan-discriminator"
    """Registered discriminator id."""
    d_hparams: dict[str, Any] = field(default_factory=dict)
    """Discriminator hyper-parameters."""
    d_lr: float = 0.0
    """Discriminator learning rate (0 = same as lr)."""
    # -- degradations (LR made on the fly) ----------------------------------------------------
    blur_sigma: list[float] = field(default_factory=lambda: [0.0, 0.0])
    """Gaussian blur of the HR patch before downscaling: sigma range in HR pixels ([0,0] = off)."""
    blur_prob: float = 1.0
    """Probability of applying the blur when blur_sigma is set."""
    alias_prob: float = 0.0
    """Probability of downscaling without bicubic's antialiasing filter: a sharper, aliased LR,
    like imagery decimated or resampled to a coarser grid by nearest neighbour."""
    noise_sigma: list[float] = field(default_factory=lambda: [0.0, 0.0])
    """Additive Gaussian noise on the LR: sigma range in 0..255 units ([0,0] = off)."""
    noise_prob: float = 1.0
    """Probability of Gaussian noise when noise_sigma is set."""
    poisson_peak: list[float] = field(default_factory=lambda: [0.0, 0.0])
    """Poisson (shot) noise: range of photon counts at full scale ([0,0] = off)."""
    poisson_prob: float = 1.0
    """Probability of Poisson noise when poisson_peak is set."""
    jpeg_quality: list[int] = field(default_factory=lambda: [0, 0])
    """JPEG re-compression of the LR: quality range ([0,0] = off)."""
    jpeg_prob: float = 1.0
    """Probability of JPEG compression when jpeg_quality is set."""
    quantize_lr: bool = True
    """Round the LR to the source's bit depth, as an LR image file would be."""
    augment: bool = True
    """Random flips and 90-degree rotations."""
    # -- hardware -----------------------------------------------------------------------------
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps."""
    precision: str = "auto"
    """fp32, bf16 or fp16 autocast (auto: bf16 on CUDA/CPU where supported, else fp32)."""
    channels_last: str = "auto"
    """Use the channels-last memory format: auto (on CPU), on, off."""
    threads: int = 0
    """CPU threads for torch (0 = torch's default)."""
    workers: int = 0
    """DataLoader worker processes (0 = load in the main process)."""
    compile: bool = False
    """torch.compile the generator."""
    max_minutes: float = 0.0
    """Wall-clock budget of this session in minutes: stop, validate and export when spent (0 = off)."""
    # -- bookkeeping --------------------------------------------------------------------------
    val_every: int = 5000
    """Validate every N steps (and at the end; 0 = only at the end)."""
    ckpt_every: int = 5000
    """Write a checkpoint every N steps (and at the end)."""
    keep_ckpts: int = 2
    """Keep this many step checkpoints (last.pt is always kept)."""
    log_every: int = 50
    """Log training losses every N steps."""
    progress: bool = True
    """Show a tqdm progress bar."""
    register: bool = True
    """At the end of a completed run, export the weights and register them in the user weights folder."""
    export_dtype: str = "fp32"
    """dtype of exported weights: fp32, fp16 or bf16."""

    # ------------------------------------------------------------------------------------------
    def resolved_name(self) -> str:
        if self.name:
            return self.name
        color = "gray" if self.channels == 1 else "rgb"
        name = f"{self.backbone or 'rrim'}-x{self.scale or 4}-{color}-{self.stage}"
        if self.data:  # never the id of a shipped model: add the data folder's name
            tag = Path(self.data[0]).expanduser().resolve().name or "data"
            name += "-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)
        return name

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.resolved_name()

    def gan_weights(self) -> dict[str, float]:
        """The effective (percep, adv, pixel) weights after applying the gan_type defaults."""
        base = dict(GAN_STYLE_DEFAULTS[self.gan_type])
        for key in base:
            value = getattr(self, key)
            if value is not None:
                base[key] = float(value)
        return base

    def validate(self) -> "TrainConfig":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.stage in ("psnr", "gan"), f"stage must be psnr or gan, not {self.stage!r}")
        need(self.steps >= 1, "steps must be >= 1")
        need(self.batch_size >= 1, "batch_size must be >= 1")
        need(self.scale in (0, 2, 3, 4, 8), f"unsupported scale {self.scale}")
        s = self.scale or 4
        need(
            self.patch_size >= 4 * s and self.patch_size % s == 0,
            f"patch_size ({self.patch_size}) must be a multiple of scale ({s}) and at least {4 * s}",
        )
        need(self.channels in (0, 1, 3), "channels must be 1 or 3")
        need(self.lr > 0, "lr must be > 0")
        need(len(self.betas) == 2, "betas needs two values")
        need(self.schedule in ("cosine", "step", "constant"), f"unknown schedule {self.schedule!r}")
        need(0.0 <= self.ema < 1.0, "ema must be in [0, 1)")
        need(self.pixel_loss in ("l1", "mse", "charbonnier"), f"unknown pixel_loss {self.pixel_loss!r}")
        need(self.gan_type in GAN_STYLE_DEFAULTS, f"gan_type must be one of {sorted(GAN_STYLE_DEFAULTS)}")
        need(self.percep_criterion in ("l1", "mse"), "percep_criterion must be l1 or mse")
        need(self.vgg_arch in ("auto", "vgg16", "vgg19"), "vgg_arch must be auto, vgg16 or vgg19")
        need(
            self.vgg_input in ("auto", "bgr-caffe", "rgb-imagenet", "rgb-01"),
            "vgg_input must be auto, bgr-caffe, rgb-imagenet or rgb-01",
        )
        need(self.normalize in ("auto", "dtype", "percentile", "minmax"), f"unknown normalize {self.normalize!r}")
        need(
            len(self.percentiles) == 2 and 0 <= self.percentiles[0] < self.percentiles[1] <= 100,
            "percentiles must be two increasing values in 0..100",
        )
        need(self.cache in ("memory", "disk", "none"), "cache must be memory, disk or none")
        need(self.precision in PRECISIONS, f"unknown precision {self.precision!r}")
        need(self.channels_last in ("auto", "on", "off"), "channels_last must be auto, on or off")
        need(self.export_dtype in STORE_DTYPES, "export_dtype must be fp32, fp16 or bf16")
        for key in ("blur_sigma", "noise_sigma", "poisson_peak", "jpeg_quality"):
            v = getattr(self, key)
            need(len(v) == 2 and 0 <= v[0] <= v[1], f"{key} must be a range [low, high] with 0 <= low <= high")
        need(self.jpeg_quality[1] <= 100, "jpeg_quality must be within 0..100")
        for key in ("blur_prob", "alias_prob", "noise_prob", "poisson_prob", "jpeg_prob"):
            need(0.0 <= getattr(self, key) <= 1.0, f"{key} must be a probability")
        need(self.max_minutes >= 0, "max_minutes must be >= 0")
        for key in (
            "val_every",
            "ckpt_every",
            "log_every",
            "workers",
            "threads",
            "val_limit",
            "val_crop",
            "keep_ckpts",
            "warmup",
        ):
            need(getattr(self, key) >= 0, f"{key} must be >= 0")
        for k, w in self.vgg_layers.items():
            need(_is_number(w), f"vgg_layers[{k!r}] must be a number")
        if self.stage == "gan":
            need(
                bool(self.vgg_weights) or (self.percep_weight == 0 and self.gram_weight == 0),
                "stage gan needs --vgg-weights (a VGG16/19 features file), or --percep-weight 0",
            )
        need(bool(self.data), "no training data: give --data DIR (or data = [...] in the config)")
        return self

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: "TrainConfig | None" = None) -> "TrainConfig":
        cfg = dataclasses.replace(base) if base is not None else cls()
        known = {f.name: f for f in fields(cls)}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key not in known:
                close = _close_matches(key, known)
                raise ConfigError(f"unknown config key {raw_key!r}" + (f" (did you mean {close}?)" if close else ""))
            setattr(cfg, key, coerce(known[key], value))
        return cfg

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    def save(self, folder: Path) -> None:
        """config.toml and config.json of a run (replaced atomically on resume)."""
        from napari_rrim_sr.jsonable import jsonable
        from napari_rrim_sr.safe_write import atomic_write

        folder = Path(folder)
        atomic_write(folder / "config.toml", self.to_toml(), overwrite=True)
        atomic_write(folder / "config.json", json.dumps(jsonable(self.to_dict()), indent=2) + "\n", overwrite=True)


def load_toml(path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _close_matches(key: str, known) -> str:
    import difflib

    return ", ".join(difflib.get_close_matches(key, list(known), n=3))


def _plain(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def parse_scalar(text: str) -> Any:
    """Interpret a command-line value: TOML literal (number, bool, list) else a plain string."""
    text = text.strip()
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def coerce(f: dataclasses.Field, value: Any) -> Any:
    """Convert ``value`` to the type of field ``f`` with a clear error."""
    name, kind = f.name, str(f.type)
    try:
        if value is None:
            if "None" in kind:
                return None
            raise ValueError("a value is required")
        if kind.startswith("dict"):
            if not isinstance(value, Mapping):
                raise ValueError("expected a table of KEY = VALUE")
            if "float" in kind:
                return {str(k): float(v) for k, v in value.items()}
            return {str(k): v for k, v in value.items()}
        if kind.startswith("list"):
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                value = [value]
            value = list(value)
            if "list[float]" in kind:
                return [float(v) for v in value]
            if "list[int]" in kind:
                return [int(_intlike(v)) for v in value]
            return [str(v) for v in value]
        if kind == "bool":
            if isinstance(value, str):
                parsed = parse_scalar(value)
                if not isinstance(parsed, bool):
                    raise ValueError("expected true or false")
                return parsed
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if kind == "int":
            return int(_intlike(value))
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError("expected a number")
            v = float(value)
            if math.isnan(v):
                raise ValueError("NaN is not allowed")
            return v
        if kind == "str":
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key {name!r}: bad value {value!r} ({exc})") from None
    return value


def _intlike(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError("expected an integer")
        return int(v)
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            return _intlike(float(v))
    return int(v)


# -- a minimal TOML writer (tomllib reads only) ----------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    return json.dumps(str(v))


def _toml_key(k: str) -> str:
    k = str(k)
    if k and all(c.isalnum() or c in "-_" for c in k):
        return k
    return json.dumps(k)


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Serialise flat values, then one table per dict value. ``None`` values are omitted
    (TOML has no null; loading falls back to the default, which is None for those keys)."""
    lines = []
    tables = []
    for k, v in data.items():
        if v is None:
            continue
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in tables:
        lines.append("")
        lines.append(f"[{_toml_key(k)}]")
        for kk, vv in v.items():
            if vv is not None:
                lines.append(f"{_toml_key(kk)} = {_toml_value(vv)}")
    return "\n".join(lines) + "\n"


def field_help() -> dict[str, str]:
    """Field name -> the docstring written under it (used for --help)."""
    import ast
    import inspect

    src = inspect.getsource(TrainConfig)
    tree = ast.parse(src)
    out: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                out[node.target.id] = str(nxt.value.value)
    return out
