"""Training subpackage: ``python -m napari_rrim_sr.training`` trains, validates, exports and
registers weights (PSNR stage, GAN stage) for any registered backbone.

Modules: :mod:`.config` (the :class:`TrainConfig` dataclass, TOML), :mod:`.data` (HR images ->
on-the-fly LR/HR patches), :mod:`.losses` (pixel, VGG perceptual/Gram, SRGAN/ESRGAN adversarial),
:mod:`.trainer` (the loop and the run directory), :mod:`.steps` (LR schedule, EMA, PSNR and GAN
steps), :mod:`.checkpoint` (checkpoint/resume; imported by both the trainer and export),
:mod:`.runlog` (log.jsonl, log.csv, plots), :mod:`.validation` (evaluate's LR and metrics),
:mod:`.export` (weights export/registration, network interpolation), :mod:`.bench` (throughput),
:mod:`.measure` (robustness measurements of weights), :mod:`.cli`.

Importing this package does not import torch; the submodules do.
"""

from __future__ import annotations

from napari_rrim_sr.training.config import TrainConfig

__all__ = ["TrainConfig", "train", "Trainer", "export_run", "interpolate"]


def __getattr__(name):  # lazy: keep `import napari_rrim_sr.training` light
    if name in ("Trainer", "train", "TrainResult"):
        from napari_rrim_sr.training import trainer

        return getattr(trainer, name)
    if name in ("export_run", "interpolate"):
        from napari_rrim_sr.training import export

        return getattr(export, name)
    raise AttributeError(name)
