"""Backbone plugins through pluggy: runtime registration, entry-point discovery, failures."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from napari_rrim_sr.errors import RegistryError
from napari_rrim_sr.registry.core import PLUGINS_ENV, BackboneSpec, Registry
from napari_rrim_sr.registry.hookspecs import hookimpl


class TinyNet(nn.Module):
    """A third-party generator: conv + pixel shuffle."""

    def __init__(self, in_channels=3, out_channels=3, scale=4, width=4):
        super().__init__()
        self.scale, self.in_channels, self.out_channels = scale, in_channels, out_channels
        self.conv = nn.Conv2d(in_channels, out_channels * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x):
        return self.shuffle(self.conv(x))


def _detect(sd):
    w = sd.get("conv.weight")
    if w is None or len(sd) != 2:
        return None
    return {"in_channels": w.shape[1], "out_channels": 3, "scale": 4}


class TinyPlugin:
    @hookimpl
    def napari_rrim_sr_backbones(self):
        return [
            BackboneSpec(
                id="tiny",
                builder=TinyNet,
                defaults={"width": 4},
                scales=(2, 4),
                detect=_detect,
                description="a tiny test net",
            )
        ]


def test_builtin_backbones_registered_by_builtin_plugin():
    reg = Registry(discover=False)
    specs = reg.backbones()
    assert {"rrim", "srresnet", "rrdbnet", "srgan-discriminator"} <= set(specs)
    public = {"esrgan", "compact", "span", "swinir"}  # registered by public_backbones, same hooks
    assert all(s.source == ("public" if s.id in public else "builtin") for s in specs.values())
    assert public <= set(specs)
    assert specs["srgan-discriminator"].kind == "discriminator"


def test_runtime_registered_backbone_builds_and_runs():
    reg = Registry(discover=False)
    reg.register_plugin(TinyPlugin(), name="third-party")
    spec = reg.backbone("tiny")
    assert spec.source == "third-party"
    model = reg.build("tiny", in_channels=1, out_channels=1, scale=2)
    out = model(torch.rand(1, 1, 5, 7))
    assert out.shape == (1, 1, 10, 14)


def test_duplicate_backbone_id_names_both_sources():
    class Clash:
        @hookimpl
        def napari_rrim_sr_backbones(self):
            return [BackboneSpec(id="rrim", builder=TinyNet)]

    reg = Registry(discover=False)
    reg.register_plugin(Clash(), name="clashing-plugin")
    with pytest.raises(RegistryError) as exc:
        reg.backbones()
    msg = str(exc.value)
    assert "'rrim'" in msg and "builtin" in msg and "clashing-plugin" in msg


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(RegistryError, match="unknown backbone 'nope'.*rrim"):
        Registry(discover=False).backbone("nope")


def test_unsupported_scale_or_channels_is_a_clear_error():
    reg = Registry(discover=False)
    reg.register_plugin(TinyPlugin(), name="tp")
    with pytest.raises(RegistryError, match="scales"):
        reg.build("tiny", scale=3)
    with pytest.raises(RegistryError, match="channels"):
        reg.build("tiny", in_channels=2)


def test_plugin_failing_in_hook_is_reported_and_skipped():
    class Broken:
        @hookimpl
        def napari_rrim_sr_backbones(self):
            raise RuntimeError("boom")

    reg = Registry(discover=False)
    reg.register_plugin(Broken(), name="broken")
    assert "rrim" in reg.backbones()
    assert any(name == "broken" and "boom" in msg for name, msg in reg.failed)


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A third-party package 'fake-sr' installed as a dist-info on a temporary sys.path."""
    (tmp_path / "fake_sr_plugin.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn
        from napari_rrim_sr.registry.hookspecs import hookimpl
        from napari_rrim_sr.registry.core import BackboneSpec

        class FakeNet(nn.Module):
            def __init__(self, in_channels=3, out_channels=3, scale=4):
                super().__init__()
                self.scale = scale
                self.conv = nn.Conv2d(in_channels, out_channels * scale ** 2, 3, padding=1)
            def forward(self, x):
                return nn.functional.pixel_shuffle(self.conv(x), self.scale)

        @hookimpl
        def napari_rrim_sr_backbones():
            return [BackboneSpec(id="fake-net", builder=FakeNet, description="from an entry point")]
    """)
    )
    (tmp_path / "broken_sr_plugin.py").write_text("raise ImportError('missing dependency xyz')\n")
    dist = tmp_path / "fake_sr-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-sr\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[napari_rrim_sr]\nfake = fake_sr_plugin\nbroken = broken_sr_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in ("fake_sr_plugin", "broken_sr_plugin"):
        sys.modules.pop(mod, None)


def test_entry_point_plugin_discovered_and_broken_one_skipped(installed_plugin, monkeypatch):
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    reg = Registry()
    spec = reg.backbone("fake-net")
    assert spec.source == "fake"
    assert reg.build("fake-net")(torch.rand(1, 3, 3, 5)).shape == (1, 3, 12, 20)
    failed = dict(reg.failed)
    assert "broken" in failed and "missing dependency xyz" in failed["broken"]


def test_env_var_restricts_discovery(installed_plugin, monkeypatch):
    monkeypatch.setenv(PLUGINS_ENV, "none")
    reg = Registry()
    assert "fake-net" not in reg.backbones() and not reg.failed
    monkeypatch.setenv(PLUGINS_ENV, "fake")
    reg = Registry()
    assert "fake-net" in reg.backbones()
    assert not reg.failed  # "broken" was not even imported
