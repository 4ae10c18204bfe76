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
