"""Bring your own checkpoint: validate a weights file by loading it, optionally install it.

This is what a *Weights file…* button (or ``models --add``) calls. A file is accepted only if it
loads: detection names its architecture and every tensor matches (``.pth`` via
``torch.load(weights_only=True)``, never unpickled code). Installing writes a ``.safetensors``
copy with napari-rrim-sr metadata (backbone, hparams, the source file's name and sha256) into
the user weights folder through :mod:`.safe_write`, so the registry lists it next time; the
source file is never modified.
"""

from __future__ import annotations

import re
from pathlib import Path

from napari_rrim_sr.errors import WeightsError
from napari_rrim_sr.registry.core import WeightsEntry, get_registry, user_weights_dir


def _safe_name(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip("-.")
    return name or "weights"


def add_user_weights(
    path, *, copy: bool = True, name: str | None = None, overwrite: bool = False, registry=None
) -> WeightsEntry:
    """Validate ``path`` by loading it; with ``copy`` install it in the user weights folder.

    Returns the :class:`~.registry.WeightsEntry` to list: the installed copy (``source="user"``)
    or, without ``copy``, the file itself (``source="file"``). Raises
    :class:`~.errors.WeightsError` naming the file if it does not load, or if a different file
    is already installed under the same name and ``overwrite`` is False.
    """
    from napari_rrim_sr.registry.loading import file_sha256, load_model, load_state_dict, save_weights
    from napari_rrim_sr.safe_write import atomic_write

    registry = registry or get_registry()
    src = Path(path).expanduser()
    loaded = load_model(src, registry=registry)  # raises WeightsError with the reason
    wid = _safe_name(name or src.stem)
    entry_kw = dict(
        backbone=loaded.backbone, scale=loaded.scale, in_channels=loaded.in_channels, out_channels=loaded.out_channels
    )
    if not copy:
        return WeightsEntry(
            id=wid,
            path=src,
            source="file",
            description=f"{loaded.backbone} from {src.name}",
            metadata={"hparams": loaded.hparams},
            **entry_kw,
        )
    dest = user_weights_dir(create=True) / f"{wid}.safetensors"
    sd, _ = load_state_dict(src)
    source_sha = file_sha256(src)
    if dest.exists() and not overwrite:
        from napari_rrim_sr.registry.loading import read_metadata

        if read_metadata(dest).get("source_sha256") != source_sha:
            raise WeightsError(dest, "a different weights file with this name is installed (pass overwrite=True)")
    description = f"{loaded.backbone} x{loaded.scale}, {loaded.in_channels} channel(s), from {src.name}"

    def write(tmp: Path) -> None:  # safe_write's temporary keeps the .safetensors suffix
        save_weights(
            tmp,
            sd,
            backbone=loaded.backbone,
            hparams=loaded.hparams,
            name=wid,
            description=description,
            overwrite=True,
            extra={"source_file": src.name, "source_sha256": source_sha},
        )

    atomic_write(dest, write, overwrite=True, protect=[src])
    registry.weights(refresh=True)
    return registry.find_weights(wid)


__all__ = ["add_user_weights"]
