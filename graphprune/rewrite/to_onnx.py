"""ONNX rewriter: a NEW ModelProto with sliced initializers and rewritten shape constants.

Starting from the prepared (static, folded) model: every float initializer that loses channels
is sliced; every node whose output shapes change gets its size-carrying inputs and attributes
rewritten from the pruned shapes (Reshape/Expand shape, Split sizes, Slice starts/ends, Resize
sizes, Conv/ConvTranspose ``group``, GroupNormalization ``num_groups``). Rewritten constants get
fresh initializer names, so constants shared with unchanged nodes stay intact. Stale value_info is
dropped and shapes are re-inferred; the result passes ``onnx.checker``.

Dynamic dims (``dynamic=OnnxDynamic``): the same edits are computed on the prepared model, then
carried onto the ORIGINAL graph by ``onnx_dynamic.py`` (which see), so symbolic dims stay symbolic.
Any case it cannot carry raises ``NotDynamic``.

Depth (a group removed whole): each linear exit (Conv/ConvTranspose with group 1, Gemm, MatMul
with an initializer operand) whose contraction input is left empty is replaced by
``Expand(bias, shape)`` of its pruned output shape (Gemm: ``beta * C``), or ``ConstantOfShape``
zeros without a bias; a Concat drops its empty inputs; nodes none of whose outputs is used are then
removed. Such a model is written with the bound (static) shapes only (``NotDynamic`` otherwise).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, helper, numpy_helper

from ..analysis.coupling import Coupling
from ..analysis.depth import exit_bias, exit_contraction, removed_whole
from ..errors import ExportError, GraphpruneError
from ..frontends.onnx import constant_values, node_names
from ..frontends.onnx_model import OnnxDynamic
from ..ir import Graph, Node
from ..registry import registrar
from .slicing import kept_indices, kept_position, pruned_shape, scaled_groups

__all__ = ["NotDynamic", "rewrite_onnx"]


class NotDynamic(GraphpruneError):
    """A size-carrying constant cannot be written to follow the symbolic input dims."""


class _Edit:
    def __init__(self, model: ModelProto, coupling: Coupling, removed: np.ndarray) -> None:
        self.model = model
        self.coupling = coupling
        self.removed = removed
        self.consts = constant_values(model)
        self.new_inits: list[onnx.TensorProto] = []
        self.counter = 0

    def shape(self, v: object) -> tuple[int, ...]:
        return pruned_shape(self.coupling, v, self.removed)  # type: ignore[arg-type]

    def kept(self, v: object, axis: int) -> np.ndarray:
        return self.coupling.kept(v, axis, self.removed)

    def add_const(self, base: str, arr: np.ndarray) -> str:
        """A new initializer named after ``base``; returns its name."""
        self.counter += 1
        name = f"{base}__gp{self.counter}"
        self.new_inits.append(numpy_helper.from_array(arr, name))
        return name

    def set_input(self, node: NodeProto, i: int, arr: np.ndarray) -> None:
        name = self.add_const(node.input[i] if i < len(node.input) and node.input[i] else node.name, arr)
        while len(node.input) <= i:
            node.input.append("")
        node.input[i] = name

    def set_attr(self, node: NodeProto, name: str, value: object) -> None:
        for a in list(node.attribute):
            if a.name == name:
                node.attribute.remove(a)
        node.attribute.append(helper.make_attribute(name, value))


Editor = Callable[[NodeProto, Node, _Edit], None]
EDITORS: dict[str, Editor] = {}


_reg = registrar(EDITORS)


@_reg("Reshape", "Expand")
def _reshape(n: NodeProto, node: Node, e: _Edit) -> None:
    e.set_input(n, 1, np.asarray(e.shape(node.output), dtype=np.int64))


@_reg("Split")
def _split(n: NodeProto, node: Node, e: _Edit) -> None:
    axis = int(node.attrs["axis"])
    sizes = np.asarray([e.shape(v)[axis] for v in node.outputs], dtype=np.int64)
    if any(a.name == "split" for a in n.attribute):  # opset < 13
        e.set_attr(n, "split", sizes.tolist())
    else:
        for a in list(n.attribute):
            if a.name == "num_outputs":
                n.attribute.remove(a)
        e.set_input(n, 1, sizes)


@_reg("Slice")
def _slice(n: NodeProto, node: Node, e: _Edit) -> None:
    if node.op != "slice":
        return
    x = node.inputs[0]
    assert x is not None
    axis = int(node.attrs["axis"])
    kept = e.kept(x, axis)
    start, end = kept_position(kept, int(node.attrs["start"])), kept_position(kept, int(node.attrs["end"]))
    e.set_input(n, 1, np.asarray([start], dtype=np.int64))
    e.set_input(n, 2, np.asarray([end], dtype=np.int64))
    e.set_input(n, 3, np.asarray([axis], dtype=np.int64))
    e.set_input(n, 4, np.asarray([int(node.attrs.get("step", 1))], dtype=np.int64))


@_reg("Resize")
def _resize(n: NodeProto, node: Node, e: _Edit) -> None:
    if len(n.input) > 3 and n.input[3]:
        e.set_input(n, 3, np.asarray(e.shape(node.output), dtype=np.int64))


@_reg("Conv")
def _conv(n: NodeProto, node: Node, e: _Edit) -> None:
    g = next((a.i for a in n.attribute if a.name == "group"), 1)
    if g > 1:
        e.set_attr(n, "group", scaled_groups(g, node.output.shape[1], e.shape(node.output)[1]))


@_reg("ConvTranspose")
def _conv_t(n: NodeProto, node: Node, e: _Edit) -> None:
    g = next((a.i for a in n.attribute if a.name == "group"), 1)
    x = node.inputs[0]
    assert x is not None
    if g > 1:
        e.set_attr(n, "group", scaled_groups(g, x.shape[1], e.shape(x)[1]))
    if any(a.name == "output_shape" for a in n.attribute):
        e.set_attr(n, "output_shape", list(e.shape(node.output)[2:]))


@_reg("GroupNormalization")
def _gn(n: NodeProto, node: Node, e: _Edit) -> None:
    g = next((a.i for a in n.attribute if a.name == "num_groups"), 1)
    e.set_attr(n, "num_groups", scaled_groups(g, node.output.shape[1], e.shape(node.output)[1]))


def rewrite_onnx(model: ModelProto, graph: Graph, coupling: Coupling, removed: np.ndarray,
                 dynamic: OnnxDynamic | None = None) -> ModelProto:
    """The pruned model; with ``dynamic``, the original graph edited so that its symbolic input
    dims stay symbolic (or ``NotDynamic`` when that cannot be done)."""
    if dynamic is not None and removed_whole(coupling, removed):
        raise NotDynamic("a residual branch removed whole (depth pruning) leaves constants of the bound shapes")
    out, edit, ir_nodes = _edit_prepared(model, graph, coupling, removed)
    if dynamic is not None:
        from .onnx_dynamic import rewrite_original

        new_inits = {t.name: numpy_helper.to_array(t) for t in edit.new_inits}
        return _checked(rewrite_original(dynamic, model, out, new_inits, graph, coupling, removed))
    if _drop_emptied(out, ir_nodes, edit):
        _drop_dead_nodes(out)
    out.graph.initializer.extend(edit.new_inits)
    _drop_unused_initializers(out)
    return _checked(out)


def _edit_prepared(model: ModelProto, graph: Graph, coupling: Coupling, removed: np.ndarray
                   ) -> tuple[ModelProto, _Edit, dict[str, Node]]:
    """A copy of the prepared model with sliced initializers and edited nodes; new constants are
    in ``edit.new_inits`` (not yet added), node order and count are unchanged."""
    out = ModelProto()
    out.CopyFrom(model)
    edit = _Edit(out, coupling, removed)
    sliced = {}
    for k in kept_indices(coupling, removed):
        arr = edit.consts.get(k.value.name)
        if arr is None:
            continue
        for ax, idx in k.axes.items():
            arr = np.take(arr, idx, axis=ax)
        sliced[k.value.name] = np.ascontiguousarray(arr)
    for t in out.graph.initializer:
        if t.name in sliced:
            t.CopyFrom(numpy_helper.from_array(sliced.pop(t.name), t.name))
    for n in out.graph.node:  # weights stored in Constant nodes
        if n.op_type == "Constant" and n.output and n.output[0] in sliced:
            n.ClearField("attribute")
            n.attribute.append(helper.make_attribute("value", numpy_helper.from_array(sliced.pop(n.output[0]))))
    ir_nodes = {n.name: n for n in graph.nodes}
    for nname, n in zip(node_names(out), out.graph.node, strict=True):
        node = ir_nodes.get(nname)
        fn = EDITORS.get(n.op_type)
        if node is None or fn is None:
            continue
        if any(edit.shape(v) != v.shape for v in [*node.inputs, *node.outputs] if v is not None):
            fn(n, node, edit)
    return out, edit, ir_nodes


def _checked(out: ModelProto) -> ModelProto:
    del out.graph.value_info[:]
    try:
        out = onnx.shape_inference.infer_shapes(out, strict_mode=False)
        onnx.checker.check_model(out)
    except Exception as exc:
        raise ExportError(f"the rewritten ONNX model is invalid: {str(exc).splitlines()[0][:300]}") from exc
    return out


def _empty(e: _Edit, v: object, axis: int | None = None) -> bool:
    shape = e.shape(v)
    return 0 in shape if axis is None else shape[axis] == 0


def _drop_emptied(out: ModelProto, ir_nodes: dict[str, Node], e: _Edit) -> bool:
    """Cut every edge into an emptied tensor (see the module docstring); True if any was cut."""
    changed = False
    for nname, n in zip(node_names(out), out.graph.node, strict=True):
        node = ir_nodes.get(nname)
        if node is None:
            continue
        if n.op_type == "Concat" and len(n.input) == len(node.inputs):
            axis = int(node.attrs["axis"]) % node.output.rank
            keep = [name for name, v in zip(n.input, node.inputs, strict=True) if v is None or not _empty(e, v, axis)]
            if keep and len(keep) < len(n.input):
                del n.input[:]
                n.input.extend(keep)
                changed = True
            continue
        if not any(_empty(e, x, ax) for x, ax in exit_contraction(node)) or _empty(e, node.output):
            continue
        n.CopyFrom(_exit_constant(n, node, e))
        changed = True
    return changed


def _exit_constant(n: NodeProto, node: Node, e: _Edit) -> NodeProto:
    """What a linear exit computes with an empty contraction: its bias broadcast to the pruned
    output shape (Gemm: beta * C), or zeros of the weight's dtype."""
    shape = np.asarray(e.shape(node.output), dtype=np.int64)
    y = n.output[0]
    bias = exit_bias(node)
    arr = e.consts.get(bias.name) if bias is not None else None
    if arr is None:
        weight = next(x for x, _ in exit_contraction(node) if x.is_weight)
        zero = np.zeros(1, dtype=e.consts[weight.name].dtype)
        return helper.make_node("ConstantOfShape", [e.add_const(f"{y}_shape", shape)], [y], name=n.name,
                                value=numpy_helper.from_array(zero))
    for ax in range(arr.ndim):  # the bias loses what its group lost
        kept = e.kept(bias, ax)
        if len(kept) != arr.shape[ax]:
            arr = np.take(arr, kept, axis=ax)
    if n.op_type == "Gemm":
        arr = arr * np.asarray(next((a.f for a in n.attribute if a.name == "beta"), 1.0), dtype=arr.dtype)
    if n.op_type in ("Conv", "ConvTranspose"):  # [C] -> [C, 1, ..., 1] against [N, C, *spatial]
        arr = arr.reshape([-1] + [1] * (len(shape) - 2))
    return helper.make_node("Expand", [e.add_const(bias.name, np.ascontiguousarray(arr)), e.add_const(f"{y}_shape", shape)],
                            [y], name=n.name)


def _drop_dead_nodes(model: ModelProto) -> None:
    """Remove, until none is left, nodes none of whose outputs a node or the graph output uses."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        keep = [n for n in model.graph.node if any(o and o in used for o in n.output)]
        if len(keep) == len(model.graph.node):
            return
        del model.graph.node[:]
        model.graph.node.extend(keep)


def _drop_unused_initializers(model: ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
