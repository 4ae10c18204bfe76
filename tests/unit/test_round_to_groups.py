"""round_to holds for units wider than one channel (GroupNorm groups): kept channels stay multiples."""

from __future__ import annotations

import torch
from torch import nn

import graphprune as gp
from graphprune.analysis.allocation import unit_step


def test_unit_step() -> None:
    assert unit_step(1, 8) == 8
    assert unit_step(2, 8) == 4
    assert unit_step(16, 8) == 1  # a head of 16 channels is already a multiple of 8
    assert unit_step(3, 1) == 1


class _GNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.gn = nn.GroupNorm(16, 32)  # units of 2 channels
        self.c2 = nn.Conv2d(32, 24, 3, padding=1)
        self.c3 = nn.Conv2d(24, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c3(torch.relu(self.c2(torch.relu(self.gn(self.c1(x))))))


def test_round_to_with_groupnorm_units() -> None:
    torch.manual_seed(0)
    model = _GNNet().eval()
    res = gp.prune(model, torch.randn(1, 3, 8, 8), flops=0.4, round_to=8)
    assert res.report["verification"]["ok"]
    m = res.model
    assert m.c1.out_channels % 8 == 0 and m.c1.out_channels < 32
    assert m.gn.num_channels == m.c1.out_channels and m.gn.num_groups == m.c1.out_channels // 2
    assert m.c2.out_channels % 8 == 0
