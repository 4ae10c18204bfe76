"""Weight-standardized convolutions (timm's StdConv2d / ScaledStdConv2d, NFNets, BiT), written here.

The weight is standardized per output filter over its Cin * k * k entries before the conv
(``batch_norm(w.reshape(1, Cout, -1), None, None, training=True)``): a statistic of the WEIGHT.
The masked original therefore zeroes a removed input channel on the activation side (its
writers), leaving the weight whole so its standardization is unchanged, and the module route
replaces the module by an nn.Conv2d holding the standardized full weight (gain and scale folded)
sliced to the kept channels -- exactly equal (docs/ARCHITECTURE.md, "Weight standardization").
Before this rule the input side was a named barrier (NFNet-L0 kept 0.947 of its FLOPs at 0.5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune as gp
from graphprune.export import save_model
from graphprune.verification import masked_original, verify_pruned


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


class _Block(nn.Module):
    """NF-style residual block: act -> std conv -> act -> std conv, added to the stream."""

    def __init__(self, cls: type[nn.Conv2d], c: int, mid: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = cls(c, mid, 3, padding=1), cls(mid, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.conv2(F.gelu(self.conv1(F.gelu(x))))


class _ResNet(nn.Module):
    def __init__(self, cls: type[nn.Conv2d]) -> None:
        super().__init__()
        self.stem = cls(3, 16, 3, padding=1)
        self.blocks = nn.Sequential(_Block(cls, 16, 24), _Block(cls, 16, 24))
        self.down = cls(16, 32, 3, stride=2, padding=1, bias=False)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(F.gelu(self.blocks(self.stem(x))))
        return self.head(F.gelu(y).mean((2, 3)))


def _resnet(cls: type[nn.Conv2d]) -> _ResNet:
    torch.manual_seed(0)
    return _ResNet(cls).eval()


@pytest.mark.parametrize("cls", [StdConv2d, ScaledStdConv2d])
def test_std_conv_input_channels_prune_exactly(cls: type[nn.Conv2d]) -> None:
    model, x = _net(cls), torch.randn(2, 3, 8, 8)
    a = gp.analyze(model, x)
    weights = [sorted(w for w in g["weights"] if w.endswith("weight[0]") or w.endswith("weight[1]"))
               for g in a.report["groups"]]
    # input AND output channels of every std conv are free now; nothing is a barrier
    assert weights == [["0.weight[0]", "2.weight[1]"], ["2.weight[0]", "4.weight[1]"], ["4.weight[0]", "6.weight[1]"]]
    assert a.report["barriers"] == {}
    res = gp.prune(model, x, flops=0.5)
    assert res.report["flops_after"] <= 0.55 * res.report["flops_before"]
    assert res.report["pinned_after_check"] == []
    assert res.report["route"] == "module" and res.report["verification"]["ok"] is True
    # the std convs became plain convs holding the folded weight
    assert [type(m) for m in res.model] == [nn.Conv2d, nn.ReLU] * 3 + [nn.Conv2d]
    assert res.model[2].in_channels < 8 and res.model[4].in_channels < 16
    assert verify_pruned(model, res.model, res.coupling, res.removed, x, random_trials=2).ok


def test_folded_weight_is_the_standardized_weight_sliced() -> None:
    """The oracle written out: zeroing the removed INPUT ACTIVATIONS of the original module equals
    the pruned plain conv on the kept channels (not a re-standardization of the kept weights)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), ScaledStdConv2d(8, 6, 3, padding=1)).eval()
    x = torch.randn(2, 3, 6, 6)
    res = gp.prune(model, x, flops=0.6)
    kept_in = res.coupling.kept(next(v for v in res.coupling.graph.values if v.source == "2.weight"), 1, res.removed)
    assert 0 < len(kept_in) < 8
    with torch.no_grad():
        h = model[1](model[0](x))
        mask = torch.zeros(8)
        mask[torch.as_tensor(kept_in)] = 1
        ref = model[2](h * mask.view(1, -1, 1, 1))
        got = res.model(x)
        w = model[2].weight_std()[:, torch.as_tensor(kept_in)]
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(res.model[2].weight, w)


@pytest.mark.parametrize("cls", [StdConv2d, ScaledStdConv2d])
def test_std_conv_residual_net_half_flops_equal_and_onnx(cls: type[nn.Conv2d], tmp_path: Path) -> None:
    model, x = _resnet(cls), torch.randn(2, 3, 16, 16)
    res = gp.prune(model, x, flops=0.5)
    assert res.report["flops_after"] <= 0.55 * res.report["flops_before"]
    assert res.report["pinned_after_check"] == [] and res.report["verification"]["ok"] is True
    assert res.report["route"] == "module"
    # the stem reads the image (its inputs stay whole): it keeps its class and standardizes; the
    # convs reading the pruned stream are folded
    assert type(res.model.stem) is cls and res.model.stem.out_channels < 16
    assert type(res.model.blocks[0].conv1) is nn.Conv2d and res.model.blocks[0].conv1.in_channels < 16
    (note,) = [n for n in res.report["notes"] if n.startswith("weight-standardized")]
    assert note.startswith("weight-standardized conv(s) 'blocks.0.conv1', 'blocks.0.conv2', 'blocks.1.conv1', "
                           "'blocks.1.conv2', 'down' lost input channels and were replaced by an nn.Conv2d holding the standardized full weight")
    for batch in (1, 3):  # equal to the masked original at two batch sizes
        xb = torch.randn(batch, 3, 16, 16)
        assert verify_pruned(model, res.model, res.coupling, res.removed, xb, random_trials=1).ok
    save_model(res.model, tmp_path / "p.onnx", x)
    sess = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = masked_original(model, res.coupling, res.removed)(x).numpy()
    assert np.allclose(got, ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


class _SamePadStdConv2d(ScaledStdConv2d):
    """A "same" variant (as timm's ScaledStdConv2dSame): pads in forward, then convolves."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight_std(), self.bias, self.stride, 0, self.dilation, self.groups)


def test_unfoldable_module_takes_the_fx_route_which_folds_in_the_graph() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), _SamePadStdConv2d(8, 16, 3), nn.ReLU(),
                          nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    res = gp.prune(model, x, flops=0.5)
    assert res.report["route"] == "fx"
    assert res.report["route_reason"] == (
        "weight-standardized conv '2' (_SamePadStdConv2d) does not call conv2d on its own input with its own "
        "stride/padding/dilation/groups (a padding variant?); the module route cannot fold it into an nn.Conv2d")
    assert res.report["pinned_after_check"] == [] and res.report["verification"]["ok"] is True
    assert res.report["flops_after"] <= 0.55 * res.report["flops_before"]
    assert "graphprune_folded_std_weight_0" in dict(res.model.named_parameters())
    assert verify_pruned(model, res.model, res.coupling, res.removed, torch.randn(3, 3, 8, 8), random_trials=1).ok


def test_eval_batch_norm_still_prunes_with_running_stats() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    a = gp.analyze(model, torch.randn(2, 3, 8, 8))
    assert [sorted(w for w in g["weights"]) for g in a.report["groups"]] == [
        ["0.bias[0]", "0.weight[0]", "1.bias[0]", "1.running_mean[0]", "1.running_var[0]", "1.weight[0]", "3.weight[1]"]
    ]
