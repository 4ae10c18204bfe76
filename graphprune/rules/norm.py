"""Normalizations.

batch/instance norm: y[:, c] = (x[:, c] - mu[c]) / sigma[c] * w[c] + b[c]; every per-channel
tensor (weight, bias, running mean/var) ties to the channel axis 1.
group norm: statistics are shared inside a group of C/G channels, so a unit is a whole group
(removing part of a group would change the statistics of the rest).
layer/RMS norm: statistics over the trailing normalized axes; those axes are pinned so the
pruned model stays exactly equal to the masked original (leading axes pass through).
FLOPs ~ 5 * numel(y).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..ir import Node
from .common import numel, pass_through
from .families import NORMS
from .registry import ShapeFn, register_cost, register_coupling

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder

__all__: list[str] = []


@register_coupling("batch_norm", "instance_norm")
def couple_channel_norm(node: Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.output
    assert x is not None
    pass_through(b, x, y)
    for t in node.inputs[1:]:
        if t is not None and t.rank == 1 and x.rank >= 2 and t.shape[0] == y.shape[1]:
            b.same(t, 0, y, 1)


@register_coupling("group_norm")
def couple_group_norm(node: Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.output
    assert x is not None
    pass_through(b, x, y)
    groups = int(node.attrs["groups"])
    b.block(y, 1, y.shape[1] // groups)
    for t in node.inputs[1:]:
        if t is not None and t.rank == 1:
            b.same(t, 0, y, 1)


@register_coupling("layer_norm", "rms_norm")
def couple_layer_norm(node: Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.output
    assert x is not None
    k = int(node.attrs.get("normalized_ndim", 1))
    pass_through(b, x, y, skip=range(x.rank - k, x.rank))


@register_cost(*sorted(NORMS))
def cost_norm(node: Node, shape: ShapeFn) -> float:
    return 5.0 * numel(shape(node.output))
