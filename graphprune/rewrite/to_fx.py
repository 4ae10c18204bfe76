"""fx route: the exported graph as a GraphModule with sliced weights and rewritten shape args.

Used when the model's Python code hard-codes a shape that cannot follow the pruning (e.g.
``nn.MultiheadAttention`` requires num_heads * head_dim == embed_dim). The exported program is
unlifted into a GraphModule; weights are sliced and every ATen call whose integer arguments
encode a size (view/reshape/expand sizes, split sizes, slice bounds, groups) is rewritten from
the pruned shapes computed by coupling analysis.

Dynamic dims. The program may be captured with symbolic batch/sequence dims
(``frontends/torch_export.py``); its size arguments then mix static ints with fx nodes that
compute sizes at run time (``sym_size``, ``operator.mul``...). A size element is rewritten only
where its pruned size differs from its original one at the example size: a static int becomes the
pruned int; a symbolic element ``e`` (e.g. ``batch * heads``) becomes ``e * p // o`` with ``p/o``
the reduced ratio of its pruned to original example value (exact when ``e`` is a multiple of the
pruned count, as merged batch x head dims are). ``-1`` stays ``-1``. With ``static=True`` every
``sym_size`` is replaced by its example value first, which gives the old, shape-specialized module.

Any device. ``view``/``_unsafe_view`` become ``reshape`` (export chose ``view`` from the strides of
CPU kernels; other devices' kernels, e.g. CUDA attention, return other strides), and every
``torch.device`` argument (factory ops such as ``arange``, ``_to_copy``) is replaced by the device
of the module's first parameter (or first input) read at run time, so ``.to(device)`` moves all.

Depth pruning (a group removed whole): each linear exit whose contraction operand is left empty
is replaced by its bias broadcast to its pruned output shape (symbolic input dims read from the
inputs with ``sym_size``), or zeros without a bias
(``y = b`` exactly, as in the masked original); a concat drops its empty inputs; dead-code
elimination then removes the emptied branch (fx keeps impure nodes -- asserts, mutations, random
ops -- unless their output is empty).
"""

from __future__ import annotations

import math
import operator
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
from .module_attrs import NotRewritable
from .slicing import (
    kept_indices,
    kept_position,
    pruned_shape,
    scaled_groups,
    set_tensor,
    slice_tensor,
    tensor_owners,
)
from .std_conv import fold_std_convs_fx

__all__ = ["hard_coded_devices", "rewrite_fx"]

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

    def axis_changed(self, v: Any, axis: int) -> bool:
        return self.shape(v)[axis] != v.shape[axis]


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


def _sizes(fx: torch.fx.Node, sizes: Any, old: tuple[int, ...], new: tuple[int, ...]) -> list[Any]:
    """``sizes`` (ints and fx nodes) with every element whose size changes from ``old`` to ``new``
    rewritten (see the module docstring): static ints replaced, symbolic ones scaled."""
    out: list[Any] = []
    for e, o, p in zip(sizes, old, new, strict=True):
        if o == p or (isinstance(e, int) and e == -1):
            out.append(e)
        elif isinstance(e, torch.fx.Node):
            g = math.gcd(p, o)
            with fx.graph.inserting_before(fx):
                scaled = fx.graph.call_function(operator.mul, (e, p // g)) if p // g != 1 else e
                out.append(fx.graph.call_function(operator.floordiv, (scaled, o // g)) if o // g != 1 else scaled)
        else:
            out.append(p)
    return out


@_reg("view", "reshape", "_unsafe_view", "expand", "new_zeros", "new_ones", "new_full", "new_empty")
def _shape_arg(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    size = _get_arg(fx, 1, "size")
    _set_arg(fx, 1, "size", _sizes(fx, size, node.output.shape, ctx.shape(node.output)))


@_reg("zeros", "ones", "full", "empty")
def _factory_size(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    """Uniform fills and empty buffers whose axes were pruned (rules/inplace.py): size is arg 0."""
    size = _get_arg(fx, 0, "size")
    if isinstance(size, (list, tuple)) and len(size) == node.output.rank:
        _set_arg(fx, 0, "size", _sizes(fx, size, node.output.shape, ctx.shape(node.output)))


@_reg("unflatten")
def _unflatten(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    x = node.inputs[0]
    assert x is not None
    dim = int(fx.args[1]) % x.rank
    sizes = list(fx.args[2])  # type: ignore[arg-type]
    n = len(sizes)
    _set_arg(fx, 2, "sizes", _sizes(fx, sizes, node.output.shape[dim : dim + n], ctx.shape(node.output)[dim : dim + n]))


@_reg("split", "split_with_sizes", "chunk", "unsafe_split", "tensor_split")
def _split(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    axis = int(node.attrs["axis"])
    x = node.inputs[0]
    if x is not None and not ctx.axis_changed(x, axis % x.rank):
        return  # split along a dim pruning does not touch (it may be symbolic)
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
    if not ctx.axis_changed(x, axis % x.rank):
        return
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


@_reg("mean")
def _mean_statistic(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    """A mean over channels hidden-size pruning removed (rules/hidden.py): the masked original
    averages d channels, d - d' of them 0, so the pruned mean is scaled by d'/d."""
    x = node.inputs[0]
    if x is None:
        return
    old = new = 1
    for ax in node.attrs.get("axes", range(x.rank)):
        if (x.index, ax % x.rank) in ctx.coupling.statistics:
            old *= x.shape[ax % x.rank]
            new *= ctx.shape(x)[ax % x.rank]
    if old == new:
        return
    with fx.graph.inserting_after(fx):
        scaled = fx.graph.call_function(aten.mul.Tensor, (fx, new / old))
    fx.replace_all_uses_with(scaled, delete_user_cb=lambda user: user is not scaled)


@_reg("histc")
def _histc_bins(fx: torch.fx.Node, node: Node, ctx: _Ctx) -> None:
    """An MoE router's expert counts (rules/moe.py): histc(ids, bins=E, min=0, max=E-1) over the
    kept experts' renumbered ids is histc(bins=E', min=0, max=E'-1)."""
    old, new = node.output.shape[0], ctx.shape(node.output)[0]
    if old == new:
        return
    lo, hi = _get_arg(fx, 2, "min", 0), _get_arg(fx, 3, "max", 0)
    if (lo, hi) != (0, old - 1):
        raise NotRewritable(f"histc node {node.name!r} counts over [{lo}, {hi}], not the {old} expert ids")
    _set_arg(fx, 1, "bins", new)
    _set_arg(fx, 3, "max", new - 1)


def rewrite_fx(
    program: ExportedProgram, graph: Graph, coupling: Coupling, removed: np.ndarray, static: bool = False
) -> torch.fx.GraphModule:
    """The pruned GraphModule; it keeps the program's symbolic dims unless ``static``."""
    gm = program.module()
    if static:
        _specialize(gm)
    _own_tensors(gm)
    fold_std_convs_fx(gm, coupling, removed)  # weight-standardized convs: fold before slicing
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
    _reshape_not_view(gm)
    _runtime_device(gm)
    return _plain_graph_module(gm)


def _specialize(gm: torch.fx.GraphModule) -> None:
    """Replace every ``sym_size`` by its example value: the module then only runs at the example
    input shapes (the static fallback)."""
    from ..frontends.torch_export import hint

    for fx in list(gm.graph.nodes):
        if fx.op == "call_function" and fx.target is aten.sym_size.int:
            value = hint(fx.meta["val"])
            for user in list(fx.users):
                user.args = torch.fx.node.map_arg(user.args, lambda a, f=fx, v=value: v if a is f else a)
                user.kwargs = torch.fx.node.map_arg(user.kwargs, lambda a, f=fx, v=value: v if a is f else a)
            gm.graph.erase_node(fx)


_VIEWS = (aten.view.default, aten._unsafe_view.default)


def _reshape_not_view(gm: torch.fx.GraphModule) -> None:
    """``view`` -> ``reshape``: the same result, and a copy instead of an error where another
    device's kernel returned a layout the view cannot express."""
    for fx in gm.graph.nodes:
        if fx.op == "call_function" and fx.target in _VIEWS:
            fx.target = aten.reshape.default


def hard_coded_devices(gm: torch.fx.GraphModule) -> list[str]:
    """Nodes of ``gm`` with a ``torch.device`` constant among their arguments (should be none)."""
    return [fx.name for fx in gm.graph.nodes if _has_device((fx.args, fx.kwargs))]


def _has_device(a: Any) -> bool:
    if isinstance(a, torch.device):
        return True
    if isinstance(a, (list, tuple)):
        return any(_has_device(x) for x in a)
    if isinstance(a, dict):
        return any(_has_device(x) for x in a.values())
    return False


def _runtime_device(gm: torch.fx.GraphModule) -> None:
    """Replace every ``torch.device`` argument by the device of a parameter/buffer (or of the
    first input when the module has none), read when the module runs."""
    users = hard_coded_devices(gm)
    if not users:
        return
    graph = gm.graph
    source = next((n for n in graph.nodes if n.op == "get_attr" and isinstance(n.meta.get("val"), torch.Tensor)), None)
    if source is None:
        source = next((n for n in graph.nodes if n.op == "placeholder"), None)
    if source is None:
        return
    with graph.inserting_after(source):
        device = graph.call_function(getattr, (source, "device"))
    by_name = {n.name: n for n in graph.nodes}
    for name in users:
        fx = by_name[name]
        swap = lambda a: device if isinstance(a, torch.device) else a  # noqa: E731
        fx.args = torch.fx.node.map_aggregate(fx.args, swap)
        fx.kwargs = torch.fx.node.map_aggregate(fx.kwargs, swap)


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
    sizes = _symbolic_sizes(graph, fx, shape)
    if isinstance(bias, torch.fx.Node):
        if node.op == "conv":  # [C] -> [C, 1, ..., 1] against [N, C, *spatial]
            bias = graph.call_function(aten.view.default, (bias, [shape[1]] + [1] * (len(shape) - 2)))
        return graph.call_function(aten.expand.default, (bias, sizes))
    weight = next(a for a, v in zip(fx.args, node.inputs, strict=False) if isinstance(a, torch.fx.Node)
                  and v is not None and v.is_weight)
    return graph.call_function(aten.new_zeros.default, (weight, sizes))


def _symbolic_sizes(graph: torch.fx.Graph, fx: torch.fx.Node, shape: list[int]) -> list[Any]:
    """``shape`` with each dim that is a plain input-size symbol in ``fx``'s output read from that
    input at run time (``sym_size``); other dims stay at their example values."""
    val = fx.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return list(shape)
    from ..frontends.torch_export import is_symbolic

    where: dict[str, tuple[torch.fx.Node, int]] = {}
    for ph in graph.nodes:
        pv = ph.meta.get("val") if ph.op == "placeholder" else None
        if isinstance(pv, torch.Tensor):
            for ax, s in enumerate(pv.shape):
                if is_symbolic(s):
                    where.setdefault(str(s), (ph, ax))
    out: list[Any] = list(shape)
    for i, s in enumerate(val.shape):
        if is_symbolic(s) and str(s) in where:
            out[i] = graph.call_function(aten.sym_size.int, where[str(s)])
    return out


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
