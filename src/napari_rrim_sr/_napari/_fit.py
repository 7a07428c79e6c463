"""Small Qt helpers that keep a dock within its width (issue 24: docks that scroll sideways cut
their figures, tables and buttons)."""

from __future__ import annotations


def shrinkable(combo, min_chars: int = 10) -> None:
    """A combo box that may be narrower than its longest entry (a weights id with its details, a
    long mode name): otherwise the whole dock scrolls sideways."""
    try:
        from qtpy.QtWidgets import QComboBox

        combo.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.native.setMinimumContentsLength(min_chars)
    except (AttributeError, ImportError):  # pragma: no cover - non-Qt backend
        pass


def full_width(widget) -> None:
    """Let an unlabelled item of a labelled container use the whole dock width (magicgui keeps
    an empty label column in front of it: figures and tables would lose a third of the width)."""
    try:
        labeled = widget._labeled_widget()
        if labeled is not None:
            labeled._label_widget.visible = False
    except (AttributeError, TypeError):  # pragma: no cover - another magicgui
        pass
