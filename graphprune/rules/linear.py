"""Dense contractions: linear, matmul/bmm with a weight or activation operand, embedding.

linear:    y[..., o] = b[o] + sum_i w[o, i] x[..., i]      (w axis 1 is consumer-side)
matmul:    y[..., m, n] = sum_k a[..., m, k] c[..., k, n]  batch axes broadcast; the contracted k
           is tied only when one operand is a weight (masking the weight zeroes it); between two
           activations it is pinned, since no weight can mask it.
embedding: y[..., d] = w[idx[...], d]                      (w axis 1 ties the output channels)
MACs: numel(y) * K for linear/matmul (bias adds are not MACs); 0 for embedding (a gather).
FLOPs = 2 * MACs. einsum: MACs = the product of every letter's size (operands > 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..ir import Node, Value
from .common import numel
from .registry import ShapeFn, register_cost, register_coupling, register_macs

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder

__all__: list[str] = []


@register_coupling("linear")
def couple_linear(node: Node, b: CouplingBuilder) -> None:
    x, w, bias = node.inputs[0], node.inputs[1], node.input(2)
    y = node.output
    assert x is not None and w is not None
    for ax in range(x.rank - 1):
        b.same(x, ax, y, ax)
    b.same(x, -1, w, 1)
    b.reader(w, 1)
    b.same(y, -1, w, 0)
    if bias is not None:
        b.same(y, -1, bias, 0)


@register_coupling("matmul")
def couple_matmul(node: Node, b: CouplingBuilder) -> None:
    a, c = node.inputs[0], node.inputs[1]
    y = node.output
    assert a is not None and c is not None
    if a.rank < 2 or c.rank < 2:
        return  # vector products: leave everything pinned
    lead = y.rank - 2
    for x in (a, c):
        off = lead - (x.rank - 2)
        for ax in range(x.rank - 2):
            if x.shape[ax] == y.shape[off + ax] and x.shape[ax] != 1:
                b.same(x, ax, y, off + ax)
    b.same(a, -2, y, -2)
    b.same(c, -1, y, -1)
    wa, wc = _weight_axis(a, a.rank - 1), _weight_axis(c, c.rank - 2)
    if wa is not None or wc is not None:
        b.same(a, -1, c, -2)
        for w in (wa, wc):
            if w is not None:
                b.reader(*w)


def _weight_axis(v: Value, axis: int) -> tuple[Value, int] | None:
    """The weight and its axis that ``v``'s ``axis`` is, when ``v`` is a weight or a transpose of
    one (``x @ w.T``: Falcon's FalconLinear lowers to matmul(x, permute(w))); else None."""
    while not v.is_weight:
        p = v.producer
        if p is None or p.op != "permute" or p.inputs[0] is None:
            return None
        axis = int(p.attrs["perm"][axis])
        v = p.inputs[0]
    return v, axis


@register_coupling("addmm")
def couple_addmm(node: Node, b: CouplingBuilder) -> None:
    """y = bias + a @ w (a [M, K], w [K, N] a weight, as in GPT-2's Conv1D): bias ties to N."""
    bias, a, w = node.inputs[0], node.inputs[1], node.inputs[2]
    y = node.output
    assert bias is not None and a is not None and w is not None
    couple_matmul(Node(node.name, "matmul", [a, w], [y]), b)
    if bias.rank >= 1 and bias.shape[-1] == y.shape[-1] and bias.shape[-1] != 1:
        b.same(bias, -1, y, -1)


@register_coupling("gemm")
def couple_gemm(node: Node, b: CouplingBuilder) -> None:
    """ONNX Gemm: y = a @ w' + c, w' = w^T when trans_b (w [N, K], like linear) else w [K, N]."""
    a, w, c = node.inputs[0], node.inputs[1], node.input(2)
    y = node.output
    assert a is not None and w is not None
    k_ax, n_ax = (1, 0) if int(node.attrs.get("trans_b", 0)) else (0, 1)
    b.same(a, 0, y, 0)
    if w.is_weight or a.is_weight:
        b.same(a, 1, w, k_ax)
        if w.is_weight:
            b.reader(w, k_ax)
        if a.is_weight:
            b.reader(a, 1)
    b.same(w, n_ax, y, 1)
    if c is not None and c.rank >= 1 and c.shape[-1] == y.shape[1] and c.shape[-1] != 1:
        b.same(c, -1, y, 1)


@register_coupling("embedding")
def couple_embedding(node: Node, b: CouplingBuilder) -> None:
    w, idx = node.inputs[0], node.inputs[1]
    y = node.output
    assert w is not None and idx is not None
    for ax in range(idx.rank):
        b.same(idx, ax, y, ax)
    b.same(w, 1, y, -1)


@register_macs("linear")
def macs_linear(node: Node, shape: ShapeFn) -> float:
    w = node.inputs[1]
    assert w is not None
    return float(numel(shape(node.output)) * shape(w)[1])


@register_cost("linear")
def cost_linear(node: Node, shape: ShapeFn) -> float:
    return 2.0 * macs_linear(node, shape)


@register_macs("matmul", "addmm", "gemm")
def macs_matmul(node: Node, shape: ShapeFn) -> float:
    a = node.inputs[1] if node.op == "addmm" else node.inputs[0]
    assert a is not None
    return float(numel(shape(node.output)) * shape(a)[-1])


@register_cost("matmul", "addmm", "gemm")
def cost_matmul(node: Node, shape: ShapeFn) -> float:
    return 2.0 * macs_matmul(node, shape)


@register_coupling("einsum")
def couple_einsum(node: Node, b: CouplingBuilder) -> None:
    """Letters shared with the output are identity ties; a contracted letter ties operands only
    when one of them is a weight (so masking that weight removes the channel). '...' is pinned."""
    eq = str(node.attrs["equation"])
    if "..." in eq or "->" not in eq:
        return
    lhs, rhs = eq.split("->")
    terms = lhs.split(",")
    y = node.output
    ops = [t for t in node.inputs if t is not None]
    if len(terms) != len(ops):
        return
    for term, x in zip(terms, ops, strict=True):
        for ax, letter in enumerate(term):
            if letter in rhs and x.shape[ax] == y.shape[rhs.index(letter)] and x.shape[ax] != 1:
                b.same(x, ax, y, rhs.index(letter))
    contracted = {c for t in terms for c in t if c not in rhs}
    for letter in contracted:
        users = [(x, t.index(letter)) for t, x in zip(terms, ops, strict=True) if letter in t]
        if len(users) == 2 and any(x.is_weight for x, _ in users):
            (a, ax), (c, cx) = users
            if a.shape[ax] == c.shape[cx]:
                b.same(a, ax, c, cx)
                for x, xa in users:
                    if x.is_weight:
                        b.reader(x, xa)


def _einsum_sizes(node: Node, shape: ShapeFn) -> tuple[dict[str, int], int] | None:
    """Size of every index letter of an einsum (``...`` expanded per operand), and the operand
    count; None when the equation has no explicit output."""
    eq = str(node.attrs["equation"])
    if "->" not in eq:
        return None
    lhs, _ = eq.split("->")
    terms = lhs.split(",")
    ops = [t for t in node.inputs if t is not None]
    sizes: dict[str, int] = {}
    for term, x in zip(terms, ops, strict=False):
        dims = shape(x)
        if "..." in term:  # broadcast axes: one private letter per trailing position of the ellipsis
            head, tail = term.split("...")
            n_ell = len(dims) - len(head) - len(tail)
            letters = [*head, *(f"...{i}" for i in range(n_ell, 0, -1)), *tail]
        else:
            letters = list(term)
        for letter, n in zip(letters, dims, strict=False):
            sizes[letter] = max(sizes.get(letter, 1), n)
    return sizes, len(ops)


@register_macs("einsum")
def macs_einsum(node: Node, shape: ShapeFn) -> float:
    got = _einsum_sizes(node, shape)
    if got is None or got[1] < 2:
        return 0.0  # a one-operand einsum (transpose, sum) multiplies nothing
    return float(numel(got[0].values()))


@register_cost("einsum")
def cost_einsum(node: Node, shape: ShapeFn) -> float:
    got = _einsum_sizes(node, shape)
    if got is None:
        return float(numel(shape(node.output)))
    return 2.0 * numel(got[0].values())
