"""Normalizations.

batch/instance norm: y[:, c] = (x[:, c] - mu[c]) / sigma[c] * w[c] + b[c]; every per-channel
tensor (weight, bias, running mean/var) ties to the channel axis 1. A batch_norm without running
statistics (or in training mode) computes mu/sigma over every axis but 1, and instance norm over
the axes after 1, so those axes are pinned -- except for weight standardization
(StdConv2d/ScaledStdConv2d in NFNets, BiT: ``batch_norm(w.reshape(1, Cout, -1))`` feeding a conv's
weight), whose statistics are of the weight, not of the activations: there every axis passes
through, the removed input channels are zeroed on the activation side in the masked original (the
weight stays whole, so its standardization is unchanged) and the module route folds the
standardized full weight into a plain nn.Conv2d (rewrite/std_conv.py) -- exactly equal.
group norm: statistics are shared inside a group of C/G channels, so a unit is a whole group
(removing part of a group would change the statistics of the rest).
layer/RMS norm: statistics over the trailing normalized axes; those axes are pinned so the
pruned model stays exactly equal to the masked original (leading axes pass through).
FLOPs ~ 5 * numel(y).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..ir import Node, Value
from .common import numel, pass_through
from .families import NORMS
from .hidden import LAYER_NORM_WHY
from .registry import ShapeFn, register_cost, register_coupling

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder

__all__: list[str] = []


@register_coupling("batch_norm", "instance_norm")
def couple_channel_norm(node: Node, b: CouplingBuilder) -> None:
    x, y = node.inputs[0], node.output
    assert x is not None
    if node.op == "batch_norm" and batch_statistics(node):
        w = _from_weight(x)
        conv = _feeds_conv_weight(y) if w is not None else None
        if w is not None and conv is not None and node.target.startswith("aten."):
            # weight standardization (timm's StdConv2d / ScaledStdConv2d): a statistic of the
            # WEIGHT, foldable. Every axis passes through; the masked original zeroes removed input
            # channels on the activation side (their writers) and leaves the weight whole, and the
            # module route folds the standardized full weight into a plain conv (rewrite/std_conv.py)
            pass_through(b, x, y)
            for ax in range(2, x.rank):
                b.statistic(x, ax)
            b.standardized(w, 1)
        else:
            # mean/var are taken over every axis but 1: removing elements there changes them, so
            # only the channel axis passes through; the rest is pinned, named (report barriers, --why)
            stat_axes = [ax for ax in range(x.rank) if ax != 1]
            pass_through(b, x, y, skip=stat_axes)
            for ax in stat_axes:
                if x.shape[ax] > 1:
                    b.pin(x, ax, why=STATS_PIN)
            if w is not None:
                b.barrier(node)
    elif node.op == "instance_norm":
        # statistics over the axes after the channel axis: pinned (spatial axes never carry
        # channels, but GroupNorm exported to ONNX is Reshape -> InstanceNormalization, which
        # merges the channels of a group into that axis)
        pass_through(b, x, y, skip=range(2, x.rank))
    else:
        pass_through(b, x, y)
    for t in node.inputs[1:]:
        if t is not None and t.rank == 1 and x.rank >= 2 and t.shape[0] == y.shape[1]:
            b.same(t, 0, y, 1)


STATS_PIN = ("batch_norm with batch statistics normalizes over this axis, and its input is not a weight "
             "standardized straight into a conv (the foldable StdConv2d / ScaledStdConv2d pattern); "
             "removing any element would change the statistics of the rest")


_VIEWS = frozenset({"reshape", "identity", "contiguous", "clone", "cast"})


def _from_weight(v: Value, depth: int = 4) -> Value | None:
    """The parameter ``v`` is, or is a view/reshape chain of (the standardized-weight pattern)."""
    while depth >= 0:
        if v.is_weight:
            return v
        src = v.producer.inputs[0] if v.producer is not None and v.producer.inputs else None
        if src is None:
            return None
        v, depth = src, depth - 1
    return None


def _feeds_conv_weight(v: Value, depth: int = 4) -> Node | None:
    """The conv whose weight input ``v`` is, through a view/reshape chain (single users only):
    then the standardization can be folded into that conv's weight."""
    while depth >= 0:
        if len(v.users) != 1:
            return None
        user = v.users[0]
        if user.op == "conv" and user.input(1) is v:
            return user
        if user.op not in _VIEWS or user.inputs[0] is not v:
            return None
        v, depth = user.output, depth - 1
    return None


def batch_statistics(node: Node) -> bool:
    """A batch_norm normalizing with statistics of its own input (training mode or no running
    stats), as weight-standardized convs do on their weight (timm's StdConv2d / ScaledStdConv2d:
    ``batch_norm(w.reshape(1, Cout, -1), None, None, training=True)``, statistics over each
    filter's Cin * k * k weights)."""
    running_mean = node.input(3)
    return bool(node.attrs.get("training", False)) or running_mean is None


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
    if b.hidden and node.op == "layer_norm":  # say why the hidden size stays (rules/hidden.py)
        for ax in range(x.rank - k, x.rank):
            b.pin(x, ax, LAYER_NORM_WHY.format(op=node.op, name=node.name))


@register_cost(*sorted(NORMS))
def cost_norm(node: Node, shape: ShapeFn) -> float:
    return 5.0 * numel(shape(node.output))
