"""Default rounding: kept widths follow the target runtime's channel step, the FLOPs target still
lands within 1%, and a group too small for four steps is rounded finer instead of frozen."""

from __future__ import annotations

import pytest
import torch
from _cli_models import convnet
from graphprune.models import build
from torch import nn

import graphprune as gp
from graphprune.analysis import couple
from graphprune.analysis.allocation import runtime_round_to
from graphprune.cli import main
from graphprune.cost.runtimes import make_runtime
from graphprune.errors import OptionError
from graphprune.frontends import capture


class _Wide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 96, 3, padding=1)
        self.c2 = nn.Conv2d(96, 128, 3, padding=1)
        self.c3 = nn.Conv2d(128, 12, 3, padding=1)  # 12 channels: too small for a step of 8 or 16
        self.c4 = nn.Conv2d(12, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c4(torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))))


def _model() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return _Wide().eval(), (torch.randn(1, 3, 12, 12),)


def test_runtime_round_to_per_group() -> None:
    model, x = _model()
    coupling = couple(capture(model, x).graph)
    sizes = sorted((g.size, r) for g, r in zip(coupling.groups, runtime_round_to(coupling, 16), strict=True))
    assert sizes == [(12, 2), (96, 16), (128, 16)]  # 12 // 4 = 3 -> the power of two below: 2


def test_default_widths_are_on_the_runtime_step_and_flops_within_one_percent() -> None:
    model, x = _model()
    step = make_runtime("onnxruntime").step
    res = gp.prune(model, x, flops=0.5)
    assert res.report["verification"]["ok"] and res.report["round_to"] == step
    assert res.model.c1.out_channels % step == 0 and res.model.c2.out_channels % step == 0
    assert res.model.c1.out_channels < 96 or res.model.c2.out_channels < 128
    assert res.model.c3.out_channels % 2 == 0
    assert res.report["achieved"]["flops"] == pytest.approx(0.5, rel=0.01)
    assert res.plan.round_to == step


@pytest.mark.parametrize("name", ["resnet18_w050", "mobilenet_v2", "vit_tiny"])
def test_builtin_models_meet_flops_within_one_percent_with_default_rounding(name: str) -> None:
    model, x = build(name)
    for frac in (0.3, 0.7):
        res = gp.prune(model, x, flops=frac)
        assert res.report["achieved"]["flops"] == pytest.approx(frac, rel=0.01), (name, frac)


def test_round_to_one_keeps_any_width_and_bad_values_name_the_option() -> None:
    model, x = _model()
    res = gp.prune(model, x, flops=0.5, round_to=1)
    assert res.report["round_to"] == 1
    with pytest.raises(OptionError, match="round_to=0"):
        gp.prune(model, x, flops=0.5, round_to=0)
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "resnet18_w050", "--flops", "0.5", "--round-to", "0", "-o", "x.onnx"])
    assert exit_info.value.code == 2


def test_steps_too_coarse_for_the_budget_are_halved() -> None:
    """Two 32-channel layers move 8 channels at a time on the runtime's step: 0.58 of the FLOPs at
    best for a 0.5 budget; the default rounds finer instead of missing the target."""
    torch.manual_seed(0)
    model, x = convnet()  # two 32-channel convs
    coarse = gp.prune(model, x, flops=0.5, round_to=8)
    assert coarse.report["achieved"]["flops"] > 0.55
    res = gp.prune(model, x, flops=0.5)
    assert res.report["round_to"] < 8 and res.report["target_met"]
    assert res.report["achieved"]["flops"] == pytest.approx(0.5, abs=0.01)
    assert res.model.conv1.out_channels % res.report["round_to"] == 0
