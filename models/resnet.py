"""ResNet-18 and ResNet-50 (torchvision v1.5 layout), with a channel width multiplier.

Stem ``conv7x7/2 -> BN -> ReLU -> maxpool3x3/2``, four stages of residual blocks, global average
pool, linear classifier. A block computes ``y = relu(F(x) + S(x))`` where ``F`` is the residual
branch and ``S`` is the identity, or ``conv1x1/stride -> BN`` (the downsample) when the stride or
channel count changes. The residual add ties ``F``'s last output channels to ``S``'s, so every
block of a stage shares one channel space.

- BasicBlock (ResNet-18, ``[2, 2, 2, 2]``): ``F = BN(conv3x3(relu(BN(conv3x3/s(x)))))``.
- Bottleneck (ResNet-50, ``[3, 4, 6, 3]``): ``1x1 -> 3x3/s -> 1x1 (x4 expansion)``, BN after each.

Stage widths are ``64 * width * 2**i``. The factories default to smaller widths for CPU speed:
``build_resnet18`` uses ``width=0.5`` (base 32), ``build_resnet50`` uses ``width=0.25`` (base 16);
pass ``width=1.0`` for the torchvision sizes.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import ExampleInputs, finish_cnn, make_divisible, seeded

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "build_resnet18",
    "build_resnet50",
    "resnet18",
    "resnet50",
]


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; ``relu(branch(x) + shortcut(x))``."""

    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU()
        self.downsample = _downsample(in_ch, ch * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4; BN after each conv."""

    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.conv3 = nn.Conv2d(ch, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem, four stages of ``block`` (first block of stages 2-4 has stride 2), pool, fc."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        widths = [make_divisible(64 * width * 2**i) for i in range(4)]
        stem = widths[0]
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = stem
        stages: list[nn.Sequential] = []
        for i, (ch, depth) in enumerate(zip(widths, layers, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_ch, ch, stride))
                in_ch = ch * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, width: float = 1.0) -> ResNet:
    """ResNet-18: BasicBlocks ``[2, 2, 2, 2]``."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, width=width)


def resnet50(num_classes: int = 1000, width: float = 1.0) -> ResNet:
    """ResNet-50: Bottlenecks ``[3, 4, 6, 3]``."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, width=width)


def build_resnet18(
    *, num_classes: int = 1000, width: float = 0.5, batch_size: int = 1, image_size: int = 64, seed: int = 0
) -> tuple[nn.Module, ExampleInputs]:
    """ResNet-18 at ``width=0.5`` (base 32 channels); example input ``(batch_size, 3, 64, 64)``."""
    with seeded(seed):
        return finish_cnn(resnet18(num_classes, width), batch_size, image_size)


def build_resnet50(
    *, num_classes: int = 1000, width: float = 0.25, batch_size: int = 1, image_size: int = 64, seed: int = 0
) -> tuple[nn.Module, ExampleInputs]:
    """ResNet-50 at ``width=0.25`` (base 16 channels); example input ``(batch_size, 3, 64, 64)``."""
    with seeded(seed):
        return finish_cnn(resnet50(num_classes, width), batch_size, image_size)
