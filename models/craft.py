"""CRAFT-like text detector: a VGG16-BN backbone and a U-Net upsampling head with 2 output maps.

Backbone (VGG16-BN, ``conv3x3 -> BN -> ReLU``): stages of widths 64x2, 128x2, 256x3, 512x3, 512x3
with ``maxpool2x2`` between them, then CRAFT's ``fc6/fc7`` replacement: ``maxpool3x3/1 ->
conv3x3(512->1024, dilation 6) -> conv1x1(1024->1024)``. The head fuses features from deep to
shallow: at each level ``x = DoubleConv(cat([x, skip]))`` (``conv1x1 -> BN -> ReLU -> conv3x3 ->
BN -> ReLU``) then bilinear upsampling to the next skip's size; widths ``(512, 256) -> (256, 128)
-> (128, 64) -> (64, 32)``. A classifier ``conv3x3(32,32) x 2 -> conv3x3(32,16) -> conv1x1(16,16)
-> conv1x1(16, 2)`` gives the region and affinity maps at half the input resolution:
``(B, 2, H/2, W/2)``. ``H`` and ``W`` must be divisible by 16. About 20.8M parameters (width 1).

``width`` scales every channel count (``build_craft(width=0.25)`` for fast tests). Weights are
random (BN statistics calibrated on random images), which is enough to time pruning and to check
equivalence; it is not a trained detector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import ExampleInputs, finish_cnn, seeded

__all__ = ["Craft", "build_craft"]

_VGG = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _cbr(cin: int, cout: int, k: int = 3, dilation: int = 1) -> list[nn.Module]:
    pad = dilation * (k // 2)
    return [nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation), nn.BatchNorm2d(cout), nn.ReLU()]


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__(*_cbr(cin, mid, 1), *_cbr(mid, cout, 3))


class Craft(nn.Module):
    """VGG16-BN features (5 stages + dilated fc6/fc7) and a 4-level U-Net fusion head."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()

        def c(n: int) -> int:
            return max(4, int(round(n * width)))

        self.stages = nn.ModuleList()
        cin = 3
        for i, widths in enumerate(_VGG):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            for w in widths:
                layers += _cbr(cin, c(w))
                cin = c(w)
            self.stages.append(nn.Sequential(*layers))
        self.fc = nn.Sequential(nn.MaxPool2d(3, 1, 1), *_cbr(cin, c(1024), 3, dilation=6), *_cbr(c(1024), c(1024), 1))
        skips = (c(512), c(256), c(128))  # stage 4, 3, 2 outputs (stage 5 feeds the first level)
        self.up1 = _DoubleConv(c(1024) + c(512), c(512), c(256))
        self.up2 = _DoubleConv(c(256) + skips[0], c(256), c(128))
        self.up3 = _DoubleConv(c(128) + skips[1], c(128), c(64))
        self.up4 = _DoubleConv(c(64) + skips[2], c(64), c(32))
        self.cls = nn.Sequential(*_cbr(c(32), c(32)), *_cbr(c(32), c(32)), *_cbr(c(32), c(16)),
                                 *_cbr(c(16), c(16), 1), nn.Conv2d(c(16), 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        y = self.up1(torch.cat([self.fc(x), feats[4]], dim=1))
        for up, skip in ((self.up2, feats[3]), (self.up3, feats[2]), (self.up4, feats[1])):
            y = F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False)
            y = up(torch.cat([y, skip], dim=1))
        return self.cls(y)


def build_craft(
    *, width: float = 1.0, batch_size: int = 1, height: int = 64, image_width: int = 64, seed: int = 0,
) -> tuple[nn.Module, ExampleInputs]:
    """CRAFT-like detector; example input ``(batch_size, 3, height, image_width)``."""
    with seeded(seed):
        model, _ = finish_cnn(Craft(width), batch_size, 32)
        return model, (torch.randn(batch_size, 3, height, image_width),)
