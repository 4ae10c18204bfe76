"""The calibration pass gives the same statistics whatever the activations' memory format.

Oracles: ``F.unfold`` patches and a float64 ``Z^T Z`` / channel sums computed on NCHW copies; for the
whole pass, the statistics of the channels-last forward against those of the NCHW forward of the
same captured graph (equal up to the float rounding of a different conv summation order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphprune.analysis import calibration
from graphprune.analysis.calibration import (
    channel_sums,
    channels_last_safe,
    collect_stats,
    conv_patches,
    inplace_nodes,
    kernel_to_channel_major,
    reader_sites,
    shift_gram,
)
from graphprune.analysis.coupling import couple
from graphprune.frontends.torch_export import capture

GEOMS = [((3, 3), 1, 1, 1), ((3, 2), (2, 1), (1, 0), (1, 2)), ((1, 1), 1, 0, 1), ((3, 3), 1, 2, 2)]


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_patches_gathered_in_place_equal_unfold(geom: tuple, channels_last: bool) -> None:
    """Rows gathered straight from the input (borders zero-filled), both column orders."""
    kernel, stride, padding, dilation = geom
    x = torch.randn(2, 5, 9, 11, generator=torch.Generator().manual_seed(0))
    ref = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    ref = ref.transpose(1, 2).reshape(-1, ref.shape[1])
    xin = _cl(x) if channels_last else x
    idx = torch.tensor([0, 1, 7, ref.shape[0] // 2, ref.shape[0] - 1])
    assert torch.equal(conv_patches(xin, kernel, stride, padding, dilation, idx), ref[idx])
    km = conv_patches(xin, kernel, stride, padding, dilation, idx, channel_major=False)
    p = kernel_to_channel_major(5, kernel[0] * kernel[1])
    assert torch.equal(km[:, p], ref[idx])


def test_channel_sums_of_a_channels_last_tensor() -> None:
    x = _cl(torch.randn(3, 6, 5, 7, generator=torch.Generator().manual_seed(0)) + 1.0)
    assert not x.is_contiguous()
    s, q, n = channel_sums(x, 1)
    xd = x.double()
    np.testing.assert_allclose(s, xd.sum((0, 2, 3)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(q, xd.square().sum((0, 2, 3)).numpy(), rtol=1e-6)
    assert n == 3 * 5 * 7


@pytest.mark.parametrize("geom", [((3, 3), 1, 1), ((3, 3), 6, 6), ((1, 1), 0, 1), ((5, 5), 2, 1)])
def test_shift_gram_of_a_channels_last_input(geom: tuple) -> None:
    kernel, padding, dilation = geom
    x = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(1)).double()
    g, gs, n = shift_gram(x, kernel, padding, dilation)
    g2, gs2, n2 = shift_gram(_cl(x), kernel, padding, dilation, chunk=5)
    assert n2 == n
    torch.testing.assert_close(g2, g, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gs2, gs, rtol=1e-10, atol=1e-10)


class ConvNet(nn.Module):
    """Conv/BN/ReLU, pooling, upsampling and a concat: every op is layout-agnostic."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())
        self.c = nn.Conv2d(20, 4, 3, padding=1)
        self.d = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        b = F.interpolate(self.b(a), size=a.shape[2:], mode="bilinear", align_corners=False)
        return self.d(F.relu(self.c(torch.cat([a, b], 1))))


class WithHead(ConvNet):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * 8 * 10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(super().forward(x).flatten(1))


def _stats(net: nn.Module, xs: list[torch.Tensor]) -> tuple[bool, dict]:
    cap = capture(net, (xs[0],))
    sites = reader_sites(couple(cap.graph))
    gram_for = {s.node for s in sites if s.linear_like}
    return channels_last_safe(cap.program.module()), collect_stats(cap.program, sites, xs, gram_for)


def test_channels_last_in_place_forward_gives_the_nchw_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = ConvNet().eval()
    xs = [torch.randn(2, 3, 8, 10), torch.randn(3, 3, 8, 10)]
    safe, fast = _stats(net, xs)
    assert safe
    assert len(inplace_nodes(capture(net, (xs[0],)).program.module())) == 3  # the three ReLUs
    monkeypatch.setattr(calibration, "channels_last_safe", lambda gm: False)
    monkeypatch.setattr(calibration, "inplace_nodes", lambda gm: frozenset())
    _, ref = _stats(net, xs)
    assert set(fast) == set(ref) == {"conv2d_1", "conv2d_2", "conv2d_3"}
    for name, st in ref.items():
        got = fast[name]
        assert got.n == st.n and got.gn == st.gn
        np.testing.assert_allclose(got.sum, st.sum, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.sumsq, st.sumsq, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.gram, st.gram, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.gsum, st.gsum, rtol=1e-5, atol=1e-5)


def test_a_graph_with_a_flatten_keeps_the_inputs_format() -> None:
    torch.manual_seed(0)
    safe, _ = _stats(WithHead().eval(), [torch.randn(2, 3, 8, 10)])
    assert not safe


def test_shift_gram_adds_weighted_blocks_into_a_running_sum() -> None:
    """The calibration pass adds each batch's shift Gram in place (``out``, ``weight``)."""
    gen = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(2, 4, 6, 7, generator=gen).double(), torch.randn(1, 4, 6, 7, generator=gen).double()
    g1, _, _ = shift_gram(x1, (3, 3), 1, 1)
    g2, gs2, n2 = shift_gram(x2, (3, 3), 1, 1)
    acc = torch.zeros(36, 36, dtype=torch.float64)
    shift_gram(x1, (3, 3), 1, 1, out=acc, weight=2.0)
    got, gs, n = shift_gram(x2, (3, 3), 1, 1, out=acc, weight=0.5)
    assert got is acc and n == n2
    torch.testing.assert_close(acc, 2.0 * g1 + 0.5 * g2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gs, gs2, rtol=0, atol=0)


class InputRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 6, 1)
        self.d = nn.Conv2d(6, 4, 1)
        self.e = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(torch.relu(x))
        return self.d(torch.relu(y)) + self.e(y)  # y has two readers: its ReLU must not run in place


def test_in_place_activations_never_touch_inputs_or_shared_tensors() -> None:
    torch.manual_seed(0)
    net = InputRelu().eval()
    xs = [torch.randn(2, 3, 4, 5)]
    keep = xs[0].clone()
    cap = capture(net, (xs[0],))
    assert inplace_nodes(cap.program.module()) == frozenset()
    _, stats = _stats(net, xs)
    assert torch.equal(xs[0], keep)
    with torch.no_grad():
        y = net.c(torch.relu(xs[0])).double()
    np.testing.assert_allclose(stats["conv2d_1"].sum, torch.relu(y).sum((0, 2, 3)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(stats["conv2d_2"].sum, y.sum((0, 2, 3)).numpy(), rtol=1e-6)
