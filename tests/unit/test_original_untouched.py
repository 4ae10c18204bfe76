"""The user's model is never modified by pruning, whatever route wrote the result.

Regression: the fx route's GraphModule shared unsliced weights with the user's model (through
the exported program), so reconstruct-bias/lsq on a depth-pruned model, or fine-tuning the
result, changed the original in place.
"""

from __future__ import annotations

import torch
from torch import nn

import graphprune as gp


class ResMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 16)
        self.fc1 = nn.ModuleList([nn.Linear(16, 24) for _ in range(2)])
        self.fc2 = nn.ModuleList([nn.Linear(24, 16) for _ in range(2)])
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for a, b in zip(self.fc1, self.fc2, strict=True):
            h = h + b(torch.relu(a(h)))
        return self.head(h)


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.mha = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(32, 32)
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.mha(h, h, h, need_weights=False)[0]
        return self.out(torch.relu(self.fc(h)))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_fx_route_result_does_not_share_weights_with_the_original() -> None:
    torch.manual_seed(0)
    model, x = Attn().eval(), torch.randn(2, 5, 8)
    before = _snapshot(model)
    res = gp.prune(model, x, flops=0.6)
    assert res.report["route"] == "fx"
    with torch.no_grad():
        for p in res.model.parameters():
            p.add_(1.0)
    assert _unchanged(model, before)


def test_reconstruction_on_a_depth_pruned_model_leaves_the_original_alone() -> None:
    torch.manual_seed(0)
    model, x = ResMLP().eval(), torch.randn(8, 16)
    with torch.no_grad():
        model.fc2[0].weight.mul_(1e-3)  # block 0's branch barely matters: the knapsack drops it whole
    calib = [torch.randn(8, 16) for _ in range(4)]
    before = _snapshot(model)
    res = gp.prune(model, x, flops=0.5, allocation="greedy", depth=True, criterion="taylor", calib=calib,
                   reconstruct="lsq,bias")
    assert res.report["route"] == "fx" and res.report["groups_removed_whole"] == 1
    assert res.report["reconstruction"]  # something was refit in the pruned model...
    assert _unchanged(model, before)  # ...and nothing in the original
