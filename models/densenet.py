"""DenseNet-BC (DenseNet-121 layout by default) with concatenating dense blocks.

Stem ``conv7x7/2 -> BN -> ReLU -> maxpool3x3/2``. A dense layer maps the running feature map ``x``
(``C`` channels) to ``k`` new channels (the growth rate) with
``conv3x3(ReLU(BN(conv1x1(ReLU(BN(x))))))`` (the 1x1 bottleneck has ``bn_size * k`` outputs), and the
block continues with ``torch.cat([x, new], dim=1)`` (``C + k`` channels). Concatenation makes each
channel of a block's output an offset into one of the earlier layers' outputs, which every later
layer reads. A transition ``BN -> ReLU -> conv1x1 (C -> C // 2) -> avgpool2x2`` sits between blocks.
The head is ``BN -> ReLU -> global avgpool -> linear``.

DenseNet-121 is ``growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64``.
``build_densenet`` keeps the 121-layer structure but uses ``growth_rate=12, num_init_features=24``
for CPU speed.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import ExampleInputs, finish_cnn, seeded

__all__ = ["DenseLayer", "DenseNet", "Transition", "build_densenet", "densenet"]


class DenseLayer(nn.Module):
    """``BN-ReLU-conv1x1 (bn_size*k) -> BN-ReLU-conv3x3 (k)``, concatenated onto the input."""

    def __init__(self, in_ch: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        mid = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, growth_rate, 3, padding=1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(self.relu(self.norm1(x)))
        new = self.conv2(self.relu(self.norm2(new)))
        return torch.cat([x, new], dim=1)


class Transition(nn.Module):
    """``BN -> ReLU -> conv1x1 -> avgpool2x2``: halves channels and resolution."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.norm(x))))


class DenseNet(nn.Module):
    """Stem, dense blocks separated by transitions, final BN-ReLU, pool, linear classifier."""

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, num_init_features, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(num_init_features),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        ch = num_init_features
        for i, depth in enumerate(block_config):
            for _ in range(depth):
                layers.append(DenseLayer(ch, growth_rate, bn_size))
                ch += growth_rate
            if i != len(block_config) - 1:
                layers.append(Transition(ch, ch // 2))
                ch //= 2
        layers += [nn.BatchNorm2d(ch), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def densenet(
    num_classes: int = 1000,
    growth_rate: int = 32,
    block_config: tuple[int, ...] = (6, 12, 24, 16),
    num_init_features: int = 64,
    bn_size: int = 4,
) -> DenseNet:
    """DenseNet-BC; the defaults are DenseNet-121."""
    return DenseNet(growth_rate, block_config, num_init_features, bn_size, num_classes)


def build_densenet(
    *,
    num_classes: int = 1000,
    growth_rate: int = 12,
    block_config: tuple[int, ...] = (6, 12, 24, 16),
    num_init_features: int = 24,
    bn_size: int = 4,
    batch_size: int = 1,
    image_size: int = 64,
    seed: int = 0,
) -> tuple[nn.Module, ExampleInputs]:
    """DenseNet-121 structure with ``growth_rate=12``; example input ``(batch_size, 3, 64, 64)``."""
    with seeded(seed):
        model = densenet(num_classes, growth_rate, block_config, num_init_features, bn_size)
        return finish_cnn(model, batch_size, image_size)
