"""ONNX rewriter: a NEW ModelProto with sliced initializers and rewritten shape constants.

Starting from the prepared (static, folded) model: every float initializer that loses channels
is sliced; every node whose output shapes change gets its size-carrying inputs and attributes
rewritten from the pruned shapes (Reshape/Expand shape, Split sizes, Slice starts/ends, Resize
sizes, Conv/ConvTranspose ``group``, GroupNormalization ``num_groups``). Rewritten constants get
fresh initializer names, so constants shared with unchanged nodes stay intact. Stale value_info is
dropped and shapes are re-inferred; the result passes ``onnx.checker``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, helper, numpy_helper

from ..analysis.coupling import Coupling
from ..errors import ExportError
from ..frontends.onnx import constant_values, node_names
from ..ir import Graph, Node
from .slicing import kept_indices

__all__ = ["rewrite_onnx"]


class _Edit:
    def __init__(self, model: ModelProto, coupling: Coupling, removed: np.ndarray) -> None:
        self.model = model
        self.coupling = coupling
        self.removed = removed
        self.consts = constant_values(model)
        self.new_inits: list[onnx.TensorProto] = []
        self.counter = 0

    def shape(self, v: object) -> tuple[int, ...]:
        return tuple(len(self.coupling.kept(v, ax, self.removed)) for ax in range(v.rank))  # type: ignore[attr-defined]

    def kept(self, v: object, axis: int) -> np.ndarray:
        return self.coupling.kept(v, axis, self.removed)

    def set_input(self, node: NodeProto, i: int, arr: np.ndarray) -> None:
        self.counter += 1
        name = f"{node.input[i] if i < len(node.input) and node.input[i] else node.name}__gp{self.counter}"
        self.new_inits.append(numpy_helper.from_array(arr, name))
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


def _reg(*ops: str) -> Callable[[Editor], Editor]:
    def deco(fn: Editor) -> Editor:
        for o in ops:
            EDITORS[o] = fn
        return fn

    return deco


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
    start = int(np.searchsorted(kept, int(node.attrs["start"])))
    end = int(np.searchsorted(kept, int(node.attrs["end"])))
    e.set_input(n, 1, np.asarray([start], dtype=np.int64))
    e.set_input(n, 2, np.asarray([end], dtype=np.int64))
    e.set_input(n, 3, np.asarray([axis], dtype=np.int64))
    e.set_input(n, 4, np.asarray([int(node.attrs.get("step", 1))], dtype=np.int64))


@_reg("Resize")
def _resize(n: NodeProto, node: Node, e: _Edit) -> None:
    if len(n.input) > 3 and n.input[3]:
        e.set_input(n, 3, np.asarray(e.shape(node.output), dtype=np.int64))


def _groups(old_groups: int, old: int, new: int) -> int:
    return max(1, old_groups * new // old) if old_groups > 1 else 1


@_reg("Conv")
def _conv(n: NodeProto, node: Node, e: _Edit) -> None:
    g = next((a.i for a in n.attribute if a.name == "group"), 1)
    if g > 1:
        e.set_attr(n, "group", _groups(g, node.output.shape[1], e.shape(node.output)[1]))


@_reg("ConvTranspose")
def _conv_t(n: NodeProto, node: Node, e: _Edit) -> None:
    g = next((a.i for a in n.attribute if a.name == "group"), 1)
    x = node.inputs[0]
    assert x is not None
    if g > 1:
        e.set_attr(n, "group", _groups(g, x.shape[1], e.shape(x)[1]))
    if any(a.name == "output_shape" for a in n.attribute):
        e.set_attr(n, "output_shape", list(e.shape(node.output)[2:]))


@_reg("GroupNormalization")
def _gn(n: NodeProto, node: Node, e: _Edit) -> None:
    g = next((a.i for a in n.attribute if a.name == "num_groups"), 1)
    e.set_attr(n, "num_groups", _groups(g, node.output.shape[1], e.shape(node.output)[1]) if g > 1 else 1)


def rewrite_onnx(model: ModelProto, graph: Graph, coupling: Coupling, removed: np.ndarray) -> ModelProto:
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
    out.graph.initializer.extend(edit.new_inits)
    _drop_unused_initializers(out)
    del out.graph.value_info[:]
    try:
        out = onnx.shape_inference.infer_shapes(out, strict_mode=False)
        onnx.checker.check_model(out)
    except Exception as exc:
        raise ExportError(f"the rewritten ONNX model is invalid: {str(exc).splitlines()[0][:300]}") from exc
    return out


def _drop_unused_initializers(model: ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
