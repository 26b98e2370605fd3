"""A small, configurable 3-D U-Net for volumetric segmentation.

The architecture follows the 3-D U-Net of Çiçek et al. (2016, MICCAI, "3D U-Net:
learning dense volumetric segmentation from sparse annotation") with the choices
that nnU-Net (Isensee et al. 2021, Nature Methods 18, 203) found robust: two
3×3×3 convolutions per level, instance (or group) normalisation, leaky ReLU,
channels doubled per level up to a cap, transposed-convolution upsampling and a
1×1×1 output convolution that gives logits. Optionally (``input_to_head``) the
network's input channels join the last decoder features before a small 1×1×1
head: instance norm removes a window's mean, so a window of uniform cytoplasm or
medium is otherwise featureless; the absolute intensity tells them apart.

A second layout (``layout="strided"``) is that of MONAI's ``UNet`` without residual
units (after Kerfoot et al. 2018, STACOM, "Left-ventricle quantification using
residual U-Net"): strided convolutions go down, and each way up is one 3×3×3
transposed convolution applied straight to the concatenation of a level's features
with those coming from below. Trained the same way on the same cells, MONAI's network
of this layout found the nuclei of an independent phantom generator's cells better than
the pooled layout (Dice 0.60 against 0.48), this module's version of it 0.53, and as the
default model's stage 2 it gained on every class of both generators but one
(``benchmarks/results/generalisation.md``, 2026-12-03).

The default is deliberately small (8, 16, 32 channels on three levels, about 80 k
parameters) so that it trains and predicts on a laptop CPU; widen it with
``base_width``/``depth`` when a GPU is available.

Examples
--------
>>> import torch
>>> net = UNet3D(UNetConfig(in_channels=1, out_channels=3))
>>> net(torch.zeros(1, 1, 16, 16, 16)).shape
torch.Size([1, 3, 16, 16, 16])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["UNetConfig", "UNet3D"]

Norm = Literal["instance", "group"]
Layout = Literal["pooled", "strided"]


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`UNet3D` (JSON-serialisable via :meth:`to_dict`).

    Attributes
    ----------
    in_channels : int
        Input channels (1 for LAC alone; 1 + K−1 for a cascade's stage 2).
    out_channels : int
        Output channels: the number of classes, background included.
    depth : int
        Number of levels (``depth − 1`` halvings of the resolution); inputs must have
        every spatial size divisible by :attr:`divisor`.
    base_width : int
        Channels of the first level; doubled per level.
    max_width : int
        Cap on the channels of any level (nnU-Net caps at 320 for 3-D).
    norm : {"instance", "group"}
        Normalisation after each convolution. Instance norm is nnU-Net's default;
        group norm (``groups`` groups) behaves the same for batch size 1.
    groups : int
        Number of groups for group norm; must divide every level's width.
    norm_affine : bool
        Learn a scale and a shift per channel after the normalisation (PyTorch's
        ``affine``). False is MONAI's default instance norm, which generalised better:
        the strided layout without them found the nuclei of the independent phantom
        generator's cells with Dice 0.615 against 0.527 and 0.545 (two seeds) with
        them, mitochondria 0.595 against 0.532 and 0.536, the same on sxtlab's own
        (``benchmarks/ablate_stage2.py``, generalisation.md 2026-12-03 17:10). True by
        default, so that model files written before the option read back unchanged.
    convs_per_level : int
        Convolutions per level and per path (2 in Çiçek et al. and nnU-Net).
    negative_slope : float
        Slope of the leaky ReLU (0.01 as in nnU-Net).
    input_to_head : bool
        Concatenate the input channels with the last decoder's features and classify
        them with two 1×1×1 convolutions (``base_width`` hidden channels, leaky ReLU)
        instead of one. Gives the classifier absolute (normalised) intensities, which
        instance norm removes inside a window. Off by default (model files written
        before the option existed read back unchanged): the cascade benchmark, which
        turns it on, has not yet measured it alone, and on tiny networks (4 channels)
        it slows the first few dozen steps.
    layout : {"pooled", "strided"}
        "pooled" (Çiçek et al., nnU-Net): each level's convolutions keep its
        resolution, max pooling goes down, a 2×2×2 transposed convolution goes up and
        the decoder's convolutions join it with the skip. "strided" (MONAI's ``UNet``
        with ``num_res_units=0``): every level but the last starts with a stride-2
        convolution, so the first works at half the input's resolution and the last
        (the bottom) at that of the one before it; each way up is one 3×3×3 stride-2
        transposed convolution of the concatenated skip and deeper features, the last
        of them giving the logits at the input's resolution. At depth 4, 16–128
        channels, one convolution per level and one input channel it has 490 k
        parameters (MONAI's ``UNet(channels=(16, 32, 64, 128))`` about as many) and
        costs 4 428 operations per voxel (:meth:`UNet3D.flops_per_voxel`), the pooled
        layout with a strided stem 7 328. Takes neither ``stem_stride`` 2 (it already
        starts strided) nor ``input_to_head``.
    stem_stride : {1, 2}
        2 (pooled layout): the first convolution has stride 2, so every level runs at
        half the input's resolution or less, and the head's last layer is a 2×2×2
        transposed convolution that gives the logits at full resolution (as MONAI's
        ``UNet`` with ``strides=(2, ...)`` ends). A training step of depth 4, 16 channels,
        one convolution per level on two 64³ windows takes 0.18 CPU s (one thread),
        MONAI's ``UNet(channels=(16, 32, 64, 128))`` 0.135 with the same loss.
    """

    in_channels: int = 1
    out_channels: int = 2
    depth: int = 3
    base_width: int = 8
    max_width: int = 256
    norm: Norm = "instance"
    groups: int = 4
    norm_affine: bool = True
    convs_per_level: int = 2
    negative_slope: float = 0.01
    input_to_head: bool = False
    stem_stride: int = 1
    layout: Layout = "pooled"

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "depth", "base_width", "max_width", "groups",
                     "convs_per_level"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive integer, got {value!r}")
        if self.out_channels < 2:
            raise ValueError(f"UNetConfig.out_channels must be ≥ 2 (background + one class), "
                             f"got {self.out_channels}")
        if self.stem_stride not in (1, 2):
            raise ValueError(f"UNetConfig.stem_stride must be 1 or 2, got {self.stem_stride!r}")
        for name in ("input_to_head", "norm_affine"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"UNetConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.norm not in ("instance", "group"):
            raise ValueError(f"UNetConfig.norm must be 'instance' or 'group', got {self.norm!r}")
        if self.layout not in ("pooled", "strided"):
            raise ValueError(f"UNetConfig.layout must be 'pooled' or 'strided', got {self.layout!r}")
        if self.layout == "strided":
            if self.depth < 2:
                raise ValueError(f"UNetConfig.layout 'strided' needs depth ≥ 2 (its last up-step gives "
                                 f"the logits), got {self.depth}")
            if self.stem_stride != 1 or self.input_to_head:
                raise ValueError("UNetConfig.layout 'strided' takes neither stem_stride 2 nor "
                                 "input_to_head (it starts strided and ends in a transposed convolution)")
        if self.norm == "group":
            bad = [w for w in self.widths if w % self.groups]
            if bad:
                raise ValueError(f"group norm with {self.groups} groups needs widths divisible by "
                                 f"{self.groups}; widths {self.widths} include {bad}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels per level, e.g. ``(8, 16, 32)``."""
        return tuple(min(self.base_width * 2**i, self.max_width) for i in range(self.depth))

    @property
    def divisor(self) -> int:
        """Every spatial input size must be a multiple of this (``stem_stride · 2 ** (depth − 1)``)."""
        return self.stem_stride * 2 ** (self.depth - 1)

    @property
    def _strides(self) -> tuple[int, ...]:
        """Stride of each level's first convolution."""
        if self.layout == "strided":
            return (2,) * (self.depth - 1) + (1,)
        return (self.stem_stride,) + (1,) * (self.depth - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON metadata."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise a ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown U-Net settings {unknown}; known: {sorted(known)}")
        return cls(**d)


def _norm(cfg: UNetConfig, channels: int) -> nn.Module:
    if cfg.norm == "instance":
        return nn.InstanceNorm3d(channels, affine=cfg.norm_affine)
    return nn.GroupNorm(cfg.groups, channels, affine=cfg.norm_affine)


def _block(cfg: UNetConfig, c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(cfg.convs_per_level):
        # No bias: the normalisation that follows removes it anyway.
        layers += [
            nn.Conv3d(c_in if i == 0 else c_out, c_out, kernel_size=3, padding=1, bias=False,
                      stride=stride if i == 0 else 1),
            _norm(cfg, c_out),
            nn.LeakyReLU(cfg.negative_slope, inplace=True),
        ]
    return nn.Sequential(*layers)


def _strided_up_channels(cfg: UNetConfig, level: int) -> tuple[int, int]:
    """Channels in and out of the strided layout's way up from ``level``: the skip's plus
    the deeper features' (the bottom's, or the way up from below's), to the level above's
    (the classes at level 0)."""
    w = cfg.widths
    c_in = w[level] + (w[level + 1] if level == cfg.depth - 2 else w[level])
    return c_in, cfg.out_channels if level == 0 else w[level - 1]


def _strided_up(cfg: UNetConfig, level: int) -> nn.Module:
    """The strided layout's way up from ``level``: concatenated skip and deeper features
    → a 3×3×3 stride-2 transposed convolution to the level above (logits at level 0)."""
    c_in, c_out = _strided_up_channels(cfg, level)
    kwargs = {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}
    if level == 0:
        return nn.ConvTranspose3d(c_in, c_out, **kwargs)
    return nn.Sequential(nn.ConvTranspose3d(c_in, c_out, bias=False, **kwargs),
                         _norm(cfg, c_out), nn.LeakyReLU(cfg.negative_slope, inplace=True))


class UNet3D(nn.Module):
    """3-D U-Net: an encoder and a decoder joined by skips, in one of two layouts.

    Parameters
    ----------
    config : UNetConfig, optional
        Architecture; the default is the small CPU-friendly network.

    Notes
    -----
    ``forward`` maps ``(batch, in_channels, z, y, x)`` float32 to logits of shape
    ``(batch, out_channels, z, y, x)``; each spatial size must be a multiple of
    ``config.divisor`` (sliding-window inference and the trainer pad to that).
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or UNetConfig()
        w = cfg.widths
        self.encoders = nn.ModuleList(
            [_block(cfg, cfg.in_channels if i == 0 else w[i - 1], w[i], stride)
             for i, stride in enumerate(cfg._strides)]
        )
        if cfg.layout == "strided":
            self.ups = nn.ModuleList([_strided_up(cfg, i) for i in range(cfg.depth - 1)])
            return
        self.pool = nn.MaxPool3d(2)
        self.ups = nn.ModuleList(
            [nn.ConvTranspose3d(w[i + 1], w[i], kernel_size=2, stride=2) for i in range(cfg.depth - 1)]
        )
        self.decoders = nn.ModuleList([_block(cfg, 2 * w[i], w[i]) for i in range(cfg.depth - 1)])
        # After a strided stem the head works at half resolution and its last layer, a
        # transposed convolution, gives the logits at full resolution (as MONAI's
        # UNet's last layer): bringing the features back first and classifying there
        # took half of a training step's time (16 channels of 64³ per window, and
        # their backward pass).
        out = nn.ConvTranspose3d(w[0], cfg.out_channels, kernel_size=2, stride=2) if cfg.stem_stride == 2 \
            else nn.Conv3d(w[0], cfg.out_channels, kernel_size=1)
        if cfg.input_to_head:
            self.head: nn.Module = nn.Sequential(
                nn.Conv3d(w[0] + cfg.in_channels, w[0], kernel_size=1),
                nn.LeakyReLU(cfg.negative_slope, inplace=True),
                out,
            )
        else:
            self.head = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, out_channels, z, y, x)`` for input ``(batch, in_channels, z, y, x)``.

        Raises
        ------
        ValueError
            If the input is not 5-D, has the wrong number of channels, or a spatial
            size that is not a multiple of ``config.divisor``.
        """
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"UNet3D expects (batch, {cfg.in_channels}, z, y, x), got {tuple(x.shape)}")
        if any(s % cfg.divisor for s in x.shape[2:]):
            raise ValueError(f"UNet3D of depth {cfg.depth} needs spatial sizes divisible by "
                             f"{cfg.divisor}, got {tuple(x.shape[2:])}")
        inputs, skips = x, []
        if cfg.layout == "strided":
            for enc in self.encoders[:-1]:
                x = enc(x)
                skips.append(x)
            x = self.encoders[-1](x)
            for up in reversed(self.ups):
                x = up(torch.cat([skips.pop(), x], dim=1))
            return x
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < cfg.depth - 1:
                skips.append(x)
                x = self.pool(x)
        for i in reversed(range(cfg.depth - 1)):
            # popped, so that each skip is freed once joined: at inference nothing else
            # holds it (a 128³ window of the default stage 1 peaks 170 MiB lower)
            x = self.decoders[i](torch.cat([skips.pop(), self.ups[i](x)], dim=1))
        if cfg.input_to_head:
            # the input joins at the head's resolution (block means after a strided stem)
            x = torch.cat([x, inputs if cfg.stem_stride == 1 else nn.functional.avg_pool3d(inputs, 2)], dim=1)
        return self.head(x)

    def flops_per_voxel(self) -> int:
        """Multiply-adds ×2 per output voxel of one forward pass (for speed estimates)."""
        cfg, w = self.config, self.config.widths
        total = 0.0
        if cfg.layout == "strided":
            # level i works on 1/2^(i+1) of the input's edge (the bottom on the one above's);
            # a transposed convolution costs its kernel's taps per *input* voxel
            scale = [2 ** min(i + 1, cfg.depth - 1) for i in range(cfg.depth)]
            for i in range(cfg.depth):
                c_in = cfg.in_channels if i == 0 else w[i - 1]
                total += 27 * (c_in * w[i] + (cfg.convs_per_level - 1) * w[i] * w[i]) / scale[i] ** 3
                if i < cfg.depth - 1:
                    total += 27 * math.prod(_strided_up_channels(cfg, i)) / scale[i] ** 3
            return int(2 * total)
        for i in range(cfg.depth):
            c_in = cfg.in_channels if i == 0 else w[i - 1]
            level = 27 * (c_in * w[i] + (cfg.convs_per_level - 1) * w[i] * w[i])
            if i < cfg.depth - 1:
                level += w[i + 1] * w[i]  # transposed conv: one kernel tap per fine voxel
                level += 27 * (2 * w[i] * w[i] + (cfg.convs_per_level - 1) * w[i] * w[i])
            total += 2 * level / (8**i * cfg.stem_stride**3)
        # the head: its 1×1×1 layers at the features' resolution, then one tap per output
        # voxel (a 1×1×1 convolution, or the transposed one after a strided stem)
        hidden = w[0] * (w[0] + cfg.in_channels) / cfg.stem_stride**3 if cfg.input_to_head else 0
        head = hidden + w[0] * cfg.out_channels
        return int(total + 2 * head)
