"""ShuffleNetV2 (torchvision layout).

Stem ``conv3x3/2 -> BN -> ReLU -> maxpool3x3/2``; three stages of shuffle units (repeats
``(4, 8, 4)``); ``conv1x1 -> BN -> ReLU``; mean over H, W; linear classifier.

A stride-1 unit splits the input channels in half, ``x1, x2 = x.chunk(2, dim=1)``, transforms only
``x2`` with ``1x1 -> BN -> ReLU -> dw3x3 -> BN -> 1x1 -> BN -> ReLU`` and concatenates
``[x1, branch(x2)]``. A stride-2 unit feeds the whole input to both branches (``branch1`` is
``dw3x3/2 -> BN -> 1x1 -> BN -> ReLU``). Each unit ends with a channel shuffle over 2 groups:
``x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)``, i.e. output channel ``2j + g``
is input channel ``g * c/2 + j``. The split, concat and shuffle make every stride-1 unit's output a
fixed permutation of pass-through and new channels.

Stage channels for the 1.0x model are ``(24, 116, 232, 464, 1024)``; the 0.5x model is
``(24, 48, 96, 192, 1024)``. ``build_shufflenet`` uses 1.0x.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import ExampleInputs, finish_cnn, seeded

__all__ = ["ShuffleNetV2", "ShuffleUnit", "build_shufflenet", "channel_shuffle", "shufflenet"]

_STAGE_CHANNELS: dict[float, tuple[int, int, int, int, int]] = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` equal channel blocks: ``(b, g, c/g, h, w) -> (b, c/g, g, h, w)``."""
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2)
    return x.reshape(b, c, h, w)


def _pointwise(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]


def _depthwise(ch: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(ch, ch, 3, stride=stride, padding=1, groups=ch, bias=False), nn.BatchNorm2d(ch)]


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: split (stride 1) or duplicate (stride 2), two branches, concat, shuffle."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if stride == 1 and in_ch != out_ch:
            raise ValueError(f"ShuffleUnit: stride 1 needs in_ch == out_ch, got {in_ch} -> {out_ch}")
        half = out_ch // 2
        self.stride = stride
        self.branch1 = (
            nn.Sequential(*_depthwise(in_ch, stride), *_pointwise(in_ch, half)) if stride > 1 else None
        )
        branch2_in = in_ch if stride > 1 else half
        self.branch2 = nn.Sequential(
            *_pointwise(branch2_in, half), *_depthwise(half, stride), *_pointwise(half, half)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1 is None:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """Stem, three shuffle stages, 1x1 conv, spatial mean, linear classifier."""

    def __init__(
        self,
        stage_channels: tuple[int, int, int, int, int] = _STAGE_CHANNELS[1.0],
        stage_repeats: tuple[int, int, int] = (4, 8, 4),
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        stem = stage_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU()
        )
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = stem
        stages: list[nn.Sequential] = []
        for out_ch, repeats in zip(stage_channels[1:4], stage_repeats, strict=True):
            units = [ShuffleUnit(in_ch, out_ch, 2)]
            units += [ShuffleUnit(out_ch, out_ch, 1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            in_ch = out_ch
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = nn.Sequential(*_pointwise(in_ch, stage_channels[4]))
        self.fc = nn.Linear(stage_channels[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean(dim=(2, 3)))


def shufflenet(num_classes: int = 1000, width: float = 1.0) -> ShuffleNetV2:
    """ShuffleNetV2 at ``width`` in ``{0.5, 1.0, 1.5, 2.0}`` (the published channel tables)."""
    if width not in _STAGE_CHANNELS:
        raise ValueError(f"shufflenet: width must be one of {sorted(_STAGE_CHANNELS)}, got {width}")
    return ShuffleNetV2(_STAGE_CHANNELS[width], num_classes=num_classes)


def build_shufflenet(
    *, num_classes: int = 1000, width: float = 1.0, batch_size: int = 1, image_size: int = 64, seed: int = 0
) -> tuple[nn.Module, ExampleInputs]:
    """ShuffleNetV2 1.0x; example input ``(batch_size, 3, 64, 64)``."""
    with seeded(seed):
        return finish_cnn(shufflenet(num_classes, width), batch_size, image_size)
