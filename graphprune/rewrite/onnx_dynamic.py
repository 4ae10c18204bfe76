"""Carry a pruning onto the ORIGINAL (unfolded, symbolic) ONNX graph, so symbolic dims stay symbolic.

Analysis and the edits of ``to_onnx.py`` run on the prepared model: bound to representative input
sizes and constant-folded, so every shape sub-graph there is a constant. This module applies the
same decisions to the original graph, whose names the prepared one keeps (folding keeps the
output names of the nodes it leaves; folded constants are named by the value they replace):

- Weights. Every use of a sliced (or, for the oracle, zeroed) constant of the prepared model is
  found by (consumer node, input index); the consumer in the original then reads the new array,
  whatever computed it there (an initializer, an Identity, a Transpose of one, a shared copy).
  When the original computes that tensor from the graph inputs (a position table sliced by the
  sequence length), the consumer instead reads a ``Gather`` of it on the kept indices (the oracle:
  a ``Mul`` by a 0/1 mask), so it keeps following the input size.
- Shape operands (Reshape/Expand shapes, Split sizes, Slice bounds, Resize sizes). The original
  operand is evaluated at two bindings of the symbolic dims (onnxruntime). An element equal at both
  follows no input dim: it becomes the prepared model's new value (a channel or head count), except
  Reshape's -1 and 0 and Expand's 1, which stay (they follow the pruned tensor). An element that
  differs follows an input dim and stays computed; it must not need a new value (else
  ``NotDynamic``). A mixed operand becomes ``Add(Mul(S, keep), new)`` at run time.
- Reshape/Expand nodes that folding removed as no-ops at the analysis size (a view to the shape
  the tensor already has) are unseen by the analysis; their shape operands are rewritten the same
  way, to the pruned shape of their input.
- Attributes (Conv ``group``, ``num_groups``, Split's ``split``) are copied from the edited node,
  and attributes it dropped (Split's ``num_outputs``) are dropped.

The result keeps the original's inputs and outputs with their ``dim_param``s. Everything it
cannot express raises ``NotDynamic``; the verifier then checks it at several sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import zip_longest
from typing import NamedTuple

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, helper, numpy_helper

from ..analysis.coupling import Coupling
from ..frontends.onnx import constant_values, node_names
from ..frontends.onnx_model import OnnxDynamic, graph_inputs, random_feeds
from ..ir import Graph
from .slicing import kept_indices, pruned_shape
from .to_onnx import NotDynamic, _drop_dead_nodes, _drop_unused_initializers

__all__ = ["masked_original", "refuse_static", "rewrite_original"]

Runtime = Callable[[str], str]  # value name in the original -> name of the value to read instead


class _Original:
    """A copy of the original model being edited: fresh names, new initializers and nodes."""

    def __init__(self, dyn: OnnxDynamic) -> None:
        self.model = ModelProto()
        self.model.CopyFrom(dyn.original)
        g = self.model.graph
        self.by_out0 = {n.output[0]: n for n in g.node if n.output}
        self.names = {t.name for t in g.initializer} | {i.name for i in g.input} | {o for n in g.node for o in n.output}
        self.depends = _input_dependent(self.model)
        self.counter = 0
        self.memo: dict[tuple[str, str], str] = {}

    def fresh(self, base: str) -> str:
        while True:
            self.counter += 1
            name = f"{base}__gp{self.counter}"
            if name not in self.names:
                self.names.add(name)
                return name

    def const(self, base: str, arr: np.ndarray) -> str:
        name = self.fresh(base)
        self.model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, inputs: Sequence[str], base: str, **attrs: object) -> str:
        out = self.fresh(base)
        self.model.graph.node.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def consumer(self, out0: str) -> NodeProto:
        node = self.by_out0.get(out0)
        if node is None:
            raise NotDynamic(f"node {out0!r} of the prepared model has no counterpart in the original graph")
        return node

    def finish(self) -> ModelProto:
        del self.model.graph.value_info[:]
        _drop_dead_nodes(self.model)
        _drop_unused_initializers(self.model)
        _topological(self.model)
        return self.model


def _input_dependent(model: ModelProto) -> set[str]:
    """Names of the values computed (transitively) from a graph input."""
    dep = {i.name for i in graph_inputs(model)}
    changed = True
    while changed:  # graphs are topologically sorted: one pass, a second to be safe with odd files
        changed = False
        for n in model.graph.node:
            if any(i in dep for i in n.input) and not all(o in dep for o in n.output if o):
                dep.update(o for o in n.output if o)
                changed = True
    return dep


def _uses(folded: ModelProto) -> dict[str, list[tuple[str, int]]]:
    """Value name -> (first output of the consuming node, input index), in the prepared model."""
    uses: dict[str, list[tuple[str, int]]] = {}
    for n in folded.graph.node:
        for i, name in enumerate(n.input):
            if name and n.output:
                uses.setdefault(name, []).append((n.output[0], i))
    return uses


def _redirect(o: _Original, uses: Mapping[str, list[tuple[str, int]]], name: str, arr: np.ndarray,
              runtime: Runtime) -> None:
    """Make every consumer (in the original) of prepared-model constant ``name`` read ``arr``, or
    ``runtime(source)`` where the original computes that input from the graph inputs."""
    for out0, idx in uses.get(name, []):
        node = o.consumer(out0)
        if idx >= len(node.input):
            raise NotDynamic(f"node {out0!r} has fewer inputs in the original graph than in the prepared one")
        src = node.input[idx]
        key = (name, src)
        if key not in o.memo:
            o.memo[key] = runtime(src) if src in o.depends else o.const(name, arr)
        node.input[idx] = o.memo[key]


def rewrite_original(dyn: OnnxDynamic, folded: ModelProto, edited: ModelProto, new_inits: Mapping[str, np.ndarray],
                     graph: Graph, coupling: Coupling, removed: np.ndarray) -> ModelProto:
    """The original graph with the prepared model's edits (``edited``, new constants ``new_inits``)
    carried over; see the module docstring."""
    o = _Original(dyn)
    uses = _uses(folded)
    consts = constant_values(folded)
    for k in kept_indices(coupling, removed):
        name = k.value.name
        if name not in consts:
            continue
        arr = consts[name]
        for ax, idx in k.axes.items():
            arr = np.take(arr, idx, axis=ax)

        def gather(src: str, k=k) -> str:  # noqa: ANN001 - bound loop variable
            for ax, idx in k.axes.items():
                src = o.node("Gather", [src, o.const(f"{k.value.name}_kept{ax}", np.asarray(idx, dtype=np.int64))],
                             k.value.name, axis=int(ax))
            return src

        _redirect(o, uses, name, arr, gather)
    _carry_node_edits(o, dyn, folded, edited, new_inits, graph, coupling, removed)
    return o.finish()


def _carry_node_edits(o: _Original, dyn: OnnxDynamic, folded: ModelProto, edited: ModelProto,
                      new_inits: Mapping[str, np.ndarray], graph: Graph, coupling: Coupling, removed: np.ndarray) -> None:
    ir_nodes = {n.name: n for n in graph.nodes}
    pending: list[tuple[NodeProto, int, str, np.ndarray, _Site]] = []
    for nname, a, b in zip(node_names(folded), folded.graph.node, edited.graph.node, strict=True):
        if a == b:
            continue
        node = o.consumer(a.output[0])
        old_attrs = {x.name: x for x in a.attribute}
        gone = set(old_attrs) - {x.name for x in b.attribute}  # Split's num_outputs, once sizes are given
        for x in [x for x in node.attribute if x.name in gone]:
            node.attribute.remove(x)
        for attr in b.attribute:
            if old_attrs.get(attr.name) != attr:
                for x in [x for x in node.attribute if x.name == attr.name]:
                    node.attribute.remove(x)
                node.attribute.append(attr)
        for idx, (x, y) in enumerate(zip_longest(a.input, b.input, fillvalue="")):
            if x != y and y in new_inits:
                src = node.input[idx] if idx < len(node.input) else ""
                ir = ir_nodes[nname]
                ends = (tuple(ir.output.shape), pruned_shape(coupling, ir.inputs[0], removed)) if ir.inputs[0] is not None else None
                pending.append((node, idx, src, new_inits[y], _Site(a.op_type, repr(nname), ends)))
    pending.extend(_folded_away(o, folded, graph, coupling, removed))
    known = constant_values(dyn.original)  # operands read in the unpruned original
    probe = sorted({src for _, _, src, _, _ in pending if src and src not in known})
    at = _evaluate(dyn.original, probe, [dyn.base_shapes, dyn.alt_shapes])
    for node, idx, src, new, site in pending:
        if not src:
            while len(node.input) <= idx:
                node.input.append("")
            node.input[idx] = o.const(f"{node.output[0]}_in{idx}", new)
            continue
        a1, a2 = (np.asarray(known[src]),) * 2 if src in known else (at[0][src], at[1][src])
        values, computed = _merge(site, idx, a1, a2, new)
        if not computed.any():
            node.input[idx] = o.const(src, values.astype(a1.dtype))
        elif not np.array_equal(values[~computed], a1[~computed]):
            keep = o.const(f"{src}_keep", computed.astype(a1.dtype))
            put = o.const(f"{src}_put", np.where(computed, 0, values).astype(a1.dtype))
            node.input[idx] = o.node("Add", [o.node("Mul", [src, keep], src), put], src)


class _Site(NamedTuple):
    """A node whose shape operand is rewritten: op type, name for messages, and (for Reshape and
    Expand) its output shape before pruning and its data input's shape after."""

    op: str
    name: str
    ends: tuple[tuple[int, ...], tuple[int, ...]] | None


def _folded_away(o: _Original, folded: ModelProto, graph: Graph, coupling: Coupling, removed: np.ndarray
                 ) -> list[tuple[NodeProto, int, str, np.ndarray, _Site]]:
    """Reshape/Expand nodes of the original that folding removed as no-ops at the analysis size
    (e.g. a view to (batch, seq, hidden) of a tensor of that shape): their shape operands carry the
    channel count too, and must follow the pruned input (output shape = input shape)."""
    kept = {o_ for n in folded.graph.node for o_ in n.output}
    out = []
    for n in o.model.graph.node:
        if n.op_type not in ("Reshape", "Expand") or len(n.input) < 2 or n.output[0] in kept:
            continue
        x = n.input[0]
        if x not in o.depends or not graph.has_value(x):
            continue
        v = graph.value(x)
        new = pruned_shape(coupling, v, removed)
        if tuple(new) != tuple(v.shape):
            site = _Site(n.op_type, repr(n.name or n.output[0]), (tuple(v.shape), tuple(new)))
            out.append((n, 1, n.input[1], np.asarray(new, dtype=np.int64), site))
    return out


def _merge(site: _Site, idx: int, a1: np.ndarray, a2: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(element values, mask of elements that stay computed) for shape operand ``idx`` of ``site``:
    ``a1``/``a2`` its original values at the two bindings, ``new`` the prepared model's new value."""
    op = site.op
    where = f"{op} {site.name} input {idx}"
    if a1.shape != a2.shape or a1.ndim > 1:
        raise NotDynamic(f"{where}: its shape operand changes length with the input size")
    a1, a2 = a1.reshape(-1), a2.reshape(-1)
    new = np.asarray(new).reshape(-1)
    computed = a1 != a2
    values = a1.copy()
    if op in ("Reshape", "Expand") and idx == 1 and site.ends is not None:
        old, pin = np.asarray(site.ends[0], dtype=np.int64), site.ends[1]
        off = len(new) - len(a1)
        if off < 0:
            raise NotDynamic(f"{where}: shape longer than its output")
        for j in range(len(a1)):
            i = off + j
            if computed[j]:
                if new[i] != old[i]:
                    raise NotDynamic(f"{where}: output dim {i} follows an input dim and a pruned channel count")
            elif op == "Reshape" and a1[j] == -1:
                continue
            elif op == "Reshape" and a1[j] == 0 and i < len(pin) and pin[i] == new[i]:
                continue
            elif op == "Expand" and a1[j] == 1:
                continue
            else:
                values[j] = new[i]
        return values, computed
    if len(new) != len(a1):
        if computed.any():
            raise NotDynamic(f"{where}: a new value of another length for an operand that follows the input size")
        return new.astype(a1.dtype), np.zeros(len(new), dtype=bool)
    for j in range(len(a1)):
        if computed[j] and new[j] != a1[j]:
            raise NotDynamic(f"{where}: element {j} follows an input dim and a pruned channel count")
        if not computed[j]:
            values[j] = new[j]
    return values, computed


def _evaluate(model: ModelProto, names: Sequence[str], bindings: Sequence[Mapping[str, tuple[int, ...]]]
              ) -> list[dict[str, np.ndarray]]:
    """The values of ``names`` in ``model`` run at each input binding (random inputs)."""
    if not names:
        return [{} for _ in bindings]
    import onnxruntime as ort

    probe = ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]  # only what the operands need runs (shape sub-graphs, not the whole model)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    _drop_dead_nodes(probe)
    _drop_unused_initializers(probe)
    out = []
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        order = [m.name for m in sess.get_outputs()]
        for shapes in bindings:
            vals = dict(zip(order, sess.run(None, random_feeds(model, shapes)), strict=True))
            out.append({n: np.asarray(vals[n]) for n in names})
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise NotDynamic(f"the original graph does not run in onnxruntime to read its shape sub-graphs ({first})") from exc
    return out


def masked_original(dyn: OnnxDynamic, folded: ModelProto, coupling: Coupling, removed: np.ndarray) -> ModelProto:
    """The oracle on the original graph: the reader-side slices of removed units zeroed (what
    ``verification_onnx.masked_onnx`` does on the prepared model), at any input size."""
    o = _Original(dyn)
    uses = _uses(folded)
    consts = constant_values(folded)
    gone: dict[str, list[tuple[int, np.ndarray]]] = {}
    for vi, ax in sorted(coupling.readers):
        v = coupling.graph.values[vi]
        kept = coupling.kept(v, ax, removed)
        if len(kept) != v.shape[ax] and v.name in consts:
            gone.setdefault(v.name, []).append((ax, np.setdiff1d(np.arange(v.shape[ax]), kept)))
    for name, axes in gone.items():
        arr = consts[name]
        # 1 on the axes not masked, so a tensor computed from the inputs broadcasts at any size
        mask = np.ones([arr.shape[ax] if ax in dict(axes) else 1 for ax in range(arr.ndim)], dtype=arr.dtype)
        for ax, idx in axes:
            index: list[object] = [slice(None)] * arr.ndim
            index[ax] = idx
            mask[tuple(index)] = 0  # type: ignore[index]

        def zero(src: str, name=name, mask=mask) -> str:  # noqa: ANN001 - bound loop variables
            return o.node("Mul", [src, o.const(f"{name}_mask", mask)], name)

        _redirect(o, uses, name, arr * mask, zero)
    return o.finish()


def _topological(model: ModelProto) -> None:
    """Order nodes so each comes after its inputs' producers (new nodes were appended at the end);
    the original order is kept otherwise. Names a node reads but nothing produces (graph inputs,
    initializers, outer-scope names) impose nothing."""
    g = model.graph
    nodes = list(g.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    done = [False] * len(nodes)
    order: list[NodeProto] = []
    for start in range(len(nodes)):
        stack = [(start, False)]
        while stack:
            k, expanded = stack.pop()
            if done[k]:
                continue
            if expanded:
                done[k] = True
                order.append(nodes[k])
                continue
            stack.append((k, True))
            stack.extend((producer[i], False) for i in reversed(nodes[k].input) if i in producer and not done[producer[i]])
    del g.node[:]
    g.node.extend(order)


def refuse_static(model: str, report: Mapping[str, object]) -> None:
    """Raise ``NotDynamic`` with one line: the symbolic dims could not be kept, and how to go on."""
    shapes = ", ".join(f"{k}={list(v)}" for k, v in report.get("input_shapes", {}).items())  # type: ignore[attr-defined]
    reason = " ".join(str(report["onnx_dynamic"].get("reason", "")).split())  # type: ignore[index]
    raise NotDynamic(
        f"{model}: the pruned ONNX model cannot keep its symbolic input dims ({reason}); nothing was written -- "
        f"pass --allow-static / allow_static=True to write it with the fixed input shapes {shapes}"
    )
