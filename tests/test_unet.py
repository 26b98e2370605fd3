"""The 3-D U-Net: shapes, options, configuration round trip, clear errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sxtlab.unet import UNet3D, UNetConfig


@pytest.mark.parametrize("input_to_head", [False, True])
@pytest.mark.parametrize("norm", ["instance", "group"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_output_shape(norm: str, depth: int, input_to_head: bool) -> None:
    net = UNet3D(UNetConfig(in_channels=2, out_channels=5, depth=depth, base_width=4, norm=norm, groups=2,
                            input_to_head=input_to_head))
    x = torch.randn(2, 2, 8, 12, 16)
    y = net(x)
    assert y.shape == (2, 5, 8, 12, 16)
    assert y.dtype == torch.float32


@pytest.mark.parametrize("input_to_head", [False, True])
def test_uniform_windows_differ_only_with_the_input_at_the_head(input_to_head: bool) -> None:
    # Bias-free convolutions are linear in a uniform input c (zero padding included)
    # and instance norm divides c out again: windows of uniform intensities of one
    # sign get the same answer unless the input reaches the head.
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(depth=2, base_width=4, input_to_head=input_to_head)).eval()
    with torch.no_grad():
        low, high = net(torch.full((1, 1, 8, 8, 8), 1.0)), net(torch.full((1, 1, 8, 8, 8), 3.0))
    assert torch.allclose(low, high, atol=1e-4) is not input_to_head


def test_models_configured_before_input_to_head_load_without_it() -> None:
    old = {k: v for k, v in UNetConfig().to_dict().items() if k != "input_to_head"}
    assert UNetConfig.from_dict(old).input_to_head is False
    with pytest.raises(ValueError, match="input_to_head must be True or False"):
        UNetConfig(input_to_head="yes")  # type: ignore[arg-type]


def test_widths_and_default_is_small() -> None:
    cfg = UNetConfig(depth=4, base_width=8, max_width=32)
    assert cfg.widths == (8, 16, 32, 32)
    assert cfg.divisor == 8
    n = sum(p.numel() for p in UNet3D().parameters())
    assert n < 200_000, "the default network must stay CPU-sized"


def test_config_round_trip() -> None:
    cfg = UNetConfig(in_channels=3, out_channels=4, depth=2, base_width=6, norm="group", groups=3)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown U-Net settings"):
        UNetConfig.from_dict({**cfg.to_dict(), "dropout": 0.5})


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "batch"}, "norm"),
    ({"out_channels": 1}, "out_channels"),
    ({"depth": 0}, "depth"),
    ({"norm": "group", "groups": 3, "base_width": 8}, "divisible by 3"),
])
def test_invalid_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kwargs)


def test_invalid_input_names_the_problem() -> None:
    net = UNet3D(UNetConfig(in_channels=1, out_channels=2, depth=3, base_width=4))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.zeros(1, 1, 10, 16, 16))
    with pytest.raises(ValueError, match=r"\(batch, 1, z, y, x\)"):
        net(torch.zeros(1, 2, 16, 16, 16))


def test_same_seed_same_weights() -> None:
    torch.manual_seed(3)
    a = UNet3D(UNetConfig(base_width=4))
    torch.manual_seed(3)
    b = UNet3D(UNetConfig(base_width=4))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_gradients_reach_every_parameter() -> None:
    net = UNet3D(UNetConfig(depth=3, base_width=4))
    net(torch.randn(1, 1, 8, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("input_to_head", [False, True])
def test_a_strided_stem_halves_every_level_and_comes_back_to_full_resolution(input_to_head: bool) -> None:
    cfg = UNetConfig(in_channels=2, out_channels=3, depth=3, base_width=4, stem_stride=2, input_to_head=input_to_head)
    net = UNet3D(cfg)
    assert cfg.divisor == 8
    seen = []
    net.encoders[0].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[2:])))
    out = net(torch.randn(1, 2, 16, 24, 8))
    assert out.shape == (1, 3, 16, 24, 8) and seen == [(8, 12, 4)]
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.randn(1, 2, 12, 16, 16))
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    # about a stride³ fewer operations per voxel than the same network at full resolution
    full = UNet3D(UNetConfig(in_channels=2, out_channels=3, depth=3, base_width=4, input_to_head=input_to_head))
    assert 4 < full.flops_per_voxel() / net.flops_per_voxel() < 8
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2"):
        UNetConfig(stem_stride=4)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_the_strided_layout_goes_down_by_strides_and_up_from_the_concatenations(depth: int) -> None:
    cfg = UNetConfig(in_channels=2, out_channels=3, depth=depth, base_width=4, convs_per_level=1, layout="strided")
    net = UNet3D(cfg)
    assert cfg.divisor == 2 ** (depth - 1)
    seen: list[tuple[int, ...]] = []
    for enc in net.encoders:
        enc.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:])))
    x = torch.randn(2, 2, 8, 16, 24)
    out = net(x)
    assert out.shape == (2, 3, 8, 16, 24)
    # every level but the bottom halves the resolution; the bottom keeps the one above's
    edges = [(8 // 2 ** min(i + 1, depth - 1), 16 // 2 ** min(i + 1, depth - 1), 24 // 2 ** min(i + 1, depth - 1))
             for i in range(depth)]
    assert seen == [(w, *e) for w, e in zip(cfg.widths, edges)]
    # the way up is one transposed convolution per level, the last giving the logits
    assert len(net.ups) == depth - 1 and isinstance(net.ups[0], torch.nn.ConvTranspose3d)
    assert net.ups[0].in_channels == (2 * cfg.widths[0] if depth > 2 else sum(cfg.widths))
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match=f"divisible by {cfg.divisor}"):
        net(torch.randn(1, 2, cfg.divisor * 2 + cfg.divisor // 2, 16, 16))


def test_the_strided_layout_is_the_size_of_monais_unet() -> None:
    # MONAI's UNet(spatial_dims=3, in_channels=1, out_channels=6, channels=(16, 32, 64, 128),
    # strides=(2, 2, 2)) has 490 k parameters (biases and PReLU weights instead of the
    # norms' affine ones); the pooled layout at the same widths 670 k.
    kw = {"in_channels": 1, "out_channels": 6, "depth": 4, "base_width": 16, "convs_per_level": 1}
    strided = sum(p.numel() for p in UNet3D(UNetConfig(**kw, layout="strided")).parameters())
    pooled = sum(p.numel() for p in UNet3D(UNetConfig(**kw, stem_stride=2)).parameters())
    assert 485_000 < strided < 495_000 and pooled > 660_000


@pytest.mark.parametrize("cfg", [
    UNetConfig(in_channels=2, out_channels=3, depth=3, base_width=4),
    UNetConfig(in_channels=2, out_channels=3, depth=4, base_width=4, convs_per_level=1, stem_stride=2,
               input_to_head=True),
    UNetConfig(in_channels=6, out_channels=6, depth=4, base_width=8, convs_per_level=1, layout="strided"),
    UNetConfig(in_channels=1, out_channels=4, depth=3, base_width=4, max_width=8, convs_per_level=2,
               layout="strided"),
], ids=["pooled", "pooled-strided-stem", "strided", "strided-two-convs"])
def test_flops_per_voxel_counts_what_torch_counts(cfg: UNetConfig) -> None:
    net = UNet3D(cfg)
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(1, cfg.in_channels, 16, 16, 32))
    # torch counts convolutions (2 per multiply-add), not norms, activations or poolings;
    # flops_per_voxel rounds down to an integer
    assert net.flops_per_voxel() == pytest.approx(counter.get_total_flops() / (16 * 16 * 32), abs=1)


def test_layout_errors_and_files_written_before_it() -> None:
    old = {k: v for k, v in UNetConfig().to_dict().items() if k != "layout"}
    assert UNetConfig.from_dict(old).layout == "pooled"
    with pytest.raises(ValueError, match="layout must be 'pooled' or 'strided', got 'residual'"):
        UNetConfig(layout="residual")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs depth ≥ 2"):
        UNetConfig(layout="strided", depth=1)
    for kw in ({"stem_stride": 2}, {"input_to_head": True}):
        with pytest.raises(ValueError, match="takes neither stem_stride 2 nor input_to_head"):
            UNetConfig(layout="strided", **kw)


@pytest.mark.parametrize("norm", ["instance", "group"])
def test_norm_without_scale_and_shift_has_no_norm_parameters(norm: str) -> None:
    cfg = UNetConfig(depth=4, base_width=16, convs_per_level=1, layout="strided", norm=norm)
    plain = UNet3D(replace(cfg, norm_affine=False))
    norms = [m for m in plain.modules() if isinstance(m, (torch.nn.InstanceNorm3d, torch.nn.GroupNorm))]
    assert norms and all(m.weight is None and m.bias is None for m in norms)
    # 2 fewer per channel of every normalised layer: 2 · (16 + 32 + 64 + 128 down, 32 + 16 up)
    n = sum(p.numel() for p in UNet3D(cfg).parameters())
    assert n - sum(p.numel() for p in plain.parameters()) == 2 * 288
    old = {k: v for k, v in cfg.to_dict().items() if k != "norm_affine"}  # a file written before the option
    assert UNetConfig.from_dict(old).norm_affine is True
    assert UNetConfig.from_dict(replace(cfg, norm_affine=False).to_dict()).norm_affine is False
    with pytest.raises(ValueError, match="norm_affine must be True or False"):
        UNetConfig(norm_affine=0)  # type: ignore[arg-type]
