"""Inception network: GoogLeNet stage layout with Inception-v3 style blocks and grid reductions.

Every conv is ``BasicConv = conv(bias=False) -> BN -> ReLU``. An inception block runs four branches
on the same input and concatenates them along channels:

- ``1x1``;
- ``1x1 -> 3x3``;
- ``1x1 -> 3x3 -> 3x3`` (the "double 3x3", factorizing a 5x5);
- ``avgpool3x3/1 -> 1x1`` (pool projection).

A grid reduction halves the resolution with three concatenated branches: ``3x3/2``,
``1x1 -> 3x3 -> 3x3/2`` and ``maxpool3x3/2``. The max-pool branch copies its input channels into
the output, so those output channels are tied to the previous block's output channels.

Layout: stem ``3x3/2 -> 3x3 -> 3x3 -> maxpool/2 -> 1x1 -> 3x3``; blocks 3a, 3b; reduction; blocks
4a-4e; reduction; blocks 5a, 5b; global average pool; linear classifier. Branch widths follow
torchvision's GoogLeNet, scaled by ``width``; ``build_inception`` uses ``width=0.5`` at 64x64.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import ExampleInputs, finish_cnn, make_divisible, seeded

__all__ = ["BasicConv", "Inception", "InceptionBlock", "Reduction", "build_inception", "inception"]

# (1x1, 3x3 reduce, 3x3, double-3x3 reduce, double-3x3, pool projection), torchvision GoogLeNet.
_BLOCKS: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
# (3x3/2, double-3x3 reduce, double-3x3/2) for the reductions after stages 3 and 4.
_REDUCTIONS: tuple[tuple[int, int, int], ...] = ((192, 64, 96), (256, 96, 128))


class BasicConv(nn.Sequential):
    """``conv(bias=False) -> BN -> ReLU`` with 'same' padding for odd kernels."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(),
        )


class InceptionBlock(nn.Module):
    """Four parallel branches (1x1, 3x3, double 3x3, pool) concatenated along channels."""

    def __init__(self, in_ch: int, c1: int, c3r: int, c3: int, cdr: int, cd: int, cp: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv(in_ch, c1, 1)
        self.branch3x3 = nn.Sequential(BasicConv(in_ch, c3r, 1), BasicConv(c3r, c3, 3))
        self.branch_dbl = nn.Sequential(BasicConv(in_ch, cdr, 1), BasicConv(cdr, cd, 3), BasicConv(cd, cd, 3))
        self.branch_pool = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), BasicConv(in_ch, cp, 1))
        self.out_channels = c1 + c3 + cd + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1x1(x), self.branch3x3(x), self.branch_dbl(x), self.branch_pool(x)]
        return torch.cat(branches, dim=1)


class Reduction(nn.Module):
    """Grid reduction: ``3x3/2``, ``1x1 -> 3x3 -> 3x3/2`` and ``maxpool/2``, concatenated."""

    def __init__(self, in_ch: int, c3: int, cdr: int, cd: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv(in_ch, c3, 3, stride=2)
        self.branch_dbl = nn.Sequential(
            BasicConv(in_ch, cdr, 1), BasicConv(cdr, cd, 3), BasicConv(cd, cd, 3, stride=2)
        )
        self.branch_pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_channels = c3 + cd + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch_dbl(x), self.branch_pool(x)], dim=1)


class Inception(nn.Module):
    """Stem, inception stages 3/4/5 separated by grid reductions, pool, linear classifier."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()

        def c(n: int) -> int:
            return make_divisible(n * width)

        self.stem = nn.Sequential(
            BasicConv(3, c(32), 3, stride=2),
            BasicConv(c(32), c(32), 3),
            BasicConv(c(32), c(64), 3),
            nn.MaxPool2d(3, stride=2, padding=1),
            BasicConv(c(64), c(80), 1),
            BasicConv(c(80), c(192), 3),
        )
        ch = c(192)
        stages: list[nn.Sequential] = []
        for names in (("3a", "3b"), ("4a", "4b", "4c", "4d", "4e"), ("5a", "5b")):
            blocks: list[nn.Module] = []
            if stages:
                red = Reduction(ch, *(c(n) for n in _REDUCTIONS[len(stages) - 1]))
                blocks.append(red)
                ch = red.out_channels
            for name in names:
                block = InceptionBlock(ch, *(c(n) for n in _BLOCKS[name]))
                blocks.append(block)
                ch = block.out_channels
            stages.append(nn.Sequential(*blocks))
        self.stage3, self.stage4, self.stage5 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage5(self.stage4(self.stage3(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def inception(num_classes: int = 1000, width: float = 1.0) -> Inception:
    """Inception network with branch widths scaled by ``width``."""
    return Inception(num_classes=num_classes, width=width)


def build_inception(
    *, num_classes: int = 1000, width: float = 0.5, batch_size: int = 1, image_size: int = 64, seed: int = 0
) -> tuple[nn.Module, ExampleInputs]:
    """Inception at ``width=0.5``; example input ``(batch_size, 3, 64, 64)``."""
    with seeded(seed):
        return finish_cnn(inception(num_classes, width), batch_size, image_size)
