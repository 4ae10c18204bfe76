"""U-Net: a conv encoder-decoder with skip connections joined by concatenation.

``DoubleConv = (conv3x3 -> norm -> ReLU) x 2``. The encoder applies a DoubleConv at each of
``depth + 1`` levels with widths ``base * 2**i``, halving the resolution with ``maxpool2x2``
in between. Each decoder level upsamples with ``ConvTranspose2d(k=2, s=2)`` (``2c -> c`` channels),
concatenates the encoder feature of the same resolution, ``torch.cat([skip, up], dim=1)``
(``2c`` channels), and applies a DoubleConv back to ``c``. A final ``conv1x1`` gives per-pixel
class logits ``(B, num_classes, H, W)``; ``H`` and ``W`` must be divisible by ``2**depth``.

``norm`` is ``"group"`` (``GroupNorm(groups, c)``: statistics over channel groups, so channels are
tied group-wise) or ``"batch"`` (``BatchNorm2d``). ``build_unet`` uses ``base=16, depth=4``,
GroupNorm with 8 groups.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ._common import ExampleInputs, finish_cnn, seeded

__all__ = ["DoubleConv", "UNet", "build_unet", "unet"]

NormKind = Literal["group", "batch"]


def _norm(kind: NormKind, ch: int, groups: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(groups, ch)
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    raise ValueError(f"unet: norm must be 'group' or 'batch', got {kind!r}")


class DoubleConv(nn.Sequential):
    """``(conv3x3 -> norm -> ReLU) x 2``."""

    def __init__(self, in_ch: int, out_ch: int, norm: NormKind, groups: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            _norm(norm, out_ch, groups),
            nn.ReLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            _norm(norm, out_ch, groups),
            nn.ReLU(),
        )


class UNet(nn.Module):
    """Encoder (DoubleConv + maxpool), bottleneck, decoder (ConvTranspose2d + concat + DoubleConv)."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        base: int = 64,
        depth: int = 4,
        norm: NormKind = "group",
        groups: int = 8,
    ) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        ch = in_channels
        for w in widths:
            self.down.append(DoubleConv(ch, w, norm, groups))
            ch = w
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(ch, w, 2, stride=2))
            self.dec.append(DoubleConv(2 * w, w, norm, groups))
            ch = w
        self.head = nn.Conv2d(ch, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


def unet(
    in_channels: int = 3,
    num_classes: int = 2,
    base: int = 64,
    depth: int = 4,
    norm: NormKind = "group",
    groups: int = 8,
) -> UNet:
    """U-Net with ``depth`` down/up levels and widths ``base * 2**i``."""
    return UNet(in_channels, num_classes, base, depth, norm, groups)


def build_unet(
    *,
    num_classes: int = 2,
    base: int = 16,
    depth: int = 4,
    norm: NormKind = "group",
    groups: int = 8,
    batch_size: int = 1,
    image_size: int = 64,
    seed: int = 0,
) -> tuple[nn.Module, ExampleInputs]:
    """U-Net ``base=16, depth=4`` with GroupNorm; example input ``(batch_size, 3, 64, 64)``."""
    with seeded(seed):
        return finish_cnn(unet(3, num_classes, base, depth, norm, groups), batch_size, image_size)
