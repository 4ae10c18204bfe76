"""Coupling rules on tiny modules: exact units, groups and frozen axes per weight.

Oracles:
- exact per-element unit ids of every weight axis (``units()`` below), compared across tensors
  (same id = removed together) and against hand-derived partitions (``canon()``);
- the IR verifier accepts every captured graph;
- for every model here, ``gp.prune(flops=0.5)`` is verified by the pipeline AND independently:
  the pruned model equals the masked original (DESIGN.md section 2) on a fresh random input, and
  the model's output shape never changes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune as gp
from graphprune.analysis.coupling import Coupling, couple
from graphprune.frontends.torch_export import capture
from graphprune.ir import Graph, IRError, verify_graph
from graphprune.verification import masked_original

# -- helpers -------------------------------------------------------------------------------------


def analyse(model: nn.Module, x: object) -> tuple[dict[str, list[np.ndarray]], Coupling, Graph]:
    """Capture + couple; returns (param/buffer FQN -> per-axis unit ids, coupling, graph)."""
    model.eval()
    cap = capture(model, x)
    c = couple(cap.graph)
    table = {v.source: [c.units_of(v, ax) for ax in range(v.rank)] for v in cap.graph.weights()}
    return table, c, cap.graph


def units(model: nn.Module, x: object) -> dict[str, list[np.ndarray]]:
    """param FQN -> list (one per axis) of unit-id arrays; -1 marks a frozen element."""
    return analyse(model, x)[0]


def canon(ids: np.ndarray) -> list[int]:
    """Relabel unit ids 0, 1, 2... in order of first appearance (-1 stays -1): a partition."""
    seen: dict[int, int] = {}
    out = []
    for u in ids.tolist():
        if u < 0:
            out.append(-1)
        else:
            out.append(seen.setdefault(u, len(seen)))
    return out


def frozen(ids: np.ndarray) -> bool:
    return bool((ids == -1).all())


def free(ids: np.ndarray) -> bool:
    return bool((ids >= 0).all())


def eq(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(a, b)


# -- models (3-6 ops each) -----------------------------------------------------------------------


class ConvBnConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn(self.conv1(x))))


class TwoBranchAdd(nn.Module):
    """a(x) + b(x) -> c: the two producers are tied by the add."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 1)
        self.b = nn.Conv2d(4, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.a(x) + self.b(x))


class AddIsOutput(nn.Module):
    """a(x) + b(x) is the model output: pinned, so both producers are frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 1)
        self.b = nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


class ResBlock(nn.Module):
    """stem -> h; h + c2(relu(c1(h))) -> head: stem, c2 and head share the residual stream."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.c1 = nn.Conv2d(8, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(h + self.c2(F.relu(self.c1(h))))


class CatConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 1)
        self.conv_b = nn.Conv2d(3, 6, 1)
        self.conv_c = nn.Conv2d(10, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_c(torch.cat([self.conv_a(x), self.conv_b(x)], dim=1))


class ChunkTwoConsumers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(4, 2, 1)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = torch.chunk(self.a(x), 2, dim=1)
        return self.b(p) + self.c(q)


class NarrowConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.narrow(self.a(x), 1, 2, 3))


class SliceConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)[:, 2:5])


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw1 = nn.Conv2d(3, 6, 1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.pw2 = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(F.relu(self.dw(self.pw1(x))))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw1 = nn.Conv2d(3, 16, 1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.pw2 = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.g(self.pw1(x)))


class TransposeConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 5, 1)
        self.up = nn.ConvTranspose2d(5, 6, 2, stride=2)
        self.conv = nn.Conv2d(6, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(self.pw(x)))


class FlattenLinear(nn.Module):
    """conv [N, 4, 2, 3] -> flatten [N, 24] -> linear: channel c owns columns c*6 .. c*6+5."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 2 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


class LinearLayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.fc1(x)))


class LinearGelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.gn = nn.GroupNorm(4, 16)
        self.b = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.gn(self.a(x)))


class Attention(nn.Module):
    """q/k/v Linear + view(B,S,H,D) + transpose + sdpa + transpose + reshape + out Linear.

    ``repeat_kv=True`` builds GQA with expand+reshape (LLaMA's repeat_kv); ``gqa=True`` passes
    Hkv < Hq heads to sdpa with ``enable_gqa=True``.
    """

    def __init__(
        self, embed: int, heads: int, kv_heads: int, gqa: bool = False, repeat_kv: bool = False
    ) -> None:
        super().__init__()
        self.h, self.hkv, self.d = heads, kv_heads, embed // heads
        self.gqa, self.repeat_kv = gqa, repeat_kv
        self.q = nn.Linear(embed, heads * self.d)
        self.k = nn.Linear(embed, kv_heads * self.d)
        self.v = nn.Linear(embed, kv_heads * self.d)
        self.o = nn.Linear(heads * self.d, embed)

    def _rep(self, t: torch.Tensor) -> torch.Tensor:
        b, hkv, s, d = t.shape
        r = self.h // hkv
        return t[:, :, None, :, :].expand(b, hkv, r, s, d).reshape(b, hkv * r, s, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.h, self.d).transpose(1, 2)
        k = self.k(x).view(b, s, self.hkv, self.d).transpose(1, 2)
        v = self.v(x).view(b, s, self.hkv, self.d).transpose(1, 2)
        if self.repeat_kv:
            k, v = self._rep(k), self._rep(v)
        if self.gqa:
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, s, self.h * self.d))


class ViewShuffle(nn.Module):
    """Channel shuffle written as view(b, g, c/g, h, w).transpose(1, 2).reshape(b, c, h, w)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.b = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        b, c, h, w = y.shape
        y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.b(y)


class ModuleShuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.shuffle = nn.ChannelShuffle(2)
        self.b = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.shuffle(self.a(x)))


@torch.library.custom_op("gptest::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    """A custom op graphprune cannot know: it must be a barrier."""
    return torch.sin(x)


@mystery.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class MysteryBranch(nn.Module):
    """A custom op (no rule) on branch a->b; branch c is untouched; both meet in an add."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.b = nn.Conv2d(6, 4, 1)
        self.c = nn.Conv2d(3, 4, 1)
        self.d = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.b(mystery(self.a(x)))
        return self.d(F.relu(self.c(x)) + u)


class RollBranch(nn.Module):
    """torch.roll along the channel axis on branch a->b; branch c is untouched; both meet in an add."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.b = nn.Conv2d(6, 4, 1)
        self.c = nn.Conv2d(3, 4, 1)
        self.d = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.b(torch.roll(self.a(x), 1, dims=1))
        return self.d(F.relu(self.c(x)) + u)


class IndexBranch(nn.Module):
    """x[:, idx] (aten.index on the channel axis) on one branch, a plain conv chain on the other."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 2, 1)
        self.c = nn.Conv2d(3, 5, 1)
        self.d = nn.Conv2d(5, 2, 1)
        self.register_buffer("idx", torch.tensor([0, 2, 5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)[:, self.idx]) + self.d(F.relu(self.c(x)))


def _img(*shape: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(*shape, generator=torch.Generator().manual_seed(0))


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor]]] = {
    "conv_bn_conv": (ConvBnConv, _img(1, 3, 6, 6)),
    "two_branch_add": (TwoBranchAdd, _img(1, 4, 5, 5)),
    "add_is_output": (AddIsOutput, _img(1, 4, 5, 5)),
    "res_block": (ResBlock, _img(1, 3, 5, 5)),
    "cat": (CatConv, _img(1, 3, 4, 4)),
    "chunk": (ChunkTwoConsumers, _img(1, 3, 4, 4)),
    "narrow": (NarrowConv, _img(1, 3, 4, 4)),
    "slice": (SliceConv, _img(1, 3, 4, 4)),
    "depthwise": (Depthwise, _img(1, 3, 4, 4)),
    "grouped": (Grouped, _img(1, 3, 4, 4)),
    "conv_transpose": (TransposeConv, _img(1, 3, 4, 4)),
    "flatten_linear": (FlattenLinear, _img(2, 3, 2, 3)),
    "layer_norm": (LinearLayerNorm, _img(2, 6)),
    "gelu": (LinearGelu, _img(2, 5, 6)),
    "group_norm": (GroupNormNet, _img(1, 3, 4, 4)),
    "mha": (lambda: Attention(12, 3, 3), _img(2, 5, 12)),
    "gqa_sdpa": (lambda: Attention(16, 4, 2, gqa=True), _img(2, 5, 16)),
    "gqa_repeat_kv": (lambda: Attention(16, 4, 2, repeat_kv=True), _img(2, 5, 16)),
    "view_shuffle": (ViewShuffle, _img(1, 3, 4, 4)),
    "module_shuffle": (ModuleShuffle, _img(1, 3, 4, 4)),
    "roll_barrier": (RollBranch, _img(1, 3, 4, 4)),
    "mystery_barrier": (MysteryBranch, _img(1, 3, 4, 4)),
    "index_barrier": (IndexBranch, _img(1, 3, 4, 4)),
}


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    factory, inputs = CASES[name]
    torch.manual_seed(0)
    return factory().eval(), inputs()


# -- 1. conv -> bn -> relu -> conv -------------------------------------------------------------


def test_conv_bn_relu_conv_shares_units_through_bn() -> None:
    u, c, _ = analyse(*build("conv_bn_conv"))
    out = u["conv1.weight"][0]
    assert canon(out) == list(range(8))  # one unit per filter
    for name in ("conv1.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        eq(u[name][0], out)
    eq(u["conv2.weight"][1], out)  # consumer-side input axis: identity map
    assert frozen(u["conv2.weight"][0]) and frozen(u["conv2.bias"][0])  # model output
    for ax in (1, 2, 3):  # model input channels and kernel axes
        assert frozen(u["conv1.weight"][ax])
    assert frozen(u["conv2.weight"][2]) and frozen(u["conv2.weight"][3])
    assert c.n_units == 8
    assert [(g.size, g.width) for g in c.groups] == [(8, 1)]
    assert c.barriers == {}


def test_kept_and_prunable_queries() -> None:
    _, c, g = analyse(*build("conv_bn_conv"))
    w1 = next(v for v in g.weights() if v.source == "conv1.weight")
    w2 = next(v for v in g.weights() if v.source == "conv2.weight")
    assert c.prunable(w1, 0) and not c.prunable(w1, 1)
    assert c.prunable(w2, 1) and not c.prunable(w2, 0)
    removed = np.zeros(c.n_units, dtype=bool)
    removed[c.units_of(w1, 0)[[3, 5]]] = True
    eq(c.kept(w1, 0, removed), [0, 1, 2, 4, 6, 7])
    eq(c.kept(w2, 1, removed), [0, 1, 2, 4, 6, 7])
    eq(c.kept(w2, 0, removed), [0, 1, 2, 3])


def test_masked_original_zeroes_only_consumer_columns() -> None:
    model, x = build("conv_bn_conv")
    _, c, g = analyse(model, x)
    w1 = next(v for v in g.weights() if v.source == "conv1.weight")
    removed = np.zeros(c.n_units, dtype=bool)
    removed[c.units_of(w1, 0)[3]] = True
    masked = masked_original(model, c, removed)
    assert masked is not model
    assert torch.equal(masked.conv2.weight[:, 3], torch.zeros_like(masked.conv2.weight[:, 3]))
    keep = [0, 1, 2, 4, 5, 6, 7]
    assert torch.equal(masked.conv2.weight[:, keep], model.conv2.weight[:, keep])
    assert torch.equal(masked.conv1.weight, model.conv1.weight)  # producer rows are not touched
    assert bool(model.conv2.weight[:, 3].abs().sum() > 0)  # the original is not mutated
    nothing = masked_original(model, c, np.zeros(c.n_units, dtype=bool))
    with torch.no_grad():
        assert torch.equal(nothing(x), model(x))


# -- 2. residual add ---------------------------------------------------------------------------


def test_two_branch_add_ties_both_producers() -> None:
    u, c, _ = analyse(*build("two_branch_add"))
    a = u["a.weight"][0]
    assert free(a) and canon(a) == list(range(8))
    eq(u["b.weight"][0], a)
    eq(u["a.bias"][0], a)
    eq(u["b.bias"][0], a)
    eq(u["c.weight"][1], a)
    assert frozen(u["c.weight"][0])
    assert c.n_units == 8 and len(c.groups) == 1


def test_add_that_is_the_model_output_is_frozen() -> None:
    u, c, _ = analyse(*build("add_is_output"))
    assert frozen(u["a.weight"][0]) and frozen(u["b.weight"][0])
    assert frozen(u["a.bias"][0]) and frozen(u["b.bias"][0])
    assert c.n_units == 0 and c.groups == []


def test_residual_stream_ties_stem_branch_output_and_head() -> None:
    u, c, _ = analyse(*build("res_block"))
    stream = u["stem.weight"][0]
    assert free(stream)
    eq(u["c2.weight"][0], stream)
    eq(u["c1.weight"][1], stream)  # the branch reads the stream
    eq(u["head.weight"][1], stream)
    inner = u["c1.weight"][0]
    eq(u["c2.weight"][1], inner)
    assert free(inner) and not set(inner.tolist()) & set(stream.tolist())
    assert frozen(u["head.weight"][0])
    assert c.n_units == 8 + 6
    assert sorted(g.size for g in c.groups) == [6, 8]


# -- 3. concat ---------------------------------------------------------------------------------


def test_concat_offsets_consumer_columns() -> None:
    u, c, _ = analyse(*build("cat"))
    ua, ub = u["conv_a.weight"][0], u["conv_b.weight"][0]
    cin = u["conv_c.weight"][1]
    eq(cin[:4], ua)
    eq(cin[4:], ub)
    assert canon(cin) == list(range(10))
    assert not set(ua.tolist()) & set(ub.tolist())
    assert c.unit_group[ua[0]] != c.unit_group[ub[0]]
    assert sorted(g.size for g in c.groups) == [4, 6]
    assert frozen(u["conv_c.weight"][0])


# -- 4. split/chunk and slice ------------------------------------------------------------------


def test_chunk_feeds_each_consumer_its_half() -> None:
    u, c, _ = analyse(*build("chunk"))
    a = u["a.weight"][0]
    assert canon(a) == list(range(8))
    eq(u["b.weight"][1], a[:4])
    eq(u["c.weight"][1], a[4:])
    assert frozen(u["b.weight"][0]) and frozen(u["c.weight"][0])
    assert c.n_units == 8
    assert sorted(g.size for g in c.groups) == [4, 4]  # each half touches a different consumer


@pytest.mark.parametrize("name", ["narrow", "slice"])
def test_slice_with_offset(name: str) -> None:
    u, c, _ = analyse(*build(name))
    a = u["a.weight"][0]
    assert free(a) and canon(a) == list(range(8))
    eq(u["b.weight"][1], a[2:5])
    assert c.n_units == 8


# -- 5. depthwise and grouped conv -------------------------------------------------------------


def test_depthwise_channel_is_one_unit_with_both_pointwise_convs() -> None:
    u, c, _ = analyse(*build("depthwise"))
    pw1 = u["pw1.weight"][0]
    assert canon(pw1) == list(range(6))
    eq(u["dw.weight"][0], pw1)
    eq(u["dw.bias"][0], pw1)
    eq(u["pw2.weight"][1], pw1)
    assert frozen(u["dw.weight"][1])  # the within-group input axis (size 1) is kernel structure
    assert c.n_units == 6 and [(g.size, g.width) for g in c.groups] == [(6, 1)]


def test_grouped_conv_units_are_whole_groups() -> None:
    u, c, _ = analyse(*build("grouped"))
    blocks = [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    pw1 = u["pw1.weight"][0]
    assert canon(pw1) == blocks
    eq(u["g.weight"][0], pw1)
    eq(u["g.bias"][0], pw1)
    eq(u["pw2.weight"][1], pw1)
    assert frozen(u["g.weight"][1])
    assert c.n_units == 4
    assert [(g.size, g.width) for g in c.groups] == [(4, 4)]


# -- 6. transposed conv ------------------------------------------------------------------------


def test_conv_transpose_output_axis_is_weight_axis_1() -> None:
    u, c, _ = analyse(*build("conv_transpose"))
    up_out = u["up.weight"][1]
    assert canon(up_out) == list(range(6))
    eq(u["conv.weight"][1], up_out)
    eq(u["up.bias"][0], up_out)
    eq(u["up.weight"][0], u["pw.weight"][0])  # axis 0 reads the input channels
    assert not set(up_out.tolist()) & set(u["pw.weight"][0].tolist())
    assert c.n_units == 11 and sorted(g.size for g in c.groups) == [5, 6]


# -- 7. flatten -> linear ----------------------------------------------------------------------


def test_flatten_maps_channel_to_its_block_of_columns() -> None:
    u, c, _ = analyse(*build("flatten_linear"))
    conv = u["conv.weight"][0]
    assert canon(conv) == list(range(4))
    eq(u["fc.weight"][1], np.repeat(conv, 2 * 3))  # channel ch owns columns ch*6 .. ch*6+5
    assert frozen(u["fc.weight"][0])
    assert c.n_units == 4


# -- 8. layer norm pins, gelu passes -------------------------------------------------------------


def test_layer_norm_hidden_axis_is_frozen() -> None:
    u, c, _ = analyse(*build("layer_norm"))
    for name, ax in (
        ("fc1.weight", 0),
        ("fc1.bias", 0),
        ("norm.weight", 0),
        ("norm.bias", 0),
        ("fc2.weight", 1),
    ):
        assert frozen(u[name][ax]), name
    assert c.n_units == 0


def test_gelu_hidden_axis_is_prunable() -> None:
    u, c, _ = analyse(*build("gelu"))
    h = u["fc1.weight"][0]
    assert canon(h) == list(range(8))
    eq(u["fc2.weight"][1], h)
    eq(u["fc1.bias"][0], h)
    assert frozen(u["fc1.weight"][1]) and frozen(u["fc2.weight"][0])
    assert c.n_units == 8


# -- 9. group norm -------------------------------------------------------------------------------


def test_group_norm_units_are_blocks_of_channels() -> None:
    u, c, _ = analyse(*build("group_norm"))
    a = u["a.weight"][0]
    assert canon(a) == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    eq(u["gn.weight"][0], a)
    eq(u["gn.bias"][0], a)
    eq(u["b.weight"][1], a)
    assert c.n_units == 4 and [(g.size, g.width) for g in c.groups] == [(4, 4)]


# -- 10. attention -------------------------------------------------------------------------------


def test_attention_units_are_heads() -> None:
    heads, d = 3, 4
    u, c, _ = analyse(*build("mha"))
    q = u["q.weight"][0]
    assert canon(q) == np.repeat(np.arange(heads), d).tolist()  # head_dim never split
    for name in ("k.weight", "v.weight", "q.bias", "k.bias", "v.bias"):
        eq(u[name][0], q)
    eq(u["o.weight"][1], q)
    for name in ("q.weight", "k.weight", "v.weight"):
        assert frozen(u[name][1])  # the model's input hidden size
    assert frozen(u["o.weight"][0])  # the model's output hidden size
    assert c.n_units == heads
    assert [(g.size, g.width) for g in c.groups] == [(heads, d)]


@pytest.mark.parametrize("name", ["gqa_sdpa", "gqa_repeat_kv"])
def test_gqa_units_are_kv_groups(name: str) -> None:
    hq, hkv, d = 4, 2, 4
    r = hq // hkv
    u, c, _ = analyse(*build(name))
    k = u["k.weight"][0]
    assert canon(k) == np.repeat(np.arange(hkv), d).tolist()
    eq(u["v.weight"][0], k)
    q = u["q.weight"][0]
    # query head h (rows h*d .. h*d+d-1) belongs to KV head h // r
    eq(q, np.repeat(k[::d], r * d))
    eq(u["o.weight"][1], q)
    assert c.n_units == hkv
    assert len(c.groups) == 1 and c.groups[0].size == hkv


# -- 11. channel shuffle -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["view_shuffle", "module_shuffle"])
def test_channel_shuffle_is_followed_exactly(name: str) -> None:
    g, ch = 2, 6
    per = ch // g
    u, c, _ = analyse(*build(name))
    a, b = u["a.weight"][0], u["b.weight"][1]
    assert free(a) and free(b)
    for src in range(ch):
        i, j = divmod(src, per)  # channel j of group i ...
        assert a[src] == b[j * g + i], src  # ... lands at position j*g + i
    # a unit is channel j of every group, so the shuffle (g groups) survives pruning
    assert canon(a) == [0, 1, 2, 0, 1, 2]
    assert c.n_units == per


# -- 12. unknown op = barrier ----------------------------------------------------------------


def test_roll_along_channels_freezes_them() -> None:
    model, x = build("roll_barrier")
    u, c, _ = analyse(model, x)
    assert c.barriers == {}  # roll has a rule: the rolled axis is pinned, the rest passes through
    assert frozen(u["a.weight"][0]) and frozen(u["a.bias"][0])
    assert frozen(u["b.weight"][1])
    cw = u["c.weight"][0]
    assert free(cw) and canon(cw) == list(range(4))
    eq(u["b.weight"][0], cw)
    eq(u["d.weight"][1], cw)


def test_unknown_op_is_a_named_barrier() -> None:
    model, x = build("mystery_barrier")
    u, c, _ = analyse(model, x)
    assert list(c.barriers.values()) == [["mystery"]]
    assert "mystery" in next(iter(c.barriers))
    assert frozen(u["a.weight"][0]) and frozen(u["a.bias"][0])  # producer into the barrier
    assert frozen(u["b.weight"][1])  # consumer out of the barrier
    cw = u["c.weight"][0]
    assert free(cw) and canon(cw) == list(range(4))  # the other branch stays prunable
    eq(u["b.weight"][0], cw)  # b's output is after the barrier, tied by the add
    eq(u["d.weight"][1], cw)
    rep = gp.analyze(model, x).report
    assert rep["barriers"] == c.barriers
    assert rep["units"] == 4


def test_index_on_channel_axis_freezes_it() -> None:
    model, x = build("index_barrier")
    u, c, _ = analyse(model, x)
    assert c.barriers == {}  # one index tensor: the indexed axis is pinned, the rest passes through
    assert frozen(u["a.weight"][0]) and frozen(u["b.weight"][1])
    assert free(u["c.weight"][0])
    eq(u["d.weight"][1], u["c.weight"][0])
    assert c.n_units == 5


def test_barrier_model_still_prunes_elsewhere() -> None:
    model, x = build("mystery_barrier")
    res = gp.prune(model, x, flops=0.5)
    assert res.report["verification"]["ok"] is True
    assert list(res.report["barriers"].values()) == [["mystery"]]
    assert res.model.a.out_channels == 6 and res.model.b.in_channels == 6
    assert res.model.c.out_channels < 4
    assert res.model.c.out_channels == res.model.b.out_channels == res.model.d.in_channels


# -- 17 (part). the IR verifier and the pruning oracle on every model here -----------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_verifier_accepts_captured_graph(name: str) -> None:
    model, x = build(name)
    verify_graph(capture(model, x).graph)


def test_verifier_rejects_out_of_order_graph() -> None:
    model, x = build("conv_bn_conv")
    graph = capture(model, x).graph
    graph.nodes.reverse()
    with pytest.raises(IRError, match="before it is produced"):
        verify_graph(graph)


@pytest.mark.parametrize("name", sorted(CASES))
def test_prune_half_matches_masked_original(name: str) -> None:
    model, x = build(name)
    with torch.no_grad():
        ref = model(x)
    res = gp.prune(model, x, flops=0.5)
    assert res.report["verification"]["ok"] is True
    with torch.no_grad():
        got = res.model(x)
    assert got.shape == ref.shape  # 14: model inputs/outputs never change shape
    # independent oracle: re-run the analysis, mask the removed units in the original, compare
    a = gp.analyze(model, x)
    assert a.coupling.n_units == res.report["units"]
    removed = np.zeros(a.coupling.n_units, dtype=bool)
    removed[list(res.plan.removed_units)] = True
    assert int(removed.sum()) == res.report["units_removed"]
    if a.coupling.n_units:
        assert removed.any() and not removed.all()
    masked = masked_original(model, a.coupling, removed)
    x2 = torch.randn(x.shape, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        want, have = masked(x2), res.model(x2)
    torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-4 * max(1.0, float(want.abs().max())))
