"""Models for the detector-capture tests (importable by the CLI as ``_detect_models:<factory>``)."""

from __future__ import annotations

import torch
from torch import nn


class AllGlue(nn.Module):
    """Data-dependent control flow in forward and no sub-module: nothing can be captured."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.w.T
        if y.sum() > 0:
            return y * 2
        return y


def all_glue() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return AllGlue().eval(), (torch.randn(2, 3),)


class NoisyGlue(nn.Module):
    """Two conv fragments; the glue between them draws noise, so the second fragment's input
    differs on every run (as proposals chosen by top-k/NMS can between a model and its pruned copy);
    the third reads the second's output directly."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 4, 1)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if y.sum() > -1e9:  # data-dependent: torch.export cannot capture forward whole
            y = y + torch.randn_like(y)
        return self.c(self.b(y))
