"""onnxruntime profiles, read back to the nodes of the ONNX file that was run.

- :func:`node_times`: from the events of an onnxruntime profile (``enable_profiling``), the
  seconds per run of every executed node: events with ``"cat": "Node"`` whose name ends in
  ``_kernel_time`` (``dur`` in microseconds, ``args.op_name`` the kernel's op) are assigned to the
  ``model_run`` event whose interval holds them, summed per node within a run, and the first
  ``warmup`` runs are dropped (the ``model_run`` durations are returned too).
- :func:`anchor`: which node of the *source* ONNX graph an executed (optimized) node stands for.
  onnxruntime keeps the names of nodes it leaves alone; fused nodes keep the name of the node they
  replace or take the name of the tensor they produce plus ``_nchwc`` (NCHWc layout), e.g. the
  Conv+Relu of ``/conv1/Conv`` -> ``/relu/Relu`` runs as ``/relu/Relu_output_0_nchwc``. The rules,
  in order: (1) the name is a source node's name; (2) a produced tensor (the name with ``_nchwc``
  stripped, then the optimized node's outputs) is a source tensor: its producer, or the nearest
  node up its first-input chain whose op the kernel's op ends with (``Conv`` for ``FusedConv``);
  (3) the longest prefix of the name, cut at ``/`` or ``_``, that is a source node's name (fusions
  append to the name: ``/fc1/MatMul/MatMulAddFusion``, ``/attn/Reshape_5_new_reshape``), again
  walked up to the kernel's op; (4) a source initializer it reads is read by exactly one source
  node of the kernel's op. Layout reorders (``ReorderInput``/``ReorderOutput``) stand for no
  source node. :func:`place` then places generated helpers by their neighbours.
- :func:`module_path`: the module path (``layer2.0.downsample.0``) of a node exported by
  ``torch.onnx.export``: the TorchScript exporter names nodes ``/layer2/layer2.0/downsample/
  downsample.0/Conv`` (a repeated call of a module gets ``_1``, ``_2``: ``relu_1``), the dynamo
  exporter records ``pkg.torch.onnx.name_scopes``; segments are joined back into a path and
  checked against the model's module names.
"""

from __future__ import annotations

import ast
import bisect
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LAYOUT_OPS", "OnnxIndex", "anchor", "module_path", "node_times", "place"]

#: kernels onnxruntime inserts to change layout; their time belongs to no source node
LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput"})

_KERNEL = "_kernel_time"
_WALK = 8  # steps up a first-input chain when looking for the fused op


def node_times(events: Iterable[Mapping[str, Any]], warmup: int = 0,
               ) -> tuple[dict[str, float], dict[str, str], list[float]]:
    """(node name -> median seconds per run, node name -> kernel op, seconds of each run used) from
    profile events."""
    runs: list[tuple[float, float]] = []
    kernels: list[tuple[float, str, float, str]] = []
    for e in events:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            runs.append((float(e["ts"]), float(e["ts"]) + float(e["dur"])))
        elif e.get("cat") == "Node" and str(e.get("name", "")).endswith(_KERNEL):
            op = str((e.get("args") or {}).get("op_name", ""))
            kernels.append((float(e["ts"]), str(e["name"])[: -len(_KERNEL)], float(e["dur"]) * 1e-6, op))
    runs.sort()
    starts = [s for s, _ in runs]
    per_run: list[dict[str, float]] = [defaultdict(float) for _ in runs]
    ops: dict[str, str] = {}
    for ts, name, dur, op in kernels:
        i = bisect.bisect_right(starts, ts) - 1
        if i < 0 or ts > runs[i][1]:
            continue  # not inside a run
        per_run[i][name] += dur
        ops.setdefault(name, op)
    used = per_run[warmup:]
    times = {name: float(np.median([r.get(name, 0.0) for r in used])) for name in ops} if used else {}
    return times, ops, [(end - start) * 1e-6 for start, end in runs[warmup:]]


@dataclass
class OnnxIndex:
    """Lookups over a graph's nodes: by name, the producer of each tensor, the readers of each
    initializer."""

    ops: dict[str, str] = field(default_factory=dict)  # node name -> op type
    inputs: dict[str, list[str]] = field(default_factory=dict)  # node name -> input tensors
    producer: dict[str, str] = field(default_factory=dict)  # tensor -> node name
    readers: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # initializer -> node names

    @classmethod
    def of(cls, graph: Any) -> OnnxIndex:
        """Index an ``onnx.GraphProto`` whose node names are unique and non-empty."""
        idx = cls()
        inits = {t.name for t in graph.initializer}
        for n in graph.node:
            idx.ops[n.name] = n.op_type
            idx.inputs[n.name] = [i for i in n.input if i and i not in inits]
            for o in n.output:
                if o:
                    idx.producer[o] = n.name
            for i in n.input:
                if i in inits:
                    idx.readers[i].append(n.name)
        return idx


def _fused_from(index: OnnxIndex, start: str, op: str) -> str:
    """``start``, or the nearest node up its first-input chain whose op type ``op`` ends with."""
    cur: str | None = start
    for _ in range(_WALK):
        if cur is None:
            break
        if op.endswith(index.ops[cur]):
            return cur
        ins = index.inputs.get(cur) or []
        cur = index.producer.get(ins[0]) if ins else None
    return start


def anchor(name: str, op: str, source: OnnxIndex, inputs: Sequence[str] = (), outputs: Sequence[str] = ()) -> str | None:
    """The source node an executed node ``name`` (kernel op ``op``; ``inputs``/``outputs`` from the
    optimized model when known) stands for, or None (layout reorders, nodes it cannot place)."""
    if op in LAYOUT_OPS:
        return None
    if name in source.ops:
        return name
    tensors = [name]
    while tensors[-1].endswith("_nchwc"):
        tensors.append(tensors[-1][: -len("_nchwc")])
    for t in [*tensors[1:], *outputs]:
        if t in source.producer:
            return _fused_from(source, source.producer[t], op)
    for cut in sorted((i for i, c in enumerate(name) if c in "/_"), reverse=True):
        if name[:cut] in source.ops:
            return _fused_from(source, name[:cut], op)
    for i in inputs:
        readers = [r for r in source.readers.get(i, ()) if op.endswith(source.ops[r])]
        if len(readers) == 1:
            return readers[0]
    return None


def place(ops: Mapping[str, str], io: Mapping[str, tuple[Sequence[str], Sequence[str]]], source: OnnxIndex,
          ) -> dict[str, str | None]:
    """:func:`anchor` for every executed node (``ops``: name -> kernel op; ``io``: the optimized
    model's name -> (inputs, outputs), may be empty), then helpers onnxruntime generates around a
    fused node (the Reshapes around a MatMulAddFusion Gemm) take the place of the nodes they feed,
    or else of the nodes that feed them, when those are all placed on one source node."""
    placed = {n: anchor(n, op, source, *io.get(n, ((), ()))) for n, op in ops.items()}
    producer = {t: n for n, (_, outs) in io.items() for t in outs if n in placed}
    users: dict[str, list[str]] = defaultdict(list)
    for n, (ins, _) in io.items():
        if n in placed:
            for t in ins:
                users[t].append(n)
    changed = True
    while changed:
        changed = False
        for n, where in placed.items():
            if where is not None or ops[n] in LAYOUT_OPS or n not in io:
                continue
            ins, outs = io[n]
            for near in ({placed[u] for t in outs for u in users.get(t, ())},
                         {placed[producer[t]] for t in ins if t in producer}):
                if len(near) == 1 and None not in near:
                    placed[n] = near.pop()
                    changed = True
                    break
    return placed


_REPEAT = re.compile(r"_\d+$")


def _step(path: str, prev: str, seg: str, modules: set[str]) -> str | None:
    """``path`` extended by one exporter scope segment, if that names a module. A segment is a
    child's attribute name (``conv1``), or for a container's child the parent's segment, a dot and
    the index (``layer1.0`` inside ``layer1``); a repeated call adds ``_N`` (``relu_1``)."""
    local = seg[len(prev) + 1 :] if prev and seg.startswith(prev + ".") else seg
    for cand in (local, _REPEAT.sub("", local)):
        full = f"{path}.{cand}" if path else cand
        if full in modules:
            return full
    return None


def _segments(node: Any) -> list[str] | None:
    meta = {p.key: p.value for p in getattr(node, "metadata_props", ())}
    scopes = meta.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            got = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            got = None
        if isinstance(got, list) and len(got) >= 2:
            return [str(s) for s in got[1:-1] if s]
    if node.name.startswith("/"):
        return [s for s in node.name.split("/")[1:-1] if s]
    return None


def module_path(node: Any, modules: set[str]) -> str | None:
    """The module path (``""`` the top level) a torch-exported ONNX node ran in, or None when its
    name and metadata carry no scope; segments past the deepest one that names a module of
    ``modules`` are dropped."""
    segs = _segments(node)
    if segs is None:
        return None
    path, prev = "", ""
    for seg in segs:
        nxt = _step(path, prev, seg, modules)
        if nxt is None:
            break
        path, prev = nxt, seg
    return path
