"""Random architectures as data, and the module that runs them (graphprune-independent).

A *spec* is plain JSON: ``{"input": "image"|"tokens", "c": C, "hw": H, "vocab": V, "len": L,
"blocks": [[op, {param: value}], ...], "head": "none"|"linear"|"tied", "extra_output": bool}``.
Blocks run in order on one current tensor, an image ``[N, C, H, W]`` until a ``to_seq`` block and a
sequence ``[N, L, D]`` after it; blocks that read an earlier tensor (``skip``, ``cat``) name it by
its index in the list of tensors produced so far, so a spec is a DAG (residuals, dense
concatenations, multiply-gates). :func:`walk` computes every tensor's shape from the spec alone,
so the hypothesis strategy :func:`specs` only draws blocks that fit, and :class:`GenNet` builds the
layers from the same walk. Because specs are data, a failing one is saved verbatim as a
regression test (``tests/property/regressions/``).

Ops covered: conv (grouped, depthwise with a channel multiplier, dilated, strided, transposed),
linear / matmul with a parameter / bmm / einsum, add / mul / sub / where, concat, split and chunk
with unequal parts, view/reshape into groups, flatten, permute/transpose (token mixing),
pixel_shuffle, attention written five ways (SDPA, nn.MultiheadAttention, einsum, bmm, GQA with
repeat_interleave), BatchNorm / LayerNorm / GroupNorm / RMSNorm, max/avg pooling, interpolate,
embeddings (optionally tied to the output head), weight sharing (one module called twice),
in-place ops, and ``flip`` over channels (an op with no coupling rule: a barrier).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

__all__ = ["GenNet", "Shape", "build", "example_inputs", "spec_json", "specs", "walk"]

Shape = tuple[int, ...]  # without the batch dimension
Block = list[Any]  # [op, params]

IMAGE_OPS = ("conv", "dw", "convT", "bn", "gn", "ln_c", "rms_c", "act", "skip", "cat", "split", "pixel_shuffle",
             "pool", "interp", "shared", "flip", "inplace", "to_seq")
SEQ_OPS = ("linear", "mlp", "ln", "rms", "attn", "matmul", "mix", "skip", "cat", "split", "group_view", "act",
           "inplace", "shared", "flip")
ATTN_STYLES = ("sdpa", "mha", "einsum", "bmm", "gqa")


@dataclass(frozen=True)
class Step:
    """One block after shape inference: its op, params, input shape and output shape."""

    op: str
    p: dict[str, Any]
    x: Shape
    y: Shape


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def out_shape(op: str, p: dict[str, Any], x: Shape, hist: list[Shape]) -> Shape:
    """The output shape of one block (batch excluded); raises ValueError if the block cannot apply."""
    if len(x) == 3:
        c, h, w = x
        if op in ("bn", "gn", "ln_c", "rms_c", "act", "shared", "flip", "inplace", "skip"):
            return x
        if op == "conv":
            k, d, s = p["k"], p["dil"], p["stride"]
            pad = d * (k - 1) // 2
            ho = (h + 2 * pad - d * (k - 1) - 1) // s + 1
            return (p["out"], ho, (w + 2 * pad - d * (k - 1) - 1) // s + 1)
        if op == "dw":
            return (c * p["mult"], h, w)
        if op == "convT":
            return (p["out"], 2 * h, 2 * w)
        if op == "cat":
            return (c + hist[p["j"]][0], h, w)
        if op == "split":
            return (p["out"] + c - p["a"], h, w) if p["mode"] == "split" else x
        if op == "pixel_shuffle":
            return (c // 4, 2 * h, 2 * w)
        if op == "pool":
            return (c, h // 2, w // 2)
        if op == "interp":
            return (c, 2 * h, 2 * w)
        if op == "to_seq":
            return (h * w, c)
        raise ValueError(op)
    seq, d = x
    if op in ("mlp", "ln", "rms", "attn", "mix", "group_view", "act", "inplace", "shared", "flip", "skip"):
        return x
    if op in ("linear", "matmul"):
        return (seq, p["out"])
    if op == "cat":
        return (seq, d + hist[p["j"]][1])
    if op == "split":
        return (seq, p["out"] + d - p["a"]) if p["mode"] == "split" else x
    raise ValueError(op)


def walk(spec: dict[str, Any]) -> tuple[Shape, list[Step], list[Shape]]:
    """(input shape, blocks with shapes, shapes of every tensor produced, index 0 = first tensor)."""
    if spec["input"] == "tokens":
        x0: Shape = (spec["len"], spec["c"])
    else:
        x0 = (spec["c"], spec["hw"], spec["hw"])
    hist = [x0]
    steps = []
    x = x0
    for op, p in spec["blocks"]:
        y = out_shape(op, p, x, hist)
        steps.append(Step(op, p, x, y))
        hist.append(y)
        x = y
    return x0, steps, hist


# -- the module ---------------------------------------------------------------------------------
class _Attn(nn.Module):
    """Self-attention on [N, L, D] written in one of five styles (same maths, different graphs)."""

    def __init__(self, d: int, heads: int, kv_heads: int, hd: int, style: str) -> None:
        super().__init__()
        self.style, self.h, self.hk, self.hd = style, heads, kv_heads, hd
        if style == "mha":
            self.mha = nn.MultiheadAttention(d, heads, batch_first=True)
            return
        kv = kv_heads if style == "gqa" else heads
        self.q = nn.Linear(d, heads * hd)
        self.k = nn.Linear(d, kv * hd)
        self.v = nn.Linear(d, kv * hd)
        self.o = nn.Linear(heads * hd, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.style == "mha":
            return self.mha(x, x, x, need_weights=False)[0]
        n, seq, _ = x.shape
        q = self.q(x).view(n, seq, self.h, self.hd).transpose(1, 2)
        kvh = self.hk if self.style == "gqa" else self.h
        k = self.k(x).view(n, seq, kvh, self.hd).transpose(1, 2)
        v = self.v(x).view(n, seq, kvh, self.hd).transpose(1, 2)
        if self.style == "gqa":
            k = k.repeat_interleave(self.h // self.hk, dim=1)
            v = v.repeat_interleave(self.h // self.hk, dim=1)
        if self.style in ("sdpa", "gqa"):
            a = F.scaled_dot_product_attention(q, k, v)
        elif self.style == "einsum":
            s = torch.einsum("bhqd,bhkd->bhqk", q, k) * self.hd**-0.5
            a = torch.einsum("bhqk,bhkd->bhqd", s.softmax(-1), v)
        else:  # bmm
            qf, kf, vf = (t.reshape(n * self.h, seq, self.hd) for t in (q, k, v))
            s = torch.bmm(qf, kf.transpose(1, 2)) * self.hd**-0.5
            a = torch.bmm(s.softmax(-1), vf).view(n, self.h, seq, self.hd)
        return self.o(a.transpose(1, 2).reshape(n, seq, self.h * self.hd))


class _Permute(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # a norm over the channel axis of NCHW
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _layer(s: Step) -> nn.Module | None:
    op, p, x = s.op, s.p, s.x
    image = len(x) == 3
    c = x[0] if image else x[1]
    if op == "conv":
        pad = p["dil"] * (p["k"] - 1) // 2
        return nn.Conv2d(c, p["out"], p["k"], stride=p["stride"], padding=pad, dilation=p["dil"], groups=p["groups"],
                         bias=p["bias"])
    if op == "dw":
        return nn.Conv2d(c, c * p["mult"], 3, padding=1, groups=c)
    if op == "convT":
        return nn.ConvTranspose2d(c, p["out"], 2, stride=2, groups=p["groups"])
    if op == "bn":
        return nn.BatchNorm2d(c)
    if op == "gn":
        return nn.GroupNorm(p["groups"], c)
    if op in ("ln_c", "ln"):
        ln = nn.LayerNorm(c)
        return _Permute(ln) if image else ln
    if op in ("rms_c", "rms"):
        rms = nn.RMSNorm(c)
        return _Permute(rms) if image else rms
    if op == "split" and p["mode"] == "split":
        return nn.Conv2d(p["a"], p["out"], 1) if image else nn.Linear(p["a"], p["out"])
    if op == "shared":
        return nn.Conv2d(c, c, 3, padding=1) if image else nn.Linear(c, c)
    if op == "linear":
        return nn.Linear(c, p["out"], bias=p["bias"])
    if op == "mlp":
        return nn.Sequential(nn.Linear(c, p["hidden"]), nn.GELU(), nn.Linear(p["hidden"], c))
    if op == "attn":
        return _Attn(c, p["heads"], p.get("kv_heads", p["heads"]), p["hd"], p["style"])
    if op == "mix":
        return nn.Linear(x[0], x[0])
    return None


class GenNet(nn.Module):
    """The network a spec describes. Weights are random (``torch.manual_seed`` before building);
    BatchNorm statistics are randomized so eval-mode BN is not the identity."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = json.loads(json.dumps(spec))
        self.x0, self.steps, self.hist = walk(spec)
        self.blocks = nn.ModuleList([_layer(s) or nn.Identity() for s in self.steps])
        self.params = nn.ParameterList([
            nn.Parameter(torch.randn(*_param_shape(s)) * 0.5) if _param_shape(s) else nn.Parameter(torch.zeros(0))
            for s in self.steps
        ])
        if spec["input"] == "tokens":
            self.emb = nn.Embedding(spec["vocab"], spec["c"])
        last = self.hist[-1]
        width = last[0] if len(last) == 3 else last[1]
        if spec["head"] == "linear":
            self.head = nn.Linear(width, 5)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> Any:
        if self.spec["input"] == "tokens":
            x = self.emb(x)
        hist = [x]
        for s, layer, prm in zip(self.steps, self.blocks, self.params, strict=True):
            x = _apply(s, layer, prm, x, hist)
            hist.append(x)
        head = self.spec["head"]
        if head == "linear":
            y = self.head(x.mean((2, 3)) if x.dim() == 4 else x)
        elif head == "tied":
            y = F.linear(x, self.emb.weight)
        else:
            y = x
        return (y, hist[len(hist) // 2]) if self.spec.get("extra_output") else y


def _param_shape(s: Step) -> tuple[int, ...] | None:
    if s.op == "matmul":
        return (s.x[1], s.p["out"])
    if s.op == "group_view":
        return (s.p["groups"], 1)
    return None


def _apply(s: Step, layer: nn.Module, prm: torch.Tensor, x: torch.Tensor, hist: list[torch.Tensor]) -> torch.Tensor:
    op, p = s.op, s.p
    image = x.dim() == 4
    cax = 1 if image else 2
    if op in ("conv", "dw", "convT", "bn", "gn", "ln_c", "rms_c", "linear", "mlp", "ln", "rms", "attn"):
        y = layer(x)
        return x + y if p.get("residual") else y
    if op == "act":
        return {"relu": lambda t: F.relu(t, inplace=True), "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}[p["fn"]](x)
    if op == "inplace":
        y = x.clone() if p["kind"] != "relu_" else x * 1.0
        if p["kind"] == "mul_":
            y.mul_(0.5)
        elif p["kind"] == "add_":
            y.add_(0.25)
        else:
            y.relu_()
        return y
    if op == "skip":
        other = hist[p["j"]]
        if p["fn"] == "add":
            return x + other
        if p["fn"] == "mul":
            return x * torch.sigmoid(other)
        if p["fn"] == "sub":
            return x - other
        return torch.where(other > 0, x, other)
    if op == "cat":
        return torch.cat([x, hist[p["j"]]], dim=cax)
    if op == "split":
        if p["mode"] == "split":
            a, b = torch.split(x, [p["a"], x.shape[cax] - p["a"]], dim=cax)
            return torch.cat([layer(a), b], dim=cax)
        parts = torch.chunk(x, p["chunks"], dim=cax)
        return torch.cat([parts[-1], *parts[:-1]], dim=cax) * 1.0 if p["rotate"] else torch.cat([t * (i + 1.0) for i, t in enumerate(parts)], dim=cax)
    if op == "pixel_shuffle":
        return F.pixel_shuffle(x, 2)
    if op == "pool":
        return F.max_pool2d(x, 2) if p["kind"] == "max" else F.avg_pool2d(x, 2)
    if op == "interp":
        return F.interpolate(x, scale_factor=2.0, mode=p["mode"])
    if op == "shared":
        return layer(torch.tanh(layer(x)))
    if op == "flip":
        return torch.flip(x, [cax])
    if op == "to_seq":
        return x.flatten(2).transpose(1, 2)
    if op == "matmul":
        return x @ prm
    if op == "mix":
        return x + layer(x.transpose(1, 2)).transpose(1, 2)
    if op == "group_view":
        n, seq, d = x.shape
        g = p["groups"]
        return (x.view(n, seq, g, d // g) * prm).flatten(2)
    raise ValueError(f"unknown block {op!r}")


def build(spec: dict[str, Any], seed: int = 0) -> GenNet:
    torch.manual_seed(seed)
    return GenNet(spec).eval()


def example_inputs(spec: dict[str, Any], batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000 * batch)
    if spec["input"] == "tokens":
        return torch.randint(0, spec["vocab"], (batch, spec["len"]), generator=g)
    return torch.randn(batch, spec["c"], spec["hw"], spec["hw"], generator=g)


def spec_json(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


# -- the hypothesis strategy ----------------------------------------------------------------------
def _draw_block(draw: Any, x: Shape, hist: list[Shape]) -> Block | None:
    image = len(x) == 3
    ops = IMAGE_OPS if image else SEQ_OPS
    op = draw(st.sampled_from(ops))
    c = x[0] if image else x[1]
    same = [j for j, s in enumerate(hist) if s == x]
    if op in ("conv", "linear", "matmul"):
        out = draw(st.integers(2, 16))
        if op == "conv":
            common = [g for g in _divisors(c) if out % g == 0]
            k = draw(st.sampled_from((1, 3)))
            stride = draw(st.sampled_from((1, 2))) if x[1] >= 4 else 1
            p = {"out": out, "k": k, "groups": draw(st.sampled_from(common)),
                 "dil": draw(st.sampled_from((1, 2))) if k == 3 else 1, "stride": stride,
                 "bias": draw(st.booleans()), "residual": False}
            if out == c and stride == 1:
                p["residual"] = draw(st.booleans())
            return [op, p]
        if op == "linear":
            return [op, {"out": out, "bias": draw(st.booleans()), "residual": out == c and draw(st.booleans())}]
        return [op, {"out": out}]
    if op == "dw":
        return [op, {"mult": draw(st.sampled_from((1, 2)))}] if c <= 16 else None
    if op == "convT":
        if x[1] > 8:
            return None
        out = draw(st.integers(2, 12))
        common = [g for g in _divisors(c) if out % g == 0]
        return [op, {"out": out, "groups": draw(st.sampled_from(common))}]
    if op in ("bn", "ln_c", "rms_c", "ln", "rms"):
        return [op, {"residual": False}]
    if op == "gn":
        return [op, {"groups": draw(st.sampled_from(_divisors(c))), "residual": False}]
    if op == "act":
        return [op, {"fn": draw(st.sampled_from(("relu", "gelu", "silu", "tanh")))}]
    if op == "inplace":
        return [op, {"kind": draw(st.sampled_from(("mul_", "add_", "relu_")))}]
    if op == "skip":
        return [op, {"j": draw(st.sampled_from(same)), "fn": draw(st.sampled_from(("add", "mul", "sub", "where")))}] if len(same) > 1 else None
    if op == "cat":
        cands = [j for j, s in enumerate(hist) if len(s) == len(x) and (s[1:] == x[1:] if image else s[0] == x[0])]
        return [op, {"j": draw(st.sampled_from(cands))}] if cands and c <= 24 else None
    if op == "split":
        if c < 3:
            return None
        if draw(st.booleans()):
            a = draw(st.integers(1, c - 1))
            return [op, {"mode": "split", "a": a, "out": draw(st.integers(1, 8))}]
        return [op, {"mode": "chunk", "chunks": draw(st.sampled_from((2, 3))), "rotate": draw(st.booleans())}]
    if op == "pixel_shuffle":
        return [op, {}] if c % 4 == 0 and x[1] <= 8 else None
    if op == "pool":
        return [op, {"kind": draw(st.sampled_from(("max", "avg")))}] if x[1] >= 4 and x[1] % 2 == 0 else None
    if op == "interp":
        return [op, {"mode": draw(st.sampled_from(("nearest", "bilinear")))}] if x[1] <= 8 else None
    if op in ("shared", "flip"):
        return [op, {}]
    if op == "to_seq":
        return [op, {}] if x[1] * x[2] <= 64 else None
    if op == "mlp":
        return [op, {"hidden": draw(st.integers(2, 24)), "residual": draw(st.booleans())}]
    if op == "attn":
        style = draw(st.sampled_from(ATTN_STYLES))
        if style == "mha":
            heads = draw(st.sampled_from(_divisors(c)))
            return [op, {"style": style, "heads": heads, "hd": c // heads, "residual": draw(st.booleans())}]
        heads = draw(st.sampled_from((1, 2, 4)))
        p = {"style": style, "heads": heads, "hd": draw(st.sampled_from((2, 4, 8))), "residual": draw(st.booleans())}
        if style == "gqa":
            p["kv_heads"] = draw(st.sampled_from(_divisors(heads)))
        return [op, p]
    if op == "mix":
        return [op, {}]
    if op == "group_view":
        return [op, {"groups": draw(st.sampled_from(_divisors(c)))}]
    raise AssertionError(op)


@st.composite
def specs(draw: Any, max_blocks: int = 8) -> dict[str, Any]:
    """A random architecture spec; every block drawn fits the shapes before it."""
    tokens = draw(st.booleans())  # half start from token ids (sequence models)
    spec: dict[str, Any] = {"input": "tokens" if tokens else "image", "c": draw(st.integers(2, 12)), "blocks": []}
    if tokens:
        spec.update(vocab=draw(st.integers(6, 20)), len=draw(st.sampled_from((3, 5, 8))))
    else:
        spec["hw"] = draw(st.sampled_from((4, 6, 8)))
    n = draw(st.integers(1, max_blocks))
    _, _, hist = walk(spec)
    for _ in range(n):
        blk = _draw_block(draw, hist[-1], hist)
        if blk is None:
            continue
        spec["blocks"].append(blk)
        hist.append(out_shape(blk[0], blk[1], hist[-1], hist))
    heads = ["none", "linear"] + (["tied"] if tokens and len(hist[-1]) == 2 and hist[-1][1] == spec["c"] else [])
    spec["head"] = draw(st.sampled_from(heads))
    spec["extra_output"] = draw(st.booleans())
    return spec
