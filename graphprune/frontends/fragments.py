"""Capture fallback for models ``torch.export`` cannot capture whole (detectors: NMS, data-dependent glue).

The model runs once eagerly on the example inputs while forward hooks record every module call
(its module, arguments and outputs, nested into a *call tree*) and a ``TorchFunctionMode`` records
every torch function called (its tensor arguments and the innermost module call it ran in). Then,
from the root down, each call is exported on its own recorded arguments
(``torch.export.export(module, args, kwargs, strict=False)``); a call that exports is a *fragment*
and its sub-tree is covered; a call that does not is split into its child calls. Calls of modules
without parameters are tried only as leaves (an activation module between two fragments), since a
parameter-free sub-tree has nothing to prune.

The fragments are lowered with :func:`lower_exported` and merged into ONE IR graph:

- a fragment input that IS (by tensor identity) an output of an earlier fragment is linked to it,
  so channels couple across fragments exactly as inside one program (backbone -> neck -> head);
- every other fragment input is a graph input (pinned): it was computed by glue;
- a fragment output read by *glue* (a torch function that ran outside every fragment: decoding,
  ``nonzero``, ``topk``, NMS, ``cat`` of head outputs), or returned by the model, or read by no
  fragment, is a graph output (pinned), and each glue op that read it becomes an IR node
  ``glue.<function>`` with no rule: a barrier named in the report. So the class-logit and
  box-regression head outputs keep their shapes without being listed;
- weights shared by several calls (one module called twice) are one IR value.

Reading a tensor's metadata in glue (``.shape``, ``.size()``, ``.dim()``, dtype, device) does
not pin it: glue that sizes grids from feature maps reads spatial dims, which pruning does not
change; glue that reads a channel count and computes with it would differ from the masked
original, which the final-output oracle catches.

There is no single exported program, so the result is rewritten on the module route only (the
user's module copy sliced in place, same classes) and data-aware criteria (which run the exported
program) are not available: :class:`FragmentCapture` carries what verification needs
(the fragment module paths and which of their outputs are pinned) to check the last tensors before
the barriers against the masked original, besides the final outputs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx._pytree as fx_pytree
from torch import nn
from torch.export.graph_signature import InputKind, OutputKind
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..errors import CaptureError
from ..ir import Graph, Node, Value
from ..quiet import quiet_loggers, quiet_stderr

__all__ = ["Call", "Fragment", "FragmentCapture", "capture_fragments", "check_pre_barrier", "fragment_outputs",
           "record_calls"]

log = logging.getLogger(__name__)

# tensor metadata reads: they do not make glue depend on channel values (module docstring)
_METADATA = frozenset({
    "size", "dim", "numel", "shape", "__get__", "__len__", "ndim", "dtype", "device", "is_floating_point",
    "is_complex", "element_size", "stride", "is_contiguous", "requires_grad", "layout", "get_device",
    "storage_offset", "__format__", "__repr__", "__hash__", "data_ptr", "is_sparse", "is_quantized",
    "_is_view", "is_cuda", "is_meta", "__iter__", "__bool__", "nelement", "type", "is_nested",
})


@dataclass
class Call:
    """One recorded module call: ``path`` (module name in the model), args/kwargs/output as
    passed (the tensor objects themselves), its position in the call sequence, and children."""

    index: int
    path: str
    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    start: int
    end: int = -1
    output: Any = None
    parent: int = -1
    children: list[int] = field(default_factory=list)
    has_params: bool = False


@dataclass
class GlueOp:
    """A torch function that ran in the Python code of a module call (``call``)."""

    seq: int
    name: str
    call: int
    tensor_ids: tuple[int, ...]


@dataclass
class Recording:
    calls: list[Call]
    ops: list[GlueOp]
    output: Any
    keep: list[Any]  # every tensor seen, held so ids stay unique while the recording lives


@dataclass
class Fragment:
    """A call captured by ``torch.export``: its module path, call number and program."""

    path: str
    call: int
    program: Any
    prefix: str  # IR name prefix (``f3.``)
    occurrence: int = 0  # this is the module's n-th call in a forward
    outputs_pinned: list[bool] = field(default_factory=list)  # per flattened output tensor
    # per flattened input tensor: the index of the earlier fragment it is an output of (None: glue made it)
    inputs_from: list[int | None] = field(default_factory=list)

    @property
    def inputs_linked(self) -> list[bool]:
        return [k is not None for k in self.inputs_from]


@dataclass
class FragmentCapture:
    """What the fallback captured: fragments, the glue ops that read their outputs (barriers),
    why the whole-model export failed, and the fraction of calls' FLOPs it covers."""

    fragments: list[Fragment]
    reason: str
    failed: list[str]  # module paths whose export failed (split into children)
    glue: dict[str, int]  # glue function name -> number of calls reading a fragment output
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"method": "fragments", "reason": self.reason,
                "fragments": [f.path or "(root)" for f in self.fragments],
                "not_captured": self.failed, "glue_barriers": dict(self.glue), "seconds": round(self.seconds, 3)}


def _tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


class _OpRecorder(TorchFunctionMode):
    def __init__(self, rec: Recording, stack: list[int], counter: list[int]) -> None:
        super().__init__()
        self.rec, self.stack, self.counter = rec, stack, counter

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name not in _METADATA:
            self.counter[0] += 1
            ids = tuple(id(t) for t in _tensors((args, kwargs)))
            if ids:
                self.rec.ops.append(GlueOp(self.counter[0], name, self.stack[-1] if self.stack else -1, ids))
        return func(*args, **kwargs)


def record_calls(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Recording:
    """Run ``model`` once (no grad) recording the call tree and the torch functions it ran.
    Hooks are removed afterwards; a forward that raises raises :class:`CaptureError` with the
    model's own message in one line."""
    rec = Recording([], [], None, [])
    stack: list[int] = []
    counter = [0]
    paths: dict[int, str] = {}
    for p, m in model.named_modules():
        paths.setdefault(id(m), p)

    def pre(module: nn.Module, a: tuple[Any, ...], kw: dict[str, Any]) -> None:
        counter[0] += 1
        call = Call(len(rec.calls), paths.get(id(module), "?"), module, a, dict(kw), counter[0],
                    parent=stack[-1] if stack else -1,
                    has_params=any(True for _ in module.parameters()))
        if stack:
            rec.calls[stack[-1]].children.append(call.index)
        rec.calls.append(call)
        rec.keep.append((a, kw))
        stack.append(call.index)

    def post(module: nn.Module, a: tuple[Any, ...], kw: dict[str, Any], out: Any) -> None:
        counter[0] += 1
        if stack:
            call = rec.calls[stack.pop()]
            call.end, call.output = counter[0], out
            rec.keep.append(out)

    handles = []
    try:
        for m in {id(m): m for m in model.modules()}.values():
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True, always_call=True))
        with torch.no_grad(), _OpRecorder(rec, stack, counter):
            rec.output = model(*args, **kwargs)
    except Exception as exc:  # the model's own error on these inputs: say it in one line
        name = type(model).__name__
        raise CaptureError(f"could not capture {name}: {_first_line(exc)[:300]} ({name} raised {type(exc).__name__} "
                           "on the example inputs; pass inputs its forward accepts)") from exc
    finally:
        for h in handles:
            h.remove()
    return rec


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _try_export(call: Call) -> tuple[Any, str]:
    try:
        with torch.no_grad(), quiet_stderr(), quiet_loggers("torch._export", "torch.export", "torch.fx.experimental.symbolic_shapes"):
            return torch.export.export(call.module, call.args, call.kwargs, strict=False), ""
    except Exception as exc:  # any failure: split the call into its children
        return None, _first_line(exc)[:200]


def _select(rec: Recording) -> tuple[list[tuple[Call, Any]], list[str]]:
    """Top-down: export a call, else split it into its children (root excluded: it failed)."""
    chosen: list[tuple[Call, Any]] = []
    failed: list[str] = []

    def visit(i: int, root: bool) -> None:
        call = rec.calls[i]
        if not root and (call.has_params or not call.children):
            program, why = _try_export(call)
            if program is not None:
                chosen.append((call, program))
                return
            if call.has_params:
                failed.append(f"{call.path or '(root)'}: {why}")
                log.info("fragment capture: %s not captured (%s)", call.path, why)
        for c in call.children:
            visit(c, False)

    if rec.calls:
        visit(0, True)
    return chosen, failed


def _inside(calls: list[Call], i: int, covered: set[int]) -> bool:
    while i >= 0:
        if i in covered:
            return True
        i = calls[i].parent
    return False


def fragment_outputs(program: Any, output: Any) -> list[tuple[torch.Tensor, str | None]] | None:
    """Pair the flattened outputs of a call with the fx node names of the program's user outputs
    (``name.k`` for the k-th tensor of a multi-output node); None when they do not pair up."""
    leaves = tree_flatten(output)[0]
    out_node = next(n for n in program.graph.nodes if n.op == "output")
    flat = out_node.args[0] if isinstance(out_node.args[0], (list, tuple)) else [out_node.args[0]]
    user = [a for s, a in zip(program.graph_signature.output_specs, flat, strict=False)
            if s.kind == OutputKind.USER_OUTPUT]
    if len(user) != len(leaves):
        return None
    pairs: list[tuple[torch.Tensor, str | None]] = []
    for leaf, arg in zip(leaves, user, strict=True):
        if not isinstance(leaf, torch.Tensor):
            continue
        pairs.append((leaf, _value_name(arg)))
    return pairs


def _value_name(arg: Any) -> str | None:
    import operator

    if not isinstance(arg, torch.fx.Node):
        return None
    if arg.op == "call_function" and arg.target is operator.getitem:
        src, idx = arg.args[0], int(arg.args[1])  # type: ignore[arg-type]
        return src.name if idx == 0 else f"{src.name}.{idx}"  # type: ignore[union-attr]
    return arg.name


def capture_fragments(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], reason: str,
                      aliases: dict[str, str]) -> tuple[Graph, FragmentCapture]:
    """Record, export fragments, merge them into one IR graph (module docstring). Raises
    :class:`CaptureError` in one line when the model fails on the inputs or nothing is captured."""
    from .torch_export import lower_exported

    t0 = time.perf_counter()
    name = type(model).__name__
    rec = record_calls(model, args, kwargs)
    chosen, failed = _select(rec)
    if not any(c.has_params for c, _ in chosen):
        raise CaptureError(
            f"torch.export could not capture {name} ({reason}) and no sub-module with parameters could be "
            "captured either -- move the data-dependent code out of forward() into a wrapper, or export the "
            "model to ONNX and prune the .onnx file")
    chosen.sort(key=lambda cp: cp[0].start)
    covered = {c.index for c, _ in chosen}
    model_out = {id(t) for t in _tensors(rec.output)}
    # glue: ops whose innermost enclosing call is in no fragment
    glue_reads: dict[int, list[GlueOp]] = {}
    for op in rec.ops:
        if not _inside(rec.calls, op.call, covered):
            for tid in op.tensor_ids:
                glue_reads.setdefault(tid, []).append(op)

    graph = Graph(name=name)
    produced: dict[int, tuple[Value, int, int]] = {}  # tensor id -> (IR value, producer call end, fragment)
    by_source: dict[str, Value] = {}
    read_by_fragment: set[int] = set()
    fragments: list[Fragment] = []
    frag_out_values: list[tuple[Fragment, list[tuple[torch.Tensor, Value | None]]]] = []
    for k, (call, program) in enumerate(chosen):
        prefix = f"f{k}."
        nth = sum(1 for c in rec.calls[: call.index] if c.module is call.module)
        frag = Fragment(call.path, call.index, program, prefix, nth)
        sub = lower_exported(program, name=call.path or name)
        vmap, linked = _merge(graph, sub, call, program, prefix, aliases, by_source, produced)
        read_by_fragment |= set(linked)
        frag.inputs_from = [linked.get(id(t)) for t in _tensors((call.args, call.kwargs))]
        pairs = fragment_outputs(program, call.output)
        outs: list[tuple[torch.Tensor, Value | None]] = []
        for t, vname in pairs or [(t, None) for t in _tensors(call.output)]:
            v = vmap.get(vname) if vname is not None else None
            outs.append((t, v))
            if v is not None and id(t) not in produced:
                produced[id(t)] = (v, call.end, k)
        fragments.append(frag)
        frag_out_values.append((frag, outs))
    glue_count: dict[str, int] = {}
    for frag, outs in frag_out_values:
        call = rec.calls[frag.call]
        for t, v in outs:
            reads = [op for op in glue_reads.get(id(t), []) if op.seq > call.end]
            pinned = v is None or bool(reads) or id(t) in model_out or id(t) not in read_by_fragment
            frag.outputs_pinned.append(pinned)
            if v is None or not pinned:
                continue
            if v not in graph.outputs:
                graph.outputs.append(v)
            for op in reads:
                glue_count[op.name] = glue_count.get(op.name, 0) + 1
                where = rec.calls[op.call].path if op.call >= 0 else ""
                node_name = f"glue{op.seq}"
                existing = next((n for n in graph.nodes if n.name == node_name), None)
                if existing is not None:
                    existing.inputs.append(v)
                    v.users.append(existing)
                else:
                    graph.add_node(Node(node_name, f"glue.{op.name}", [v], [], {}, target=f"glue.{op.name}",
                                        scope=where))
    info = FragmentCapture(fragments, reason, failed, glue_count, time.perf_counter() - t0)
    log.info("%s captured as %d fragments (%s); glue barriers %s", name, len(fragments),
             ", ".join(f.path for f in fragments), glue_count)
    return graph, info


def _merge(graph: Graph, sub: Graph, call: Call, program: Any, prefix: str, aliases: dict[str, str],
           by_source: dict[str, Value], produced: dict[int, tuple[Value, int, int]]) -> tuple[dict[str, Value], dict[int, int]]:
    """Copy ``sub`` into ``graph`` (names prefixed, weight sources made model-relative and
    deduplicated, inputs linked to earlier fragments' outputs by tensor identity); returns the
    map from ``sub``'s value names to merged values and {id of a linked input tensor: its fragment}."""
    users = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    flat = fx_pytree.tree_flatten_spec((call.args, call.kwargs), program.call_spec.in_spec)
    feed = {n: t for n, t in zip(users, flat, strict=False) if isinstance(t, torch.Tensor)}
    mod = f"{call.path}." if call.path else ""
    vmap: dict[str, Value] = {}
    linked: dict[int, int] = {}
    for v in sub.values:
        if v.is_weight and v.source is not None:
            src = aliases.get(mod + v.source, mod + v.source)
            if src not in by_source:
                by_source[src] = graph.add_value(Value(prefix + v.name, v.shape, v.dtype, v.kind, src))
            vmap[v.name] = by_source[src]
        elif v.kind == "input":
            t = feed.get(v.name)
            hit = produced.get(id(t)) if t is not None else None
            if hit is not None and hit[1] < call.start and hit[0].shape == v.shape:
                linked[id(t)] = hit[2]
                vmap[v.name] = hit[0]
            else:
                nv = graph.add_value(Value(prefix + v.name, v.shape, v.dtype, "input"))
                graph.inputs.append(nv)
                vmap[v.name] = nv
        else:
            src = (mod + v.source) if v.source is not None else None
            vmap[v.name] = graph.add_value(Value(prefix + v.name, v.shape, v.dtype, v.kind, src))
    for n in sub.nodes:
        scope = ".".join(p for p in (call.path, n.scope) if p)
        graph.add_node(Node(prefix + n.name, n.op, [vmap[i.name] if i is not None else None for i in n.inputs],
                            [vmap[o.name] for o in n.outputs], n.attrs, n.target, scope))
    return vmap, linked


def _fragment_outputs(model: nn.Module, info: FragmentCapture,
                      inputs: Any) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Run ``model`` on ``inputs`` and return, per fragment, the input tensors glue computed (not
    linked to an earlier fragment) and its pinned output tensors."""
    seen: dict[str, list[Any]] = {}
    handles = []

    def hook(path: str) -> Any:
        def fn(module: nn.Module, a: Any, kw: Any, out: Any) -> None:
            seen.setdefault(path, []).append(((a, kw), out))
        return fn

    try:
        for path in {f.path for f in info.fragments}:
            handles.append(model.get_submodule(path).register_forward_hook(hook(path), with_kwargs=True))
        args, kwargs = inputs if isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[1], dict) \
            else (inputs, {})
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    result = []
    for f in info.fragments:
        calls = seen.get(f.path, [])
        if f.occurrence >= len(calls):
            result.append(([], []))
            continue
        ins, out = calls[f.occurrence]
        glue_in = [t for t, lk in zip(_tensors(ins), f.inputs_linked, strict=False) if not lk]
        result.append((glue_in, [t for t, pin in zip(_tensors(out), f.outputs_pinned, strict=False) if pin]))
    return result


def _max_diff(ref: list[torch.Tensor], got: list[torch.Tensor]) -> tuple[float, float] | None:
    """(max |a - b|, max |a|) over float tensors; None when counts or shapes differ."""
    if len(ref) != len(got) or any(r.shape != g.shape for r, g in zip(ref, got, strict=True)):
        return None
    worst = scale = 0.0
    for r, g in zip(ref, got, strict=True):
        if r.is_floating_point() and r.numel():
            worst = max(worst, float((r.double() - g.double()).abs().max()))
            scale = max(scale, float(r.double().abs().max()))
        elif not r.is_floating_point() and not torch.equal(r, g):
            return None
    return worst, scale


def check_pre_barrier(masked: nn.Module, pruned: nn.Module, info: FragmentCapture, args: tuple[Any, ...],
                      kwargs: dict[str, Any], rtol: float = 1e-4) -> dict[str, Any]:
    """The oracle on the last tensors before the barriers: every pinned fragment output (head
    outputs before decoding/NMS) of ``pruned`` against the masked original, same shapes and
    ``max|a - b| <= rtol * max|a|`` (relative to the outputs' own scale, however small). A
    fragment whose glue-computed inputs differ between the two runs (Faster R-CNN's RoI heads read
    proposals chosen by top-k and NMS from the RPN outputs: equal up to float rounding, the
    selection can differ) is listed under ``skipped`` instead, and so is every fragment reading
    a skipped one's outputs; the fragments before it (backbone, RPN head) are compared. Post-NMS outputs of a randomly initialized detector
    are often empty or few, so this is the check that sees the pruned channels' arithmetic."""
    ref = _fragment_outputs(masked, info, (args, kwargs))
    got = _fragment_outputs(pruned, info, (args, kwargs))
    worst, scale, n = 0.0, 0.0, 0
    worst_at = ""
    skipped: list[str] = []
    for f, (r_in, r_out), (g_in, g_out) in zip(info.fragments, ref, got, strict=True):
        same_in = _max_diff(r_in, g_in)
        after_skipped = any(k is not None and info.fragments[k].path in skipped for k in f.inputs_from)
        if same_in is None or same_in[0] > rtol * same_in[1] or after_skipped:
            # glue computed this fragment's inputs from earlier outputs (proposals after top-k/NMS):
            # float-level differences can select other boxes, so its outputs are not comparable
            skipped.append(f.path)
            continue
        d = _max_diff(r_out, g_out)
        if d is None:
            return {"ok": False, "tensors": n, "skipped": skipped,
                    "detail": f"fragment {f.path}: outputs {[tuple(t.shape) for t in g_out]}, expected "
                              f"{[tuple(t.shape) for t in r_out]}"}
        n += len(r_out)
        if d[0] > worst:
            worst_at = f.path
        worst, scale = max(worst, d[0]), max(scale, d[1])
    tol = rtol * scale  # relative: a random-init detector's head outputs can be ~1e-15
    return {"ok": worst <= tol, "tensors": n, "skipped": skipped, "max_abs_err": worst, "max_ref": scale,
            "tolerance": tol, "detail": "" if worst <= tol else f"max abs error {worst:.3g} > {tol:.3g} (fragment {worst_at})"}
