"""MACs: multiply-accumulates of conv/conv-transpose/linear/matmul/bmm/einsum/sdpa only (the
fvcore / thop / Torch-Pruning convention), counted beside FLOPs, and ``macs=`` budgets.

Oracles: hand-computed counts, and torch's own FlopCounterMode (which counts 2 FLOPs per MAC of
mm/addmm/bmm/conv): MACs == its total / 2 on models made of those ops plus elementwise ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import graphprune as gp
from graphprune.cost import count
from graphprune.sources import load_source


class ConvMix(nn.Module):
    """conv (bias), grouped conv, depthwise conv, conv-transpose, pooling, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        h = self.dw(self.grouped(h))
        h = torch.relu(self.up(h))
        return self.fc(h.mean(dim=(2, 3)))


def _hand_convmix(n: int, hw: int) -> int:
    p = hw * hw
    conv = n * 8 * p * 3 * 9
    grouped = n * 8 * p * 4 * 9  # Cin/g = 4
    dw = n * 8 * p * 1 * 9
    up = n * 8 * p * 4 * 4  # transposed: every input element times Cout/g * prod(k)
    fc = n * 4 * 5
    return conv + grouped + dw + up + fc


class Attention(nn.Module):
    """Linear projections, sdpa, an explicit bmm and an einsum: the contractions of a block."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.h = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mix = nn.Parameter(torch.randn(d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        y = self.proj(y)
        g = torch.bmm(y, y.transpose(1, 2))  # [b, t, t]
        return torch.einsum("bts,sd->btd", g, self.mix[:t]) + y


def _hand_attention(b: int, t: int, d: int, h: int) -> int:
    qkv = b * t * d * 3 * d
    sdpa = b * h * t * t * (d // h + d // h)  # q k^T and attn v
    proj = b * t * d * d
    bmm = b * t * t * d
    einsum = b * t * t * d  # letters b, t, s, d
    return qkv + sdpa + proj + bmm + einsum


def _macs(model: nn.Module, x: torch.Tensor) -> float:
    return count(gp.analyze(model, x).graph).macs


def _torch_macs(model: nn.Module, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return fc.get_total_flops() / 2


def test_conv_linear_macs_equal_hand_count_and_torch_flop_counter() -> None:
    torch.manual_seed(0)
    model, x = ConvMix().eval(), torch.randn(2, 3, 6, 6)
    got = _macs(model, x)
    assert got == _hand_convmix(2, 6)
    assert got == _torch_macs(model, x)
    rep = count(gp.analyze(model, x).graph)
    # FLOPs = 2 x MACs + the elementwise/pooling ops, never less
    assert rep.flops > 2 * rep.macs


def test_attention_macs_equal_hand_count() -> None:
    torch.manual_seed(0)
    model, x = Attention().eval(), torch.randn(2, 5, 16)
    assert _macs(model, x) == _hand_attention(2, 5, 16, 2)


def test_linear_bmm_einsum_macs_equal_torch_flop_counter() -> None:
    class NoSdpa(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(12, 24)
            self.w = nn.Parameter(torch.randn(24, 7))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(x))
            g = torch.bmm(h, h.transpose(1, 2))
            return torch.einsum("bij,jk->bik", g, h[0]) @ self.w

    torch.manual_seed(0)
    model, x = NoSdpa().eval(), torch.randn(3, 4, 12)
    assert _macs(model, x) == _torch_macs(model, x) == 3 * 4 * 12 * 24 + 3 * 4 * 4 * 24 + 3 * 4 * 4 * 24 + 3 * 4 * 24 * 7


def test_macs_budget_lands_within_1_percent_on_attention() -> None:
    model, x = load_source("bert_tiny")
    res = gp.prune(model, x, macs=0.5)
    rep = res.report
    assert rep["budget"]["metric"] == "macs" and "MACs" in rep["budget"]["counts"]
    assert rep["target"] == {"macs": 0.5}
    assert abs(rep["kept"]["macs"] - 0.5) <= 0.005
    assert rep["achieved"]["macs"] == rep["kept"]["macs"] == rep["macs_after"] / rep["macs_before"]
    assert rep["target_met"] is True
    # independent count of the written model: its MACs over the original's
    after = _macs(res.model, x)
    assert after == rep["macs_after"]
    # the flops the budget did not price kept a different fraction
    assert rep["kept"]["flops"] != rep["kept"]["macs"]


def test_greedy_prices_macs() -> None:
    torch.manual_seed(0)
    model, x = ConvMix().eval(), torch.randn(2, 3, 6, 6)
    rep = gp.prune(model, x, macs=0.6, allocation="greedy").report
    assert rep["allocation"] == "greedy" and rep["budget"]["metric"] == "macs"
    assert rep["macs_after"] <= 0.6 * rep["macs_before"] * 1.01
