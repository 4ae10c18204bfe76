"""Hidden-size (residual-stream) pruning: which statistics may lose channels.

An RMSNorm computes ``y = w * x / sqrt(mean_d(x^2) + eps)`` over the d channels of the residual
stream, so the stream's channels are normally pinned (``rules/norm.py``, ``couple_reduce``). With
``couple{hidden=true}`` a mean over an axis whose input is ``f(x)`` with ``f(0) = 0`` (``pow``,
``square``, ``abs``, ``x * x``) declares that axis a *statistic* instead of pinning it. The
stream's channels then form one group with every writer (embedding columns, o_proj / down_proj
rows and biases) and reader (norm weights, q/k/v/gate/up columns, lm_head columns).

Exactness. The masked original zeroes every weight slice of a removed statistic unit, writers
included (``verification.masked_original``), so removed stream channels are exactly 0 and

    mean_d(f(x)) = (d'/d) * mean_d'(f(x_kept)).

The fx route multiplies the pruned mean by d'/d (``rewrite/to_fx.py``); the module route keeps
the norm's code and rescales its parameters instead (``rewrite/hidden.py``): with
``eps' = eps * d/d'``

    sqrt(mean_d + eps) = sqrt(d'/d) * sqrt(mean_d' + eps')   so   w' = w * sqrt(d/d').

LayerNorm subtracts the mean first: a zeroed channel becomes ``-mu`` and enters the variance, so
no rescale makes it exact; it stays pinned with that reason (SliceGPT's folding is not done).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..ir import Node

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder

__all__ = ["LAYER_NORM_WHY", "ZERO_AT_ZERO", "statistic_axes"]

# ops f with f(0) == 0 whose mean over the stream is a statistic of its non-zero channels only
ZERO_AT_ZERO = frozenset({"pow", "square", "abs"})

LAYER_NORM_WHY = ("{op} node {name!r} subtracts the mean before its variance: a removed hidden channel would be "
                  "-mean, not 0, so hidden-size pruning cannot be exact here (RMSNorm models only; SliceGPT-style "
                  "folding is not implemented)")


def _zero_at_zero(node: Node) -> bool:
    x = node.inputs[0]
    p = x.producer if x is not None else None
    if p is None:
        return False
    if p.op in ZERO_AT_ZERO:
        return True
    return p.op == "mul" and len(p.inputs) == 2 and p.inputs[0] is not None and p.inputs[0] is p.inputs[1]


def statistic_axes(node: Node, b: CouplingBuilder) -> list[int]:
    """The reduced axes of a ``reduce`` node that are statistics (declared with
    ``b.statistic``): only with ``b.hidden``, only for a mean of ``f(x)`` with ``f(0) = 0``."""
    x = node.inputs[0]
    if not b.hidden or x is None or not node.target.startswith("aten.mean") or not _zero_at_zero(node):
        return []
    axes = [a % x.rank for a in node.attrs.get("axes", range(x.rank))]
    for ax in axes:
        b.statistic(x, ax)
    return axes
