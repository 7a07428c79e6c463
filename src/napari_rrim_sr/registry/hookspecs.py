"""pluggy hook specifications through which packages contribute backbones and weights.

A third-party package declares an entry point in the ``napari_rrim_sr`` group pointing at a
module (or object) with functions decorated by :data:`hookimpl`::

    # pyproject.toml of "my-sr"
    [project.entry-points.napari_rrim_sr]
    my_sr = "my_sr.rrim_plugin"

    # my_sr/rrim_plugin.py
    from napari_rrim_sr.registry.hookspecs import hookimpl
    from napari_rrim_sr.registry.core import BackboneSpec  # (defined in napari_rrim_sr.registry.spec)

    @hookimpl
    def napari_rrim_sr_backbones():
        return [BackboneSpec(id="my-net", builder=MyNet, defaults={"num_feat": 32}, ...)]

    @hookimpl
    def napari_rrim_sr_weights():
        return [Path(__file__).parent / "my-net-x4.safetensors"]

The built-in backbones are registered the same way, by :mod:`napari_rrim_sr.registry.builtin`.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "napari_rrim_sr"
ENTRY_POINT_GROUP = "napari_rrim_sr"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def napari_rrim_sr_backbones():
    """Return a list of :class:`napari_rrim_sr.registry.core.BackboneSpec` this plugin provides."""


@hookspec
def napari_rrim_sr_weights():
    """Return a list of paths to weights files (``.safetensors``) this plugin ships.

    Each file must carry napari-rrim-sr metadata (see :mod:`napari_rrim_sr.registry.file_format`) naming a
    registered backbone.
    """
