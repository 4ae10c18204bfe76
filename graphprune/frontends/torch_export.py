"""PyTorch frontend: capture with ``torch.export`` and lower the ATen graph into the IR.

``torch.export.export(model, args, kwargs, strict=False)`` gives a functional ATen graph whose
placeholders map to parameter/buffer FQNs through the graph signature. Each call_function node is
lowered through ``aten_table.LOWER`` into a normalized op; ops with no lowering keep their ATen
name as op (prefixed ``aten.``) and become barriers in coupling analysis. Multi-output nodes
(split, unbind, batch_norm variants) get one IR Value per tensor output; ``getitem`` nodes alias
them. The IR node names equal the fx node names so the fx rewriter can find them again.
"""

from __future__ import annotations

import logging
import operator
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from ..errors import CaptureError
from ..ir import Graph, Node, Value
from .aten_table import lower_args
from .inputs import ExampleInputs, as_args_kwargs

__all__ = ["Captured", "capture", "lower_exported"]

log = logging.getLogger(__name__)


@dataclass
class Captured:
    """An exported program, its IR, and the inputs it was traced with."""

    program: ExportedProgram
    graph: Graph
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    seconds: float


def capture(model: torch.nn.Module, example_inputs: ExampleInputs) -> Captured:
    """Trace ``model`` with ``torch.export`` (non-strict) and lower it into the IR."""
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"expected a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = as_args_kwargs(example_inputs)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.export.export(model, args, kwargs, strict=False)
    except Exception as exc:  # torch raises many types here; all mean "cannot capture"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__}: {first[:300]} -- "
            "wrap the model in a small nn.Module whose forward takes and returns tensors only "
            "(no data-dependent Python control flow), or export it to ONNX and prune the .onnx file"
        ) from exc
    graph = lower_exported(program, name=type(model).__name__, aliases=shared_tensor_aliases(model))
    return Captured(program, graph, args, kwargs, time.perf_counter() - t0)


def _tensor_meta(node: torch.fx.Node) -> list[torch.Tensor | None]:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return [val]
    if isinstance(val, (list, tuple)):
        return [v if isinstance(v, torch.Tensor) else None for v in val]
    return []


def _shape(t: torch.Tensor, where: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in t.shape)
    except (TypeError, RuntimeError) as exc:
        raise CaptureError(
            f"{where} has a symbolic shape {tuple(t.shape)}; graphprune needs static shapes -- "
            "pass example inputs of the real size"
        ) from exc


def _scope(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    return str(list(stack.values())[-1][0])


def shared_tensor_aliases(model: torch.nn.Module) -> dict[str, str]:
    """Parameter/buffer name -> the first name of the same tensor object (tied weights)."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for fqn, t in named:
        aliases[fqn] = first.setdefault(id(t), fqn)
    return aliases


def lower_exported(program: ExportedProgram, name: str = "graph", aliases: dict[str, str] | None = None) -> Graph:
    """Lower an exported program; ``aliases`` maps tied weight names to one canonical name so a
    shared tensor becomes one IR Value (and is pruned consistently for all its users)."""
    graph = Graph(name=name)
    aliases = aliases or {}
    by_source: dict[str, Value] = {}
    sig = program.graph_signature
    spec_of = {s.arg.name: s for s in sig.input_specs if hasattr(s.arg, "name")}
    values: dict[str, list[Value | None]] = {}

    def as_value(arg: Any) -> Value | None:
        if isinstance(arg, torch.fx.Node):
            outs = values.get(arg.name)
            return outs[0] if outs else None
        return None

    for node in program.graph.nodes:
        if node.op == "placeholder":
            metas = _tensor_meta(node)
            if not metas or metas[0] is None:
                continue
            spec = spec_of.get(node.name)
            kind, source = "input", None
            if spec is not None and spec.kind == InputKind.PARAMETER:
                kind, source = "param", spec.target
            elif spec is not None and spec.kind == InputKind.BUFFER:
                kind, source = "buffer", spec.target
            elif spec is not None and spec.kind == InputKind.CONSTANT_TENSOR:
                kind, source = "const", spec.target
            if source is not None and kind in ("param", "buffer"):
                source = aliases.get(source, source)
                if source in by_source:
                    values[node.name] = [by_source[source]]
                    continue
            v = graph.add_value(Value(node.name, _shape(metas[0], node.name), str(metas[0].dtype), kind, source))
            values[node.name] = [v]
            if source is not None:
                by_source[source] = v
            if kind == "input":
                graph.inputs.append(v)
        elif node.op == "call_function":
            _lower_call(graph, node, values, as_value)
        elif node.op == "get_attr":
            continue
        elif node.op == "output":
            out_specs = [s for s in sig.output_specs]
            flat = node.args[0] if isinstance(node.args[0], (list, tuple)) else [node.args[0]]
            for spec, arg in zip(out_specs, flat, strict=False):
                if spec.kind != OutputKind.USER_OUTPUT:
                    continue
                v = as_value(arg)
                if v is not None and v not in graph.outputs:
                    graph.outputs.append(v)
    return graph


def _lower_call(graph: Graph, node: torch.fx.Node, values: dict[str, list[Value | None]], as_value: Any) -> None:
    target = node.target
    if target is operator.getitem:
        src, idx = node.args[0], int(node.args[1])  # type: ignore[arg-type]
        outs = values.get(src.name, []) if isinstance(src, torch.fx.Node) else []
        values[node.name] = [outs[idx] if idx < len(outs) else None]
        return
    metas = _tensor_meta(node)
    if not any(m is not None for m in metas):
        return  # shape arithmetic, asserts: nothing to lower
    packet = getattr(target, "_overloadpacket", None)
    aten_name = packet.__name__ if packet is not None else getattr(target, "__name__", str(target))
    first = node.args[0] if node.args else None
    in_shape = _tensor_meta(first)[0].shape if isinstance(first, torch.fx.Node) and _tensor_meta(first) and _tensor_meta(first)[0] is not None else ()  # type: ignore[union-attr]
    lowered = None
    try:
        lowered = lower_args(aten_name, node.args, dict(node.kwargs), tuple(int(s) for s in in_shape))
    except (TypeError, ValueError, IndexError) as exc:
        log.debug("lowering %s failed (%s); treating it as a barrier", node.name, exc)
    if lowered is None:
        op = f"aten.{aten_name}"
        tensor_args = [a for a in _flat_args(node.args, node.kwargs)]
        attrs: dict[str, Any] = {}
    else:
        op, tensor_args, attrs = lowered
    inputs = [as_value(a) for a in tensor_args if a is None or isinstance(a, torch.fx.Node)]
    if lowered is None:
        inputs = [v for v in inputs if v is not None]
    outs: list[Value | None] = []
    real: list[Value] = []
    for i, m in enumerate(metas):
        if m is None:
            outs.append(None)
            continue
        vname = node.name if i == 0 else f"{node.name}.{i}"
        v = graph.add_value(Value(vname, _shape(m, node.name), str(m.dtype)))
        outs.append(v)
        real.append(v)
    graph.add_node(Node(node.name, op, inputs, real, attrs, target=str(target), scope=_scope(node)))
    values[node.name] = outs


def _flat_args(args: Any, kwargs: dict[str, Any]) -> list[Any]:
    out: list[Any] = []

    def walk(a: Any) -> None:
        if isinstance(a, torch.fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            for x in a:
                walk(x)

    walk(args)
    walk(list(kwargs.values()))
    return out
