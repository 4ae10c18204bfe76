"""fx route: the exported graph as a GraphModule with sliced weights and rewritten shape args.

Used when the model's Python code hard-codes a shape that cannot follow the pruning (e.g.
``nn.MultiheadAttention`` requires num_heads * head_dim == embed_dim). The exported program is
unlifted into a GraphModule; weights are sliced and every ATen call whose integer arguments
encode a size (view/reshape/expand sizes, split sizes, slice bounds, groups) is rewritten from
the pruned shapes computed by coupling analysis. The module is specialized to the example
input shapes, like the exported program it comes from.

Depth pruning (a group removed whole): each linear exit whose contraction operand is left empty
is replaced by its bias broadcast to its (static, pruned) output shape, or zeros without a bias
(``y = b`` exactly, as in the masked original); a concat drops its empty inputs; dead-code
elimination then removes the emptied branch (fx keeps impure nodes -- asserts, mutations, random
ops -- unless their output is empty).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.export import ExportedProgram

from ..analysis.coupling import Coupling
from ..analysis.depth import exit_contraction
from ..ir import Graph, Node
from ..registry import registrar
from .slicing import (
    kept_indices,
    kept_position,
    pruned_shape,
    scaled_groups,
    set_tensor,
    slice_tensor,
    tensor_owners,
)

__all__ = ["rewrite_fx"]

aten = torch.ops.aten
ArgRewriter = Callable[[torch.fx.Node, Node, "_Ctx"], None]
ARG_REWRITERS: dict[str, ArgRewriter] = {}


class _Ctx:
    def __init__(self, coupling: Coupling, removed: np.ndarray) -> None:
        self.coupling = coupling
        self.removed = removed

    def shape(self, v: Any) -> tuple[int, ...]:
        return pruned_shape(self.coupling, v, self.removed)

    def kept(self, v: Any, axis: int) -> np.ndarray:
        return self.coupling.kept(v, axis, self.removed)


_reg = registrar(ARG_REWRITERS)


def _set_arg(fx: torch.fx.Node, i: int, name: str, value: Any) -> None:
    if i < len(fx.args):
        args = list(fx.args)
        args[i] = value
        fx.args = tuple(args)
    else:
        kwargs = dict(fx.kwargs)
        kwargs[name] = value
        fx.kwargs = kwargs


def _get_arg(fx: torch.fx.Node, i: int, name: str, default: Any = None) -> Any:
    return fx.args[i] if i < len(fx.args) else fx.kwargs.get(name, default)


@_reg("view", "reshape", "_unsafe_view", "expand")
def _shape_arg(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    _set_arg(fx, 1, "size", list(ctx.shape(node.output)))


@_reg("unflatten")
def _unflatten(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    x = node.inputs[0]
    assert x is not None
    dim = int(fx.args[1]) % x.rank
    n = len(fx.args[2])  # type: ignore[arg-type]
    _set_arg(fx, 2, "sizes", list(ctx.shape(node.output)[dim : dim + n]))


@_reg("split", "split_with_sizes", "chunk", "unsafe_split", "tensor_split")
def _split(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    axis = int(node.attrs["axis"])
    sizes = [ctx.shape(v)[axis] for v in node.outputs]
    fx.target = aten.split_with_sizes.default
    fx.args = (fx.args[0], sizes, axis)
    fx.kwargs = {}


@_reg("slice")
def _slice(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    x = node.inputs[0]
    assert x is not None
    axis = int(node.attrs["axis"])
    kept = ctx.kept(x, axis)
    if len(kept) == x.shape[axis]:
        return
    start, end = kept_position(kept, int(node.attrs["start"])), kept_position(kept, int(node.attrs["end"]))
    fx.args = (fx.args[0], axis, start, end, int(node.attrs.get("step", 1)))
    fx.kwargs = {}


@_reg("narrow")
def _narrow(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    x = node.inputs[0]
    assert x is not None
    axis = int(node.attrs["axis"])
    kept = ctx.kept(x, axis)
    start = kept_position(kept, int(node.attrs["start"]))
    fx.args = (fx.args[0], axis, start, ctx.shape(node.output)[axis])


@_reg("conv1d", "conv2d", "conv3d")
def _conv(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    g = int(_get_arg(fx, 6, "groups", 1))
    if g > 1:
        _set_arg(fx, 6, "groups", scaled_groups(g, node.output.shape[1], ctx.shape(node.output)[1]))


@_reg("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def _conv_t(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    g = int(_get_arg(fx, 6, "groups", 1))
    x = node.inputs[0]
    assert x is not None
    if g > 1:
        _set_arg(fx, 6, "groups", scaled_groups(g, x.shape[1], ctx.shape(x)[1]))


@_reg("convolution", "_convolution")
def _convolution(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    g = int(_get_arg(fx, 8, "groups", 1))
    if g > 1:
        _set_arg(fx, 8, "groups", scaled_groups(g, node.output.shape[1], ctx.shape(node.output)[1]))


@_reg("group_norm")
def _group_norm(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    g = int(fx.args[1])  # type: ignore[arg-type]
    _set_arg(fx, 1, "num_groups", scaled_groups(g, node.output.shape[1], ctx.shape(node.output)[1]))


@_reg("layer_norm", "rms_norm")
def _norm_shape(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    k = len(fx.args[1])  # type: ignore[arg-type]
    _set_arg(fx, 1, "normalized_shape", list(ctx.shape(node.output)[-k:]))


def rewrite_fx(program: ExportedProgram, graph: Graph, coupling: Coupling, removed: np.ndarray) -> torch.fx.GraphModule:
    gm = program.module()
    _own_tensors(gm)
    owners = tensor_owners(gm)
    with torch.no_grad():
        for k in kept_indices(coupling, removed):
            if k.value.source is None:
                continue
            mod_path, _, name = k.value.source.rpartition(".")
            mod = gm.get_submodule(mod_path) if mod_path else gm
            old = getattr(mod, name)
            sliced = slice_tensor(old.detach(), k.axes)
            set_tensor(owners.get(id(old), [(mod, name)]), sliced, isinstance(old, nn.Parameter), old.requires_grad)
    ir_nodes = {n.name: n for n in graph.nodes}
    ctx = _Ctx(coupling, removed)
    for fx in list(gm.graph.nodes):
        if fx.op != "call_function":
            continue
        node = ir_nodes.get(fx.name)
        packet = getattr(fx.target, "_overloadpacket", None)
        if node is None or packet is None:
            continue
        fn = ARG_REWRITERS.get(packet.__name__)
        if fn is not None and any(ctx.shape(v) != v.shape for v in [*node.inputs, *node.outputs] if v is not None):
            fn(fx, node, ctx)
    if _drop_emptied(gm, ir_nodes, ctx):
        # fx keeps impure nodes (asserts, mutations, and ops tagged random such as sdpa, which may
        # draw dropout); one whose output is empty computes and draws nothing, so it may go too
        emptied = {n.name for n in graph.nodes if any(0 in ctx.shape(v) for v in n.outputs)}
        gm.graph.eliminate_dead_code(is_impure_node=lambda n: n.name not in emptied and n.is_impure())
    return _plain_graph_module(gm)


def _own_tensors(gm: torch.fx.GraphModule) -> None:
    """Give the module its own copy of every parameter and buffer (ties kept): the unlifted
    module shares storage with the exported program and so with the user's model, and an
    in-place change to the pruned model (reconstruction, fine-tuning) must not reach the original."""
    with torch.no_grad():
        for holders in tensor_owners(gm).values():
            mod, name = holders[0]
            old = getattr(mod, name)
            set_tensor(holders, old.detach().clone(), isinstance(old, nn.Parameter), old.requires_grad)


def _empty(ctx: _Ctx, v: Any, axis: int | None = None) -> bool:
    shape = ctx.shape(v)
    return 0 in shape if axis is None else shape[axis] == 0


def _drop_emptied(gm: torch.fx.GraphModule, ir_nodes: dict[str, Node], ctx: _Ctx) -> bool:
    """Cut every edge into an emptied tensor (see the module docstring); True if any was cut."""
    changed = False
    graph = gm.graph
    for fx in list(graph.nodes):
        node = ir_nodes.get(fx.name) if fx.op == "call_function" else None
        if node is None:
            continue
        if node.op == "cat" and fx.args and isinstance(fx.args[0], (list, tuple)):
            axis = int(node.attrs["axis"]) % node.output.rank
            keep = [i for i, v in enumerate(node.inputs) if v is None or not _empty(ctx, v, axis)]
            if keep and len(keep) < len(fx.args[0]) == len(node.inputs):
                fx.args = ([fx.args[0][i] for i in keep], *fx.args[1:])
                changed = True
            continue
        if not any(_empty(ctx, x, ax) for x, ax in exit_contraction(node)) or _empty(ctx, node.output):
            continue
        with graph.inserting_before(fx):
            const = _exit_constant(graph, fx, node, list(ctx.shape(node.output)))
        fx.replace_all_uses_with(const)
        graph.erase_node(fx)
        changed = True
    return changed


def _exit_constant(graph: torch.fx.Graph, fx: torch.fx.Node, node: Node, shape: list[int]) -> torch.fx.Node:
    """What a linear exit computes with an empty contraction: its bias broadcast to ``shape``
    (addmm: beta * bias), or zeros."""
    if node.op == "addmm":
        bias: Any = fx.args[0]
        beta = _get_arg(fx, 3, "beta", 1)
        if beta != 1:
            bias = graph.call_function(aten.mul.Tensor, (bias, beta))
    else:
        bias = _get_arg(fx, 2, "bias")
    if isinstance(bias, torch.fx.Node):
        if node.op == "conv":  # [C] -> [C, 1, ..., 1] against [N, C, *spatial]
            bias = graph.call_function(aten.view.default, (bias, [shape[1]] + [1] * (len(shape) - 2)))
        return graph.call_function(aten.expand.default, (bias, shape))
    weight = next(a for a, v in zip(fx.args, node.inputs, strict=False) if isinstance(a, torch.fx.Node)
                  and v is not None and v.is_weight)
    return graph.call_function(aten.new_zeros.default, (weight, shape))


def _plain_graph_module(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A regular GraphModule: the unlifted export module refuses .eval()/.train() and cannot be
    pickled (its input-guard submodule is a local lambda). Input shapes are unchanged by pruning,
    so the guard call is dropped; everything the graph references is copied."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.graph._tracer_cls = None  # the export tracer cannot be rebuilt when the module is unpickled
    gm.graph._tracer_extras = {}
    out = torch.fx.GraphModule(gm, gm.graph, class_name="PrunedGraphModule")
    out.eval()
    return out
