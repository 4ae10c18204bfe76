"""ONNX frontend: lower a prepared (static-shaped, folded) ModelProto into the IR.

Initializers become weight Values (float: ``param``, so they can be pruned and scored; integer:
``const``), named by the initializer name, which is also their ``source``. Constant nodes are
treated like initializers. Ops are lowered through ``onnx_table.LOWER_ONNX`` into the same
vocabulary the ATen frontend uses; an op with no lowering, or in a custom domain, keeps its name
(``onnx.<domain>.<OpType>``) and becomes a barrier. IR node names are the ONNX node names
(made unique), which the ONNX rewriter uses to find nodes again.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from onnx import ModelProto, numpy_helper

from ..ir import Graph, Node, Value
from .onnx_model import PreparedOnnx, graph_inputs
from .onnx_table import LOWER_ONNX, OnnxCtx, attrs_of

__all__ = ["constant_values", "lower_onnx", "node_names"]

log = logging.getLogger(__name__)


def node_names(model: ModelProto) -> list[str]:
    """A unique name per node (ONNX names may be empty or repeated)."""
    seen: set[str] = set()
    out = []
    for i, n in enumerate(model.graph.node):
        name = n.name or f"{n.op_type}_{i}"
        if name in seen:
            name = f"{name}__{i}"
        seen.add(name)
        out.append(name)
    return out


def constant_values(model: ModelProto) -> dict[str, np.ndarray]:
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            a = attrs_of(n)
            for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
                if key in a:
                    v = a[key]
                    consts[n.output[0]] = numpy_helper.to_array(v) if key == "value" else np.asarray(v)
    return consts


def _dtype_name(code: int) -> str:
    from onnx import helper

    try:
        return str(np.dtype(helper.tensor_dtype_to_np_dtype(code)))
    except (KeyError, TypeError):
        return "unknown"


def lower_onnx(prep: PreparedOnnx, name: str = "onnx") -> Graph:
    model = prep.model
    graph = Graph(name=name)
    consts = constant_values(model)
    values: dict[str, Value] = {}

    def value(vname: str) -> Value | None:
        if not vname:
            return None
        if vname in values:
            return values[vname]
        shape = prep.shapes.get(vname)
        if shape is None:
            return None
        if vname in consts:
            arr = consts[vname]
            kind = "param" if np.issubdtype(arr.dtype, np.floating) and arr.ndim >= 1 else "const"
            v = graph.add_value(Value(vname, tuple(arr.shape), str(arr.dtype), kind, vname))  # type: ignore[arg-type]
        else:
            v = graph.add_value(Value(vname, shape, _dtype_name(prep.dtypes.get(vname, 1))))
        values[vname] = v
        return v

    for inp in graph_inputs(model):
        v = value(inp.name)
        if v is not None:
            v.kind = "input"
            graph.inputs.append(v)
    ctx = OnnxCtx(
        const=lambda n: consts.get(n) if n else None,
        shape=lambda n: prep.shapes.get(n),
        is_weight=lambda n: n in consts and np.issubdtype(consts[n].dtype, np.floating),
    )
    for nname, n in zip(node_names(model), model.graph.node, strict=True):
        if n.op_type == "Constant":
            continue
        lowered: Any = None
        fn = LOWER_ONNX.get(n.op_type) if n.domain in ("", "ai.onnx") else None
        if fn is not None:
            try:
                lowered = fn(n, attrs_of(n), ctx)
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                log.debug("lowering %s (%s) failed: %s; barrier", nname, n.op_type, exc)
        if lowered is None:
            op = f"onnx.{n.domain + '.' if n.domain else ''}{n.op_type}"
            ins = [value(i) for i in n.input if i]
            inputs: list[Value | None] = [v for v in ins if v is not None]
            attrs: dict[str, Any] = {}
        else:
            op, in_names, attrs = lowered
            inputs = [value(i) if i else None for i in in_names]
        outs = [v for v in (value(o) for o in n.output if o) if v is not None]
        if not outs:
            continue
        graph.add_node(Node(nname, op, inputs, outs, attrs, target=f"onnx::{n.op_type}", scope=n.name))
    # running statistics are state, not learned parameters (as nn.Module buffers): they are sliced
    # with their channels but neither scored nor counted as parameters
    for node in graph.nodes:
        if node.op == "batch_norm":
            for v in node.inputs[3:5]:
                if v is not None and v.kind == "param":
                    v.kind = "buffer"
    for o in model.graph.output:
        v = values.get(o.name)
        if v is not None:
            graph.outputs.append(v)
    return graph
