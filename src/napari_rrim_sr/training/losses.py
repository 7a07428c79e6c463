"""Losses: pixel (L1 / MSE / Charbonnier), VGG perceptual and Gram, SRGAN and ESRGAN adversarial.

Perceptual loss
---------------
:class:`VGGFeatures` rebuilds torchvision's ``vgg16().features`` / ``vgg19().features``
(``features.N.weight/bias`` keys) from a user file, so no download is needed: a
``.safetensors`` or ``.pth`` (read with ``weights_only=True``) holding at least the conv weights
in that layout (extra keys such as ``classifier.*`` or ``hed.*`` are ignored; fp16 is cast to
fp32). ``torchvision:vgg19`` / ``torchvision:vgg16`` load torchvision's ImageNet weights when
torchvision is installed and the weights are cached or downloadable.

Layer names follow the usual convention: ``convB_K`` is the K-th conv of block B *before* its
ReLU (ESRGAN's choice), ``reluB_K`` the same after the ReLU (SRGAN's "VGG54" = ``relu5_4``).

Input conventions (the images are RGB or gray in 0..1; gray is replicated to RGB):

* ``bgr-caffe``: BGR, 0..255, minus the Caffe mean (103.939, 116.779, 123.68) -- Caffe/Keras
  VGG ports such as the shared ``vgg16_hed_bsds500.safetensors``;
* ``rgb-imagenet``: RGB, ``(x - mean) / std`` with torchvision's ImageNet statistics;
* ``rgb-01``: RGB in 0..1 as it is.

Adversarial losses (the discriminator returns raw logits)
--------------------------------------------------------
* ``srgan``: ``L_G = BCE(D(G(x)), 1)``, ``L_D = BCE(D(y), 1) + BCE(D(G(x)), 0)``; SRGAN's total
  generator loss is ``l_VGG + 1e-3 * L_G`` (the study's setting): defaults percep 1, adv 1e-3,
  pixel 0.
* ``esrgan`` (relativistic average, D_Ra(a, b) = sigma(C(a) - E[C(b)])):
  ``L_G = -E[log(1 - D_Ra(y, G))] - E[log D_Ra(G, y)]``, ``L_D`` the mirror image; ESRGAN's
  total ``L_percep + 5e-3 * L_G + 1e-2 * L1``: defaults percep 1, adv 5e-3, pixel 1e-2.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_rrim_sr.errors import RRIMError

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VGG_CFG = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class LossError(RRIMError):
    """A loss cannot be set up (bad VGG file, unknown layer...)."""


# -- pixel losses -----------------------------------------------------------------------------


def pixel_loss(kind: str):
    if kind == "l1":
        return nn.L1Loss()
    if kind == "mse":
        return nn.MSELoss()
    if kind == "charbonnier":
        return CharbonnierLoss()
    raise LossError(f"unknown pixel loss {kind!r} (l1, mse, charbonnier)")


class CharbonnierLoss(nn.Module):
    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = eps

    def forward(self, x, y):
        return torch.sqrt((x - y) ** 2 + self.eps**2).mean()


# -- VGG features -----------------------------------------------------------------------------


def vgg_layer_names(arch: str) -> list[str]:
    """Names of the modules of torchvision's ``features`` in order: conv1_1, relu1_1, ..., pool1, ..."""
    names, block, k = [], 1, 0
    for v in VGG_CFG[arch]:
        if v == "M":
            names.append(f"pool{block}")
            block, k = block + 1, 0
        else:
            k += 1
            names += [f"conv{block}_{k}", f"relu{block}_{k}"]
    return names


def _conv_indices(arch: str) -> list[int]:
    return [i for i, n in enumerate(vgg_layer_names(arch)) if n.startswith("conv")]


def read_vgg_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a VGG file without unpickling code, ``features.`` prefix normalised."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LossError(f"VGG weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
        except Exception as exc:
            raise LossError(f"{path}: cannot read safetensors ({exc})") from None
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LossError(f"{path}: cannot be read with weights_only=True ({str(exc).splitlines()[0]})") from None
        if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise LossError(f"{path}: expected a state dict, got {type(obj).__name__}")
        sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("module.")
        if k.startswith("vgg."):
            k = k[4:]
        if re.match(r"^\d+\.(weight|bias)$", k):  # a bare `features` module's state dict
            k = "features." + k
        out[k] = v
    return out


def detect_vgg_arch(sd: Mapping[str, torch.Tensor]) -> str:
    convs = sorted(int(m.group(1)) for k in sd if (m := re.match(r"^features\.(\d+)\.weight$", k)) and sd[k].ndim == 4)
    for arch in ("vgg16", "vgg19"):
        if convs == _conv_indices(arch):
            return arch
    if any(k.startswith("features.") and k.endswith("running_mean") for k in sd):
        raise LossError("VGG with batch norm (vgg*_bn) is not supported; use plain VGG16/VGG19 weights")
    raise LossError(
        "not a VGG16/VGG19 `features` state dict in torchvision key layout "
        f"(found conv indices {convs[:20]}; expected {_conv_indices('vgg16')} or {_conv_indices('vgg19')})"
    )


class VGGFeatures(nn.Module):
    """Frozen VGG ``features`` truncated after the deepest requested layer.

    ``forward(x)`` takes RGB (or gray, replicated) images in 0..1 and returns ``{layer: map}``.
    """

    def __init__(
        self,
        state_dict: Mapping[str, torch.Tensor],
        layers: Sequence[str],
        *,
        arch: str = "auto",
        input_convention: str = "bgr-caffe",
    ):
        super().__init__()
        found = detect_vgg_arch(state_dict)
        if arch not in ("auto", found):
            raise LossError(f"the VGG file holds {found} weights, not {arch}")
        self.arch = found
        names = vgg_layer_names(found)
        unknown = [l for l in layers if l not in names or l.startswith("pool")]
        if unknown:
            convs = [n for n in names if n.startswith("conv")]
            raise LossError(
                f"unknown {found} layer(s) {unknown}; use convB_K (before ReLU) or reluB_K "
                f"(after), e.g. {convs[-1]}; available: {', '.join(convs)}"
            )
        if not layers:
            raise LossError("no VGG layers requested")
        self.layers = list(layers)
        last = max(names.index(l) for l in layers)
        mods: list[nn.Module] = []
        prev = 3
        for i, name in enumerate(names[: last + 1]):
            if name.startswith("conv"):
                w = state_dict[f"features.{i}.weight"]
                b = state_dict.get(f"features.{i}.bias")
                conv = nn.Conv2d(prev, w.shape[0], 3, 1, 1, bias=b is not None)
                if tuple(w.shape) != tuple(conv.weight.shape):
                    raise LossError(
                        f"features.{i}.weight has shape {tuple(w.shape)}, expected {tuple(conv.weight.shape)}"
                    )
                with torch.no_grad():
                    conv.weight.copy_(w.float())
                    if b is not None:
                        conv.bias.copy_(b.float())
                mods.append(conv)
                prev = w.shape[0]
            elif name.startswith("relu"):
                mods.append(nn.ReLU(inplace=False))
            else:
                mods.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*mods)
        self.names = names[: last + 1]
        self.input_convention = input_convention
        if input_convention == "bgr-caffe":
            mean, std = torch.tensor(CAFFE_MEAN_BGR[::-1]) / 255.0, torch.full((3,), 1.0 / 255.0)
        elif input_convention == "rgb-imagenet":
            mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        elif input_convention == "rgb-01":
            mean, std = torch.zeros(3), torch.ones(3)
        else:
            raise LossError(f"unknown VGG input convention {input_convention!r}")
        # normalisation in RGB order; BGR is a channel flip applied after it
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)
        self.bgr = input_convention == "bgr-caffe"
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always frozen, always eval
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if self.bgr:
            x = x.flip(1)
        out = {}
        want = set(self.layers)
        for name, mod in zip(self.names, self.features):
            x = mod(x)
            if name in want:
                out[name] = x
        return out


def build_vgg(
    weights: str, layers: Sequence[str], *, arch: str = "auto", input_convention: str = "auto"
) -> VGGFeatures:
    """A :class:`VGGFeatures` from a file (``bgr-caffe`` assumed for ``auto``) or from
    ``torchvision:vgg16`` / ``torchvision:vgg19`` (``rgb-imagenet``)."""
    if weights.startswith("torchvision:"):
        name = weights.split(":", 1)[1] or "vgg19"
        try:
            import torchvision
        except ImportError:
            raise LossError(f"{weights} needs torchvision (not installed); give a VGG weights file instead") from None
        if name not in ("vgg16", "vgg19"):
            raise LossError(f"torchvision model must be vgg16 or vgg19, not {name!r}")
        try:
            model = getattr(torchvision.models, name)(weights="IMAGENET1K_V1")
        except Exception as exc:
            raise LossError(f"cannot load torchvision {name} ImageNet weights (offline?): {exc}") from None
        sd = {f"features.{k}": v for k, v in model.features.state_dict().items()}
        conv = "rgb-imagenet" if input_convention == "auto" else input_convention
        return VGGFeatures(sd, layers, arch=name, input_convention=conv)
    sd = read_vgg_state_dict(weights)
    conv = "bgr-caffe" if input_convention == "auto" else input_convention
    return VGGFeatures(sd, layers, arch=arch, input_convention=conv)


def default_vgg_layers(arch: str) -> dict[str, float]:
    """ESRGAN's choice: the last conv of block 5 before activation (conv5_4 / conv5_3)."""
    return {"conv5_4" if arch == "vgg19" else "conv5_3": 1.0}


def gram_matrix(f: torch.Tensor) -> torch.Tensor:
    n, c, h, w = f.shape
    f = f.reshape(n, c, h * w).float()
    return f @ f.transpose(1, 2) / (c * h * w)


class PerceptualLoss(nn.Module):
    """Weighted feature distance (and optional Gram-matrix distance) over VGG layers.

    Returns ``(percep, gram)``; the target's features are computed without gradient.
    """

    def __init__(self, vgg: VGGFeatures, layer_weights: Mapping[str, float], criterion: str = "l1", gram: bool = False):
        super().__init__()
        self.vgg = vgg
        self.layer_weights = {k: float(v) for k, v in layer_weights.items()}
        self.dist = F.l1_loss if criterion == "l1" else F.mse_loss
        self.gram = gram

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fs = self.vgg(sr)
        with torch.no_grad():
            fh = self.vgg(hr.detach())
        percep = sr.new_zeros((), dtype=torch.float32)
        gram = sr.new_zeros((), dtype=torch.float32)
        for name, w in self.layer_weights.items():
            a, b = fs[name].float(), fh[name].float()
            percep = percep + w * self.dist(a, b)
            if self.gram:
                gram = gram + w * F.l1_loss(gram_matrix(a), gram_matrix(b))
        return percep, gram


# -- adversarial losses -----------------------------------------------------------------------


class AdversarialLoss:
    """``generator(real_logits, fake_logits)`` and ``discriminator(real_logits, fake_logits)``."""

    def __init__(self, kind: str = "esrgan"):
        if kind not in ("srgan", "esrgan"):
            raise LossError(f"unknown GAN type {kind!r} (srgan, esrgan)")
        self.kind = kind

    @staticmethod
    def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
        logits = logits.float()
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))

    def generator(self, real: torch.Tensor | None, fake: torch.Tensor) -> torch.Tensor:
        if self.kind == "srgan":
            return self._bce(fake, 1.0)
        real = real.detach()
        return 0.5 * (self._bce(real - fake.mean(), 0.0) + self._bce(fake - real.mean(), 1.0))

    def discriminator(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        if self.kind == "srgan":
            return self._bce(real, 1.0) + self._bce(fake, 0.0)
        return 0.5 * (self._bce(real - fake.mean(), 1.0) + self._bce(fake - real.mean(), 0.0))


def perceptual_loss_for(cfg) -> "PerceptualLoss":
    """The GAN stage's perceptual (and Gram) loss of a :class:`~.config.TrainConfig`: the VGG
    file or torchvision name, its architecture and layers (the defaults of the detected
    architecture when ``vgg_layers`` is empty) and input convention. Fills ``cfg.vgg_layers``
    and ``cfg.vgg_input`` with what was resolved, so the run's config records them."""
    layers = dict(cfg.vgg_layers)
    if not layers:
        arch = cfg.vgg_arch
        if arch == "auto":
            arch = (
                ("vgg19" if cfg.vgg_weights.endswith("vgg19") else "vgg16")
                if cfg.vgg_weights.startswith("torchvision:")
                else detect_vgg_arch(read_vgg_state_dict(cfg.vgg_weights))
            )
        layers = default_vgg_layers(arch)
        cfg.vgg_layers = layers
    vgg = build_vgg(cfg.vgg_weights, list(layers), arch=cfg.vgg_arch, input_convention=cfg.vgg_input)
    if cfg.vgg_input == "auto":
        cfg.vgg_input = vgg.input_convention
    return PerceptualLoss(vgg, layers, cfg.percep_criterion, gram=cfg.gram_weight > 0)
