"""Weight-standardized convolutions (timm's StdConv2d / ScaledStdConv2d, NFNets, BiT), written here.

The weight is standardized per output filter over its Cin * k * k entries before the conv
(``batch_norm(w.reshape(1, Cout, -1), None, None, training=True)``). Removing input channels would
change those statistics, so the conv's input channels must stay whole; its output channels are
free. Before the batch-statistics rule, pruning such a model failed the oracle (NFNet-L0: max
error 0.094) -- now the analysis pins exactly the input side and the result passes with nothing
pinned after the check. No exact rule can free the input side while the module standardizes: the
masked original's standardized filter restricted to the kept inputs has a nonzero mean over them,
and every re-standardized weight has mean zero (docs/ARCHITECTURE.md, "Weight standardization").
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune as gp
from graphprune.rules.norm import STATS_PIN
from graphprune.verification import verify_pruned


class StdConv2d(nn.Conv2d):
    def __init__(self, *args: int, eps: float = 1e-6, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def weight_std(self) -> torch.Tensor:
        w = self.weight.reshape(1, self.out_channels, -1)
        return F.batch_norm(w, None, None, training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight_std(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class ScaledStdConv2d(StdConv2d):
    def __init__(self, *args: int, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)
        self.scale = self.weight[0].numel() ** -0.5

    def weight_std(self) -> torch.Tensor:
        w = self.weight.reshape(1, self.out_channels, -1)
        gain = (self.gain * self.scale).view(-1)
        return F.batch_norm(w, None, None, weight=gain, training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)


def _net(cls: type[nn.Conv2d]) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        cls(8, 16, 3, padding=1), nn.ReLU(),
        cls(16, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 4, 1),
    ).eval()


@pytest.mark.parametrize("cls", [StdConv2d, ScaledStdConv2d])
def test_std_conv_input_channels_pinned_outputs_free(cls: type[nn.Conv2d]) -> None:
    model, x = _net(cls), torch.randn(2, 3, 8, 8)
    a = gp.analyze(model, x)
    weights = [sorted(w for w in g["weights"] if w.endswith("weight[0]") or w.endswith("weight[1]"))
               for g in a.report["groups"]]
    # only the last std conv's filters (read by the plain 1x1 conv) can go
    assert weights == [["4.weight[0]", "6.weight[1]"]]
    # the pin is named: a barrier in the report, and the reason at the end of the --why chain
    assert a.report["barriers"] == {"aten.batch_norm.default": ["batch_norm", "batch_norm_1"]}
    w = next(v for v in a.coupling.graph.values if v.source == "2.weight")
    why = a.coupling.explain(w, 1, 0)
    assert why[0] == f"{w.name}[1][0] is frozen: {STATS_PIN}"
    assert "tied by reshape" in why[-1]
    res = gp.prune(model, x, flops=0.8)
    assert res.report["pinned_after_check"] == []
    assert res.report["verification"]["ok"] is True
    assert (res.model[2].in_channels, res.model[2].out_channels, res.model[4].in_channels) == (8, 16, 16)
    assert res.model[4].out_channels < 8 and res.model[6].in_channels == res.model[4].out_channels
    assert verify_pruned(model, res.model, res.coupling, res.removed, x, random_trials=2).ok


def test_eval_batch_norm_still_prunes_with_running_stats() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    a = gp.analyze(model, torch.randn(2, 3, 8, 8))
    assert [sorted(w for w in g["weights"]) for g in a.report["groups"]] == [
        ["0.bias[0]", "0.weight[0]", "1.bias[0]", "1.running_mean[0]", "1.running_var[0]", "1.weight[0]", "3.weight[1]"]
    ]
