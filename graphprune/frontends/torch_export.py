"""PyTorch frontend: capture with ``torch.export`` and lower the ATen graph into the IR.

``torch.export.export(model, args, kwargs, strict=False)`` gives a functional ATen graph whose
placeholders map to parameter/buffer FQNs through the graph signature. Each call_function node is
lowered through ``aten_table.LOWER`` into a normalized op; ops with no lowering keep their ATen
name as op (prefixed ``aten.``) and become barriers in coupling analysis. Multi-output nodes
(split, unbind, batch_norm variants) get one IR Value per tensor output; ``getitem`` nodes alias
them. The IR node names equal the fx node names so the fx rewriter can find them again.

Dynamic dims. Capture first asks for ``Dim.AUTO`` on the batch dim (0) of every tensor input and
on the sequence dim (1) of token-like inputs (integer or bool tensors of rank 2, float tensors of
rank 3); ``torch.export`` keeps a dim symbolic where the model allows it and specializes it
otherwise (a batch of 1 is not specialized: ``backed_size_oblivious``). If the dynamic capture
fails, the model is captured static. The IR is always static: every symbolic size is lowered at
its example value (its hint), and integer arguments computed from sizes (``sym_size``) are lowered
at their hints too, so analysis is the same as for a static capture. ``Captured.dynamic`` records
which input dims stayed symbolic; the fx route uses the symbolic program to keep them.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx._pytree as fx_pytree
from torch.export import Dim, ExportedProgram, ShapesCollection
from torch.export.graph_signature import InputKind, OutputKind
from torch.fx.experimental.symbolic_shapes import optimization_hint
from torch.utils._pytree import tree_flatten, tree_map

from ..errors import CaptureError
from ..ir import Graph, Node, Value
from ..quiet import quiet_loggers, quiet_stderr
from .aten_table import lower_args
from .inputs import ExampleInputs, as_args_kwargs

__all__ = ["Captured", "capture", "dynamic_dims", "hint", "lower_exported", "resize_inputs",
           "is_symbolic", "second_size_inputs", "varying_dims"]

log = logging.getLogger(__name__)


@dataclass
class Captured:
    """An exported program, its IR, and the inputs it was traced with."""

    program: ExportedProgram
    graph: Graph
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    seconds: float
    # user input placeholder name -> {axis: symbol} for the dims that stayed symbolic
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)
    static_reason: str = ""  # why the capture is static, when the dynamic one failed
    # set when torch.export failed on the whole model and the graph was merged from exported
    # sub-module calls (frontends/fragments.py); ``program`` is then None
    fragments: Any = None


def varying_dims(t: torch.Tensor) -> tuple[int, ...]:
    """The dims worth asking to be dynamic: batch (0), and sequence (1) for token-like inputs
    (integer/bool tensors of rank 2: ids, masks; float tensors of rank 3: [batch, seq, features])."""
    if t.dim() == 0:
        return ()
    token_like = (t.dim() == 2 and not t.is_floating_point() and not t.is_complex()) or (
        t.dim() == 3 and t.is_floating_point())
    return (0, 1) if token_like else (0,)


def _auto_dims(t: torch.Tensor) -> dict[int, Any]:
    return {ax: Dim.AUTO for ax in varying_dims(t)}


def _dynamic_spec(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    shapes = ShapesCollection()
    seen: set[int] = set()
    for t in tree_flatten((args, kwargs))[0]:
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            dims = _auto_dims(t)
            if dims:
                shapes[t] = dims
    return shapes.dynamic_shapes(model, args, kwargs) if seen else None


def _export(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], dynamic: bool) -> ExportedProgram:
    with torch.no_grad(), quiet_stderr(__name__):
        if not dynamic:
            with _quiet_export_logs():
                return torch.export.export(model, args, kwargs, strict=False)
        spec = _dynamic_spec(model, args, kwargs)
        # a size-1 batch would be specialized (0/1 specialization); treat it as any other size
        with torch.fx.experimental._config.patch(backed_size_oblivious=True), _quiet_export_logs():
            return torch.export.export(model, args, kwargs, strict=False, dynamic_shapes=spec)


def capture(model: torch.nn.Module, example_inputs: ExampleInputs, dynamic: bool = True,
            fallback: bool = True) -> Captured:
    """Trace ``model`` with ``torch.export`` (non-strict) and lower it into the IR.

    ``dynamic``: ask for a symbolic batch (and sequence) dim first, falling back to a static
    capture (see the module docstring). ``fallback``: when the static capture fails too, capture
    the sub-module calls that export and merge them (:mod:`graphprune.frontends.fragments`)."""
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"expected a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = as_args_kwargs(example_inputs)
    t0 = time.perf_counter()
    program, static_reason = None, ""
    dynamic_error: BaseException | None = None
    if dynamic:
        try:
            program = _export(model, args, kwargs, dynamic=True)
        except Exception as exc:  # any failure: the static capture below decides
            dynamic_error = exc
            static_reason = f"dynamic capture failed: {type(exc).__name__}: {_first_line(exc)[:200]}"
            log.info("%s: %s; capturing with static shapes", type(model).__name__, static_reason)
    if program is None and fallback and dynamic_error is not None and "GuardOnDataDependentSymNode" in static_reason:
        # a guard on data (an unbacked size from nonzero/masking): static shapes fail the same way
        return _capture_fragments(model, args, kwargs, dynamic_error, t0)
    if program is None:
        try:
            program = _export(model, args, kwargs, dynamic=False)
        except Exception as exc:  # torch raises many types here; all mean "cannot capture"
            if fallback:
                return _capture_fragments(model, args, kwargs, exc, t0)
            raise CaptureError(
                f"torch.export could not capture {type(model).__name__}: {_first_line(exc)[:300]} -- "
                "wrap the model in a small nn.Module whose forward takes and returns tensors only "
                "(no data-dependent Python control flow), or export it to ONNX and prune the .onnx file"
            ) from exc
    graph = lower_exported(program, name=type(model).__name__, aliases=shared_tensor_aliases(model))
    dims = dynamic_dims(program)
    if dynamic and not dims and not static_reason:
        static_reason = "the model specializes every batch/sequence dim"
    return Captured(program, graph, args, kwargs, time.perf_counter() - t0, dims, static_reason)


def _capture_fragments(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], exc: BaseException,
                       t0: float) -> Captured:
    from .fragments import capture_fragments

    reason = f"{type(exc).__name__}: {_first_line(exc)[:200]}"
    log.info("torch.export could not capture %s whole (%s); capturing its sub-modules", type(model).__name__, reason)
    graph, info = capture_fragments(model, args, kwargs, reason, shared_tensor_aliases(model))
    return Captured(None, graph, args, kwargs, time.perf_counter() - t0,  # type: ignore[arg-type]
                    static_reason="captured as fragments", fragments=info)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _quiet_export_logs() -> contextlib.AbstractContextManager[None]:
    """torch.export warns at WARNING for every dim it specializes; that is expected here."""
    return quiet_loggers("torch._export", "torch.export", "torch.fx.experimental.symbolic_shapes")


def is_symbolic(size: Any) -> bool:
    """A SymInt that depends on an input size (not one specialized to a number)."""
    return isinstance(size, torch.SymInt) and not size.node.expr.is_number


def hint(size: Any) -> int:
    """The example value of a (possibly symbolic) size, without adding a guard."""
    if isinstance(size, torch.SymInt):
        return int(optimization_hint(size))
    return int(size)


def dynamic_dims(program: ExportedProgram) -> dict[str, dict[int, str]]:
    """User input placeholder -> {axis: symbol} for every input dim that is symbolic."""
    users = {s.arg.name for s in program.graph_signature.input_specs
             if s.kind == InputKind.USER_INPUT and hasattr(s.arg, "name")}
    out: dict[str, dict[int, str]] = {}
    for node in program.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        if node.name in users and isinstance(val, torch.Tensor):
            sym = {ax: str(s) for ax, s in enumerate(val.shape) if is_symbolic(s)}
            if sym:
                out[node.name] = sym
    return out


def second_size(n: int) -> int:
    """Another size for a symbolic dim of example size ``n``: smaller where it can be (a sequence
    may not grow past a position table), else larger."""
    return n - 1 if n >= 3 else n + 1


def second_size_inputs(program: ExportedProgram, example_inputs: ExampleInputs) -> tuple[ExampleInputs, dict[str, int]]:
    """The example inputs resized along every symbolic dim of ``program`` (each symbol to
    :func:`second_size` of its example value, consistently across inputs): cut to the first
    positions, or grown by repeating the first position (token ids stay valid). Returns the
    inputs and {symbol: new size}."""
    users = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    return resize_inputs(example_inputs, program.call_spec.in_spec, users, dynamic_dims(program))


def resize_inputs(
    example_inputs: ExampleInputs, in_spec: Any, names: list[str], dims: dict[str, dict[int, str]],
    sizes: dict[str, int] | None = None,
) -> tuple[ExampleInputs, dict[str, int]]:
    """:func:`second_size_inputs` for inputs flattened by ``in_spec`` into placeholders ``names``
    with symbolic ``dims``; ``sizes`` fixes the new size of some symbols."""
    args, kwargs = as_args_kwargs(example_inputs)
    flat = fx_pytree.tree_flatten_spec((args, kwargs), in_spec)
    sizes = dict(sizes or {})
    swap: dict[int, torch.Tensor] = {}
    for name, t in zip(names, flat, strict=False):
        if not isinstance(t, torch.Tensor) or name not in dims:
            continue
        new = t
        for ax, sym in dims[name].items():
            n = sizes.setdefault(sym, second_size(int(t.shape[ax])))
            while new.shape[ax] < n:
                new = torch.cat([new, new.narrow(ax, 0, 1)], dim=ax)
            new = new.narrow(ax, 0, n)
        swap[id(t)] = new.contiguous()
    resized = tree_map(lambda a: swap.get(id(a), a) if isinstance(a, torch.Tensor) else a, example_inputs)
    return resized, sizes


def _tensor_meta(node: torch.fx.Node) -> list[torch.Tensor | None]:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return [val]
    if isinstance(val, (list, tuple)):
        return [v if isinstance(v, torch.Tensor) else None for v in val]
    return []


def _shape(t: torch.Tensor, where: str) -> tuple[int, ...]:
    try:
        return tuple(hint(s) for s in t.shape)
    except (TypeError, RuntimeError, AssertionError) as exc:
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
    namespace = _namespace(packet)
    key = aten_name if namespace == "aten" else f"{namespace}.{aten_name}"  # mylib::linear is not aten's
    first = node.args[0] if node.args else None
    first_meta = _tensor_meta(first) if isinstance(first, torch.fx.Node) else []
    in_shape = _shape(first_meta[0], node.name) if first_meta and first_meta[0] is not None else ()
    lowered = None
    try:
        lowered = lower_args(key, _at_hints(node.args), _at_hints(dict(node.kwargs)), in_shape)
    except (TypeError, ValueError, IndexError) as exc:
        log.debug("lowering %s failed (%s); treating it as a barrier", node.name, exc)
    if lowered is None:
        op = f"{namespace}.{aten_name}"  # a custom op says its own library (mylib.custom_op), not aten
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


def _namespace(packet: Any) -> str:
    """The op library of an overload packet: ``aten`` for ATen, ``mylib`` for ``torch.ops.mylib.op``."""
    qualified = getattr(packet, "_qualified_op_name", "")
    return qualified.split("::", 1)[0] if "::" in qualified else "aten"


def _at_hints(a: Any) -> Any:
    """Integer arguments computed from symbolic sizes (fx nodes whose value is a SymInt) replaced
    by their example values, so a dynamic capture lowers exactly like a static one."""
    if isinstance(a, torch.fx.Node):
        val = a.meta.get("val")
        return hint(val) if isinstance(val, (torch.SymInt, int)) and not isinstance(val, bool) else a
    if isinstance(a, (list, tuple)):
        return type(a)(_at_hints(x) for x in a)
    if isinstance(a, dict):
        return {k: _at_hints(v) for k, v in a.items()}
    return a


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
