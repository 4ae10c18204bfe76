"""Mixture-of-experts contractions: one grouped matmul over every expert's weight.

grouped_mm: y[s, n] = sum_k x[s, k] w[e(s), k, n]   rows s sorted by expert; ``offs`` (cumulative
            row counts per expert) decides e(s). A channel k (or n) is one index in EVERY expert
            at once (the weight is one [E, K, N] tensor, so the experts keep one shared width):
            x's k ties w's axis 1 (consumer side, zeroed by the oracle), w's axis 2 ties y's n.
            The expert axis (w axis 0) is tied to the offsets' axis (one count per expert).
            torch's grouped_mm kernel needs every stride a multiple of 16 bytes (RuntimeError
            "strides should be multiple of 16 bytes" otherwise), so k and n move in blocks of
            16 / itemsize channels (4 in fp32, 8 in bf16/fp16): any kept width then runs.
            transformers lowers its experts (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3, ...) to
            ``transformers::grouped_mm_fallback`` under torch.export; torch's own is ``aten._grouped_mm``.
MACs: S * K * N (each row meets one expert). FLOPs = 2 * MACs.

Whole experts (the router's top-k dispatch, transformers' ``<Family>TopKRouter`` + grouped_mm):

    logits = linear(x, router_w) -> softmax(-1) -> topk(k) -> ids -> reshape/sort/to -> histc(E)
    -> cumsum -> offs of every grouped_mm of the layer

The expert ids are VALUES of the topk indices, not an axis, so ``aten.topk`` ties its input's
last axis (the experts) to the output axis of the ``histc`` that counts those ids (found by
walking the ids forward through value-preserving ops, :func:`expert_histc`), and softmax
and cumsum keep it (:func:`along_expert_axis`; both are exact for a removed expert: see below). A topk whose ids reach no
histc of E bins keeps its axis pinned. Exactness: the masked original sets a removed expert's
logit to -inf (``verification.masked_original``), so its softmax probability is 0, the kept
experts' probabilities equal the pruned model's softmax over E' logits, it is never in the
top-k (k <= E'), its histc bin is 0 and cumsum over E with a 0 entry equals cumsum over E'.
Experts move in blocks of k (``num_experts_per_tok``): every selection keeps at least k.
Whole experts cost no FLOPs (each token still meets k experts); they remove parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..ir import Node, Value
from .common import numel
from .linear import _weight_axis
from .registry import ShapeFn, register_cost, register_coupling, register_macs

if TYPE_CHECKING:
    import numpy as np

    from ..analysis.coupling import Coupling, CouplingBuilder

__all__: list[str] = []


# ops that keep integer expert ids as they are (values may be reordered: histc only counts them)
_ID_PRESERVING = frozenset({"reshape", "identity", "aten.sort"})


def expert_histc(topk: Node) -> Node | None:
    """The histc counting ``topk``'s index values over E bins (E = topk's input last axis), or None."""
    x = topk.inputs[0]
    if x is None or len(topk.outputs) < 2:
        return None
    e = x.shape[-1]
    todo, seen = [topk.outputs[1]], set()
    while todo:
        v = todo.pop()
        if v.index in seen:
            continue
        seen.add(v.index)
        for u in v.users:
            if u.op == "aten.histc" and u.output.rank == 1 and u.output.shape[0] == e:
                return u
            if u.op in _ID_PRESERVING and u.inputs and u.inputs[0] is v:
                todo.append(u.outputs[0])  # sort: output 0 holds the values, output 1 positions
    return None


@register_coupling("aten.topk")
def couple_topk(node: Node, b: CouplingBuilder) -> None:
    x = node.inputs[0]
    assert x is not None and len(node.outputs) == 2
    vals, idx = node.outputs
    if tuple(vals.shape[:-1]) != tuple(x.shape[:-1]):
        raise ValueError("topk along an axis other than the last")
    for ax in range(x.rank - 1):
        b.same(x, ax, vals, ax)
        b.same(x, ax, idx, ax)
    b.pin(vals, vals.rank - 1, "topk: the k selected values keep their count")
    b.pin(idx, idx.rank - 1, "topk: the k selected indices keep their count")
    histc = expert_histc(node)
    k = vals.shape[-1]
    if histc is None or x.shape[-1] % k:
        b.pin(x, x.rank - 1, f"topk node {node.name!r}: its indices reach no histc over the {x.shape[-1]} "
              f"entries (not an MoE router), or {k} does not divide them")
        return
    if not b.experts:
        why = (f"topk node {node.name!r}: whole experts are kept (experts=False: removing an expert "
               "saves parameters, not FLOPs, since every token still runs k experts; pass experts=True or a params= "
               "budget to remove them)")
        b.pin(x, x.rank - 1, why)
        b.pin(histc.output, 0, why)  # the counts (and the experts' axis 0 through the offsets) too
        return
    b.same(x, x.rank - 1, histc.output, 0)
    b.block(x, x.rank - 1, k)  # every selection keeps at least k experts


def along_expert_axis(node: Node) -> bool:
    """A softmax feeding a router's topk, or a cumsum of its histc: exact along the expert axis
    when removed experts have logit -inf / count 0 (see the module docstring); ``rules/pooling.py``
    then keeps that axis instead of pinning it."""
    x = node.inputs[0]
    if x is None:
        return False
    ax = int(node.attrs.get("axis", -1)) % max(1, x.rank)
    if node.op == "softmax":
        users = node.output.users
        return (ax == x.rank - 1 and len(users) == 1 and users[0].op == "aten.topk"
                and users[0].inputs[0] is node.output and expert_histc(users[0]) is not None)
    if node.op == "cumsum":
        p = x.producer
        return ax == 0 and x.rank == 1 and p is not None and p.op == "aten.histc" and _from_router(p)
    return False


@register_coupling("aten.histc")
def couple_histc(node: Node, b: CouplingBuilder) -> None:
    """Counts of values: its input's axes are pinned; its bins are the experts when a router's
    topk ids reach it (tied by :func:`couple_topk`), pinned otherwise."""
    x = node.inputs[0]
    assert x is not None
    b.pin(x, why=f"histc node {node.name!r} counts values")
    if _from_router(node):
        b.block(node.output, 0, 1)  # declares the bins without tying them: couple_topk does
    else:
        b.pin(node.output, 0, f"histc node {node.name!r}: its bins are not the experts of a router's topk")


def _from_router(histc: Node) -> bool:
    v = histc.inputs[0]
    while v is not None and v.producer is not None:
        p = v.producer
        if p.op == "aten.topk":
            return expert_histc(p) is histc
        if p.op not in _ID_PRESERVING:
            return False
        v = p.inputs[0]
    return False


@register_coupling("grouped_mm")
def couple_grouped_mm(node: Node, b: CouplingBuilder) -> None:
    x, w = node.inputs[0], node.inputs[1]
    y = node.output
    assert x is not None and w is not None
    if x.rank != 2 or w.rank != 3 or y.rank != 2:
        return  # another layout (3D x batched per expert): leave everything pinned
    b.same(x, 0, y, 0)
    b.same(w, 2, y, 1)
    offs = node.inputs[2] if len(node.inputs) > 2 else None
    if offs is not None and offs.rank == 1 and offs.shape[0] == w.shape[0]:
        b.same(w, 0, offs, 0)  # one offset per expert: whole experts (see couple_topk)
    else:
        b.pin(w, 0, f"grouped_mm node {node.name!r}: no offsets per expert")
    step = _aligned_step(y.dtype)
    _blocks(b, y, 1, step)
    src = _weight_axis(w, 1)
    if src is not None:  # an activation as the grouped operand could not be masked: keep k whole
        b.same(x, 1, w, 1)
        b.reader(*src)
        _blocks(b, x, 1, step)


def _aligned_step(dtype: str) -> int:
    """Channels per 16 bytes of ``dtype`` (a torch dtype's name, e.g. ``torch.float32``)."""
    dt = getattr(torch, str(dtype).rpartition(".")[2], None)
    return max(1, 16 // dt.itemsize) if isinstance(dt, torch.dtype) else 1


def _blocks(b: CouplingBuilder, v: Value, axis: int, step: int) -> None:
    """Tie an axis in blocks of ``step`` channels; an axis ``step`` does not divide stays whole."""
    if v.shape[axis] % step:
        b.pin(v, axis, f"grouped_mm: {v.shape[axis]} channels are not whole 16-byte blocks of {step}")
    else:
        b.block(v, axis, step)


@register_macs("grouped_mm")
def macs_grouped_mm(node: Node, shape: ShapeFn) -> float:
    x = node.inputs[0]
    assert x is not None
    return float(numel(shape(node.output)) * shape(x)[-1])


@register_cost("grouped_mm")
def cost_grouped_mm(node: Node, shape: ShapeFn) -> float:
    return 2.0 * macs_grouped_mm(node, shape)


def removed_router_rows(coupling: Coupling, removed: np.ndarray) -> dict[str, list[int]]:
    """Router weights (by source FQN) -> the rows of removed experts, for the masked original,
    which must give those experts a logit of -inf (a zeroed row gives 0: exp(0) stays in the
    softmax and the expert can still win the top-k)."""
    out: dict[str, list[int]] = {}
    for node in coupling.graph.nodes:
        if node.op != "aten.topk" or expert_histc(node) is None:
            continue
        x = node.inputs[0]
        p = x.producer if x is not None else None
        while p is not None and p.op in ("softmax", "identity"):  # Mixtral: softmax(logits.float())
            x = p.inputs[0]
            p = x.producer if x is not None else None
        if p is None or p.op != "linear" or p.inputs[1] is None:
            continue
        w = p.inputs[1]
        while w.source is None and w.producer is not None and w.producer.op == "identity":
            w = w.producer.inputs[0]  # DeepSeek-V2: linear(x.float(), weight.float())
            if w is None:
                break
        if w is None or w.source is None:
            continue
        kept = coupling.kept(x, x.rank - 1, removed)
        gone = sorted(set(range(x.shape[-1])) - {int(i) for i in kept})
        if gone:
            out[w.source] = gone
    return out
