"""Fixtures the GUI tests share: a napari viewer on the tiny test registry, and the widgets'
notifications recorded instead of shown."""

from __future__ import annotations

import pytest


@pytest.fixture
def viewer(make_napari_viewer, tiny_registry):
    return make_napari_viewer()


@pytest.fixture
def notes(monkeypatch):
    """Record the notifications the widgets show (instead of napari's notification manager)."""
    from napari_rrim_sr._napari import _common

    got = {"error": [], "info": []}
    monkeypatch.setattr(_common, "show_error", lambda m: got["error"].append(m))
    monkeypatch.setattr(_common, "show_info", lambda m: got["info"].append(m))
    return got
