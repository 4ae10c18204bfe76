"""Mixture-of-experts contractions: one grouped matmul over every expert's weight.

grouped_mm: y[s, n] = sum_k x[s, k] w[e(s), k, n]   rows s sorted by expert; ``offs`` (cumulative
            row counts per expert) decides e(s). A channel k (or n) is one index in EVERY expert
            at once (the weight is one [E, K, N] tensor, so the experts keep one shared width):
            x's k ties w's axis 1 (consumer side, zeroed by the oracle), w's axis 2 ties y's n.
            The expert axis (w axis 0) and the offsets stay pinned: whole experts are not units.
            torch's grouped_mm kernel needs every stride a multiple of 16 bytes (RuntimeError
            "strides should be multiple of 16 bytes" otherwise), so k and n move in blocks of
            16 / itemsize channels (4 in fp32, 8 in bf16/fp16): any kept width then runs.
            transformers lowers its experts (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3, ...) to
            ``transformers::grouped_mm_fallback`` under torch.export; torch's own is ``aten._grouped_mm``.
MACs: S * K * N (each row meets one expert). FLOPs = 2 * MACs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..ir import Node, Value
from .common import numel
from .linear import _weight_axis
from .registry import ShapeFn, register_cost, register_coupling, register_macs

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder

__all__: list[str] = []


@register_coupling("grouped_mm")
def couple_grouped_mm(node: Node, b: CouplingBuilder) -> None:
    x, w = node.inputs[0], node.inputs[1]
    y = node.output
    assert x is not None and w is not None
    if x.rank != 2 or w.rank != 3 or y.rank != 2:
        return  # another layout (3D x batched per expert): leave everything pinned
    b.same(x, 0, y, 0)
    b.same(w, 2, y, 1)
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
