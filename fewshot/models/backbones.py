"""Backbones: each maps images [B, C_in, H, W] to a feature map [B, C, h, w].

Every backbone exposes ``forward_features`` (the map), ``forward`` (the globally
average-pooled vector [B, C]) and ``num_channels`` (C); nothing downstream
hard-codes a channel count. Created by name with :func:`create_backbone`.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry

BACKBONES = Registry("backbone")


def backbones() -> List[str]:
    return BACKBONES.names()


def create_backbone(name: str, where: str = "backbone_options", **options) -> "Backbone":
    """Backbone ``name`` built with ``options`` (errors name a bad one ``where.KEY``)."""
    return BACKBONES.create(name, where=where, **options)


def _positive(**values) -> None:
    for name, v in values.items():
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


class Backbone(nn.Module):
    num_channels: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features [B, C] of images x [B, C_in, H, W]."""
        return self.forward_features(x).mean(dim=(2, 3))


@BACKBONES.register("conv4")
class Conv4(Backbone):
    """4 x [conv3x3-hidden, BN, ReLU, maxpool 2]: 64 x 5 x 5 at 84 x 84 (Snell et al. 2017).

    ``pool_blocks`` (default: all) is how many of the blocks end with the 2 x 2 max-pool:
    at 28 x 28 (Omniglot) 4 pools leave a single 1 x 1 patch, 3 pools a 3 x 3 patch map.
    """

    def __init__(self, in_channels: int = 3, hidden: int = 64, num_blocks: int = 4,
                 pool_blocks: Optional[int] = None):
        super().__init__()
        _positive(in_channels=in_channels, hidden=hidden, num_blocks=num_blocks)
        pool_blocks = num_blocks if pool_blocks is None else pool_blocks
        if not 0 <= pool_blocks <= num_blocks:
            raise ValueError(f"pool_blocks must be in [0, num_blocks={num_blocks}], "
                             f"got {pool_blocks}")
        layers = []
        for i in range(num_blocks):
            # max-pool before ReLU: the same function and gradients (the two commute), with
            # ReLU and its backward on a quarter of the values
            pool = [nn.MaxPool2d(2)] if i < pool_blocks else []
            layers += [nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1, bias=False),
                       nn.BatchNorm2d(hidden), *pool, nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*layers)
        self.num_channels = hidden

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018) on [B, C, H, W] maps, as in the MetaOptNet/DeepEMD ResNet-12."""

    def __init__(self, block_size: int):
        super().__init__()
        self.block_size = block_size

    def forward(self, x: torch.Tensor, gamma: float) -> torch.Tensor:
        if not self.training or gamma <= 0:
            return x
        b, c, h, w = x.shape
        bs = min(self.block_size, h, w)
        seeds = (torch.rand(b, c, h - bs + 1, w - bs + 1, device=x.device) < gamma).to(x.dtype)
        seeds = F.pad(seeds, [bs - 1] * 4)  # a seed at (i, j) covers (i..i+bs-1, j..j+bs-1)
        block = F.max_pool2d(seeds, kernel_size=bs, stride=1)[:, :, :h, :w]
        keep = 1.0 - block
        return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))


class _ResBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, drop_rate: float, drop_block: bool,
                 block_size: int, dropblock_steps: int):
        super().__init__()
        conv = lambda i, o: nn.Conv2d(i, o, 3, padding=1, bias=False)  # noqa: E731
        self.body = nn.Sequential(conv(inplanes, planes), nn.BatchNorm2d(planes), nn.LeakyReLU(0.1),
                                  conv(planes, planes), nn.BatchNorm2d(planes), nn.LeakyReLU(0.1),
                                  conv(planes, planes), nn.BatchNorm2d(planes))
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes))
        self.relu = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)
        self.drop_rate, self.drop_block, self.block_size = drop_rate, drop_block, block_size
        self.dropblock_steps = dropblock_steps
        self.dropblock = DropBlock(block_size)
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.relu(self.body(x) + self.downsample(x)))
        if self.drop_rate <= 0 or not self.training:
            return out
        self.num_batches_tracked += 1
        if self.drop_block:
            # Linearly ramped keep rate, as in the MetaOptNet/DeepEMD code.
            size = out.shape[2]
            keep = max(1.0 - self.drop_rate * float(self.num_batches_tracked) / self.dropblock_steps,
                       1.0 - self.drop_rate)
            bs = min(self.block_size, size)
            gamma = (1 - keep) / bs ** 2 * size ** 2 / (size - bs + 1) ** 2
            return self.dropblock(out, gamma)
        return F.dropout(out, p=self.drop_rate, training=True)


@BACKBONES.register("resnet12")
class ResNet12(Backbone):
    """ResNet-12 (MetaOptNet/DeepEMD): channels 64-160-320-640, DropBlock in the last two
    stages; 640 x 5 x 5 at 84 x 84."""

    def __init__(self, in_channels: int = 3, channels: tuple = (64, 160, 320, 640),
                 drop_rate: float = 0.1, dropblock_size: int = 5, dropblock_steps: int = 40000):
        super().__init__()
        _positive(in_channels=in_channels, dropblock_size=dropblock_size, dropblock_steps=dropblock_steps)
        if not (isinstance(channels, (list, tuple)) and channels
                and all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels)):
            raise ValueError(f"channels must be a list of widths >= 1, got {channels!r}")
        if not 0 <= drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        blocks, inplanes = [], in_channels
        for i, planes in enumerate(channels):
            blocks.append(_ResBlock(inplanes, planes, drop_rate, drop_block=i >= 2,
                                    block_size=dropblock_size, dropblock_steps=dropblock_steps))
            inplanes = planes
        self.layers = nn.Sequential(*blocks)
        self.num_channels = channels[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
