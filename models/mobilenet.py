"""MobileNetV2 (torchvision layout) with a width multiplier.

Stem ``conv3x3/2 -> BN -> ReLU6``; seventeen inverted residual blocks; ``conv1x1 -> BN -> ReLU6`` to
``last_channel``; global average pool; linear classifier.

An inverted residual with expansion ``t`` computes
``y = BN(pw_linear(ReLU6(BN(dw3x3/s(ReLU6(BN(pw_expand(x))))))))`` (the expand is skipped when
``t == 1``), and ``y + x`` only when ``stride == 1`` and input and output channels agree. The
depthwise conv (``groups == channels``) ties its input and output channels one to one, so the
expanded hidden width is one channel space per block.

Block settings ``(t, c, n, s)``: expansion, output channels (times ``width``), repeats, first stride.
``build_mobilenet_v2`` uses ``width=1.0`` (about 25 MMACs at 64x64).
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import ExampleInputs, finish_cnn, make_divisible, seeded

__all__ = ["InvertedResidual", "MobileNetV2", "build_mobilenet_v2", "mobilenet_v2"]

_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    pad = (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=pad, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """Expand 1x1 (ReLU6), depthwise 3x3 (ReLU6), linear 1x1 projection; residual if shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_act(in_ch, hidden, 1))
        layers += [
            _conv_bn_act(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """Stem, inverted residual stack, 1x1 head conv, pool, linear classifier."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0, last_channel: int = 1280) -> None:
        super().__init__()
        in_ch = make_divisible(32 * width)
        last = make_divisible(last_channel * max(1.0, width))
        features: list[nn.Module] = [_conv_bn_act(3, in_ch, 3, stride=2)]
        for t, c, n, s in _SETTINGS:
            out_ch = make_divisible(c * width)
            for i in range(n):
                features.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        features.append(_conv_bn_act(in_ch, last, 1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 1000, width: float = 1.0) -> MobileNetV2:
    """MobileNetV2 with channel counts scaled by ``width`` (rounded to multiples of 8)."""
    return MobileNetV2(num_classes=num_classes, width=width)


def build_mobilenet_v2(
    *, num_classes: int = 1000, width: float = 1.0, batch_size: int = 1, image_size: int = 64, seed: int = 0
) -> tuple[nn.Module, ExampleInputs]:
    """MobileNetV2 at ``width=1.0``; example input ``(batch_size, 3, 64, 64)``."""
    with seeded(seed):
        return finish_cnn(mobilenet_v2(num_classes, width), batch_size, image_size)
