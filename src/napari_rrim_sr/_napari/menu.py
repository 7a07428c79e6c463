"""The Layers ▸ Transform ▸ Upscale (RRIM x4) command.

It docks the upscale widget (or brings the docked one forward) preset to the active layer.
napari injects the current viewer (as a public-only proxy, which we unwrap: the widget needs
the viewer itself, as napari gives it to dock widgets).
"""

import napari.viewer
from napari.layers import Image
from napari.utils.notifications import show_info

from napari_rrim_sr._napari import PLUGIN_NAME, UPSCALE_WIDGET_NAME


def upscale_active_layer(viewer: napari.viewer.Viewer):
    """Open the *Upscale (RRIM x4)* widget with the active layer as its source."""
    viewer = getattr(viewer, "__wrapped__", viewer)
    layer = viewer.layers.selection.active
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, UPSCALE_WIDGET_NAME)
    widget = getattr(widget, "__wrapped__", widget)
    if isinstance(layer, Image):
        widget.set_source(layer)
    elif layer is not None:
        show_info(
            f"'{layer.name}' is a {type(layer).__name__} layer; Upscale (RRIM x4) works on image "
            "layers: pick one in the widget."
        )
    return widget
