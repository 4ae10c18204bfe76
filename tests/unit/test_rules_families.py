"""Rules added for the transformers families of issue #12 item 5 (DeepSeek-V2, Mamba), on tiny
modules: ``aten.copy_`` into a fresh buffer, complex rotary views, uniform-fill constants.

Oracles: exact unit partitions per weight axis (heads move whole, the rotary pair and the
frequency axis stay), and ``gp.prune`` at flops=0.5 equals the masked original on a fresh input.
Counter-cases keep the axis frozen where the maths is not exact (an arange state).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from test_rules import canon, frozen, units
from torch import nn

import graphprune as gp
from graphprune.frontends import capture
from graphprune.rewrite import rewrite_fx
from graphprune.verification import masked_original

H, D, R = 4, 8, 4  # heads, per-head nope dim, shared rotary dim


class CopyKeys(nn.Module):
    """DeepSeek-V2's expand_kv: keys assembled in a new_empty buffer from per-head parts and one
    shared part expanded over the heads."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(16, H * (D + R), bias=False)
        self.kv = nn.Linear(16, H * (D + D), bias=False)
        self.rope = nn.Linear(16, R, bias=False)
        self.o = nn.Linear(H * D, 16, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q(x).view(b, s, -1, D + R).transpose(1, 2)
        kv = self.kv(x).view(b, s, -1, 2 * D).transpose(1, 2)
        k_nope, v = torch.split(kv, [D, D], dim=-1)
        k_rot = self.rope(x).view(b, 1, s, R).expand(-1, k_nope.shape[1], -1, -1)
        k = kv.new_empty(*kv.shape[:-1], D + R)
        k[..., :D].copy_(k_nope)
        k[..., D:].copy_(k_rot)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, s, -1))


class ComplexRope(nn.Module):
    """Rotary embedding in complex form (view_as_complex * polar table, view_as_real)."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(16, H * D, bias=False)
        self.o = nn.Linear(H * D, 16, bias=False)
        self.register_buffer("inv_freq", 1.0 / (100.0 ** (torch.arange(0, D, 2).float() / D)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        ang = torch.arange(s, dtype=torch.float32)[:, None] * self.inv_freq
        rot = torch.polar(torch.ones_like(ang), ang)  # [s, D/2]
        q = self.q(x).view(b, s, -1, D // 2, 2)
        q = torch.view_as_real(torch.view_as_complex(q) * rot[None, :, None, :]).flatten(3)
        return self.o(q.reshape(b, s, -1))


class ZeroState(nn.Module):
    """A linear recurrence from a zero state, like Mamba's selective scan: h_t = a * h_{t-1} + x_t."""

    def __init__(self, fill: str = "zeros") -> None:
        super().__init__()
        self.fill = fill
        self.inp = nn.Linear(16, 24)
        self.a = nn.Parameter(torch.rand(24))
        self.out = nn.Linear(24, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.inp(x)
        b, s, c = u.shape
        h = torch.zeros(b, c) if self.fill == "zeros" else torch.arange(c, dtype=u.dtype).expand(b, c)
        ys = []
        for t in range(s):
            h = self.a * h + u[:, t]
            ys.append(h)
        return self.out(torch.stack(ys, dim=1))


def _prunes_exactly(model: nn.Module, x: torch.Tensor) -> gp.PruneResult:
    model.eval()
    res = gp.prune(model, x, flops=0.5)
    assert res.report["verification"]["ok"]
    x2 = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(3))
    masked = masked_original(model, res.coupling, res.removed)
    with torch.no_grad():
        torch.testing.assert_close(res.model(x2), masked(x2), atol=1e-5, rtol=1e-5)
    return res


def test_copy_into_new_empty_keeps_heads_prunable() -> None:
    torch.manual_seed(0)
    m = CopyKeys()
    u = units(m, torch.randn(1, 5, 16))
    q, kv, o = u["q.weight"][0], u["kv.weight"][0], u["o.weight"][1]
    assert canon(q) == [i // (D + R) for i in range(H * (D + R))]  # whole heads, nope and rope dims together
    assert canon(kv) == [i // (2 * D) for i in range(H * 2 * D)]
    assert canon(o) == [i // D for i in range(H * D)]
    # one head is one unit across q, kv and o
    assert set(q[:: D + R].tolist()) == set(kv[:: 2 * D].tolist()) == set(o[::D].tolist())
    assert frozen(u["rope.weight"][0])  # the shared rotary key is expanded to every head: kept whole
    res = _prunes_exactly(m, torch.randn(1, 5, 16))
    assert res.model.o.in_features < H * D


def test_complex_rope_views_tie_heads_and_keep_the_pair() -> None:
    torch.manual_seed(0)
    m = ComplexRope()
    q = units(m, torch.randn(1, 5, 16))["q.weight"][0]
    # view (H, D/2, 2): the pair axis is consumed by view_as_complex and the frequency axis meets
    # the polar table (no rule: pinned), so within a head nothing moves; the head axis is free
    ids = q.reshape(H, D)
    assert not frozen(q)
    assert all(len(set(row.tolist())) == 1 for row in ids)  # a head moves whole
    assert len({int(row[0]) for row in ids}) == H
    _prunes_exactly(m, torch.randn(1, 5, 16))


def test_zero_state_recurrence_prunes_its_channels() -> None:
    torch.manual_seed(0)
    u = units(ZeroState(), torch.randn(1, 5, 16))
    assert canon(u["inp.weight"][0]) == list(range(24)) and not frozen(u["a"][0])
    assert np.array_equal(u["inp.weight"][0], u["out.weight"][1]) and np.array_equal(u["a"][0], u["out.weight"][1])
    model = ZeroState()
    res = _prunes_exactly(model, torch.randn(1, 5, 16))
    assert res.model.out.in_features < 24
    # the fx route rewrites the zeros' size too (rewrite/to_fx.py), and equals the masked original
    cap = capture(model, torch.randn(1, 5, 16))
    gm = rewrite_fx(cap.program, cap.graph, res.coupling, res.removed)
    x2 = torch.randn(1, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(gm(x2), masked_original(model, res.coupling, res.removed)(x2), atol=1e-5, rtol=1e-5)


def test_arange_state_stays_whole() -> None:
    """An arange is not a uniform fill: its channels differ, so the state's axis is pinned."""
    torch.manual_seed(0)
    u = units(ZeroState(fill="arange"), torch.randn(1, 5, 16))
    assert frozen(u["inp.weight"][0]) and frozen(u["out.weight"][1])
