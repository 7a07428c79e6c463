"""Generators and discriminator: shapes, registry builds, detect(), key layouts, bf16/channels_last.

Tiny widths and block counts only: these run on a shared 2-core CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_rrim_sr.models import common, discriminator, rrdbnet, rrim, srresnet
from napari_rrim_sr.models.complexity import count_macs_per_pixel, count_params
from napari_rrim_sr.registry.core import Registry

TINY = {
    "rrim": (rrim.RRIM, rrim.detect, {"num_feat": 8, "num_block": 1}),
    "srresnet": (srresnet.SRResNet, srresnet.detect, {"num_feat": 8, "num_block": 2}),
    "rrdbnet": (rrdbnet.RRDBNet, rrdbnet.detect, {"num_feat": 8, "num_block": 1, "num_grow_ch": 4}),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def registry():
    return Registry(discover=False)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_shapes(name, scale, channels):
    cls, _, hp = TINY[name]
    model = cls(in_channels=channels, out_channels=channels, scale=scale, **hp).eval()
    assert (model.scale, model.in_channels, model.out_channels) == (scale, channels, channels)
    assert isinstance(model.size_multiple, int)
    if name == "rrdbnet" and scale == 2:
        assert model.size_multiple == 2
        h, w = 14, 10
    else:
        assert model.size_multiple == 1
        h, w = 13, 11
    with torch.no_grad():
        y = model(torch.rand(2, channels, h, w))
    assert y.shape == (2, channels, scale * h, scale * w)
    assert torch.isfinite(y).all()


def test_rrdbnet_rejects_odd_size_at_scale2():
    model = rrdbnet.RRDBNet(1, 1, scale=2, num_feat=4, num_block=1, num_grow_ch=2)
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.rand(1, 1, 13, 10))


@pytest.mark.parametrize("name", list(TINY))
def test_registry_build(registry, name):
    _, _, hp = TINY[name]
    model = registry.build(name, scale=4, in_channels=1, out_channels=1, **hp)
    with torch.no_grad():
        assert model(torch.rand(1, 1, 8, 8)).shape == (1, 1, 32, 32)


def test_registry_build_rrim_example(registry):
    model = registry.build("rrim", num_feat=8, num_block=1, scale=4, in_channels=1, out_channels=1)
    assert isinstance(model, rrim.RRIM)
    assert (model.num_feat, model.num_block) == (8, 1)


def test_rrim_structure():
    model = rrim.RRIM(3, 3, scale=4, num_feat=8, num_block=2)
    mods = list(model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods)
    assert not any(
        isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) for m in mods
    )
    kernels = {m.kernel_size for m in mods if isinstance(m, nn.Conv2d)}
    assert {(1, 7), (7, 1), (1, 5), (5, 1), (1, 3), (3, 1)} <= kernels
    # 3 shallow + 1 middle per block, one deep module in the tail
    blocks = list(model.body)
    assert len(blocks) == 2
    for block in blocks:
        kinds = [type(m) for m in block.children() if isinstance(m, rrim._Inception)]
        assert kinds == [rrim.ShallowInception] * 3 + [rrim.MiddleInception]
    assert sum(isinstance(m, rrim.DeepInception) for m in mods) == 1
    # kernel size shrinks, width (concatenated channels) grows with depth
    s, m, d = blocks[0].shallow1, blocks[0].middle, model.deep
    assert s.fuse.in_channels < m.fuse.in_channels < d.fuse.in_channels
    max_k = lambda mod: max(max(c.kernel_size) for c in mod.modules() if isinstance(c, nn.Conv2d))  # noqa: E731
    assert max_k(s) == 7 and max_k(m) == 5 and max_k(d) == 3


def test_rrim_scale2_tail():
    model = rrim.RRIM(1, 1, scale=2, num_feat=8, num_block=1)
    assert model.up2 is None
    assert rrim.detect(model.state_dict())["scale"] == 2


def _build(name, **hp):
    return {"rrim": rrim.RRIM, "srresnet": srresnet.SRResNet, "rrdbnet": rrdbnet.RRDBNet}[name](**hp)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("scale,in_ch,out_ch", [(4, 3, 3), (2, 1, 1), (4, 1, 3), (2, 3, 1)])
def test_detect_roundtrip(name, scale, in_ch, out_ch):
    cls, detect, hp = TINY[name]
    extra = {"use_bn": True} if name == "srresnet" and scale == 4 else {}
    model = cls(in_channels=in_ch, out_channels=out_ch, scale=scale, **hp, **extra)
    sd = model.state_dict()
    found = detect(sd)
    assert found is not None
    expected = {"in_channels": in_ch, "out_channels": out_ch, "scale": scale, **hp, **extra}
    assert {k: found[k] for k in expected} == expected
    rebuilt = cls(**found)
    rebuilt.load_state_dict(sd, strict=True)
    for other_name, (_, other_detect, _) in TINY.items():
        if other_name != name:
            assert other_detect(sd) is None, (other_name, name)
    assert discriminator.detect(sd) is None


def test_detect_srresnet_use_bn_flag():
    for use_bn in (False, True):
        sd = srresnet.SRResNet(3, 3, 4, num_feat=4, num_block=1, use_bn=use_bn).state_dict()
        assert srresnet.detect(sd)["use_bn"] is use_bn
    model = srresnet.SRResNet(3, 3, 4, num_feat=4, num_block=1, use_bn=True)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_rrdbnet_basicsr_keys_and_wrapped_checkpoint():
    model = rrdbnet.RRDBNet(3, 3, scale=4, num_feat=8, num_block=2, num_grow_ch=4)
    sd = model.state_dict()
    for key in (
        "conv_first.weight",
        "conv_first.bias",
        "body.0.rdb1.conv1.weight",
        "body.1.rdb2.conv3.weight",
        "body.0.rdb3.conv5.bias",
        "conv_body.weight",
        "conv_up1.weight",
        "conv_up2.weight",
        "conv_hr.weight",
        "conv_last.weight",
    ):
        assert key in sd, key
    assert all(
        k.split(".")[0] in {"conv_first", "body", "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"}
        for k in sd
    )
    wrapped = {"params_ema": {"module." + k: v for k, v in sd.items()}, "params": {}, "iter": 5}
    clean = common.clean_state_dict(wrapped)
    assert set(clean) == set(sd)
    hp = rrdbnet.detect(clean)
    assert hp == {"in_channels": 3, "out_channels": 3, "scale": 4, "num_feat": 8, "num_block": 2, "num_grow_ch": 4}
    rrdbnet.RRDBNet(**hp).load_state_dict(clean, strict=True)


def test_rrdbnet_scale2_channels():
    model = rrdbnet.RRDBNet(3, 3, scale=2, num_feat=4, num_block=1, num_grow_ch=2)
    assert model.conv_first.in_channels == 12
    assert rrdbnet.detect(model.state_dict())["scale"] == 2


def test_clean_state_dict_variants():
    sd = {"a.weight": torch.zeros(1), "b": torch.ones(2)}
    assert common.clean_state_dict(sd).keys() == sd.keys()
    assert common.clean_state_dict({"state_dict": {"module._orig_mod.a.weight": torch.zeros(1)}}).keys() == {"a.weight"}
    assert common.clean_state_dict({"params": sd, "epoch": 3}).keys() == sd.keys()
    assert common.clean_state_dict(nn.Linear(2, 2)).keys() == {"weight", "bias"}
    with pytest.raises(ValueError):
        common.clean_state_dict({"epoch": 3})


@pytest.mark.parametrize("channels", [1, 3])
def test_discriminator_any_patch(channels):
    d = discriminator.SRGANDiscriminator(in_channels=channels, num_feat=4, use_bn=True).eval()
    assert any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8, 16, 16, 32, 32]
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 2, 1, 2]
    with torch.no_grad():
        for size in (64, 96, 128):
            assert d(torch.rand(2, channels, size, size)).shape == (2, 1)
    hp = discriminator.detect(d.state_dict())
    assert hp == {"in_channels": channels, "num_feat": 4, "use_bn": True, "pool_size": 4}
    discriminator.SRGANDiscriminator(**hp).load_state_dict(d.state_dict(), strict=True)
    assert rrim.detect(d.state_dict()) is None and rrdbnet.detect(d.state_dict()) is None


def test_discriminator_without_bn(registry):
    d = registry.build("srgan-discriminator", in_channels=3, num_feat=4, use_bn=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    assert d(torch.rand(1, 3, 48, 48)).shape == (1, 1)


def test_rrim_bf16_channels_last_close_to_fp32():
    model = rrim.RRIM(3, 3, scale=4, num_feat=16, num_block=2).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model_cl(x.to(memory_format=torch.channels_last))
    assert y.shape == ref.shape
    assert torch.isfinite(y).all()
    err = (y.float() - ref).abs().max().item()
    assert err <= 0.05 * ref.abs().max().item() + 1e-3, err


@pytest.mark.parametrize("name", ["srresnet", "rrdbnet"])
def test_other_generators_bf16_channels_last(name):
    cls, _, hp = TINY[name]
    model = cls(in_channels=3, out_channels=3, scale=4, **hp).eval().to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.rand(1, 3, 8, 8).to(memory_format=torch.channels_last))
    assert torch.isfinite(y.float()).all()


def test_rrim_trains_one_step():
    model = rrim.RRIM(1, 1, scale=2, num_feat=8, num_block=1)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, t = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 16, 16)
    loss = nn.functional.l1_loss(model(x), t)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()


def test_complexity_helpers():
    model = rrim.RRIM(1, 1, scale=4, num_feat=8, num_block=1)
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    # a single 3x3 conv 1->2 on a 4x4 input: 2*1*9 MACs per pixel
    conv = nn.Conv2d(1, 2, 3, padding=1)
    assert count_macs_per_pixel(conv, 1, size=4) == 18
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    assert count_macs_per_pixel(lin, 1, size=4) == 3
    assert count_macs_per_pixel(model, 1, size=8) == pytest.approx(count_macs_per_pixel(model, 1, size=16))
    with torch.device("meta"):
        meta = rrim.RRIM(1, 1, scale=4, num_feat=8, num_block=1)
    assert count_macs_per_pixel(meta, 1, size=16) == pytest.approx(count_macs_per_pixel(model, 1, size=16))


def test_esrgan_and_rrdbnet_share_one_rrdb_block():
    """The original-layout ESRGAN builds rrdbnet's RRDB under its own key names (``RDB1.conv1.0``):
    one block, so the same weights give the same output in both layouts."""
    import re

    from napari_rrim_sr.models.esrgan import ESRGAN
    from napari_rrim_sr.models.rrdbnet import RRDB

    torch.manual_seed(0)
    basicsr = RRDB(8, 4).eval()
    original = ESRGAN(num_feat=8, num_block=1, num_grow_ch=4).model[1].sub[0].eval()
    assert type(original) is RRDB
    renamed = {re.sub(r"^rdb(\d)\.conv(\d)\.", r"RDB\1.conv\2.0.", k): v for k, v in basicsr.state_dict().items()}
    original.load_state_dict(renamed, strict=True)
    x = torch.rand(1, 8, 6, 7)
    with torch.no_grad():
        assert torch.equal(original(x), basicsr(x))
