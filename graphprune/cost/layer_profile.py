"""Measured per-layer latency of a whole model, in context, next to the predicted one.

A *layer* is a module scope (``layer1.0.conv1``; ``(top level)`` for ops outside any submodule)
for PyTorch sources, and a node name for ONNX sources (the IR's node names are the file's). Per
layer ``L``:

    predicted(L) = a * sum_{n in L} t_n        (calibrated table model: scale a, offset left out)
    measured(L)  = median over runs r of sum_{k -> L} d_{k,r}

with ``d_{k,r}`` the time of measured unit ``k`` in run ``r`` of the whole model, after warm-up:

- onnxruntime: the model is exported as the latency code does (:func:`graphprune.export.save_model`)
  and run with the runtime's session options plus ``enable_profiling``; the units are executed
  kernels (:func:`.ort_nodes.node_times`), each placed on the source node it stands for
  (:func:`.ort_nodes.anchor`) and that node's module (:func:`.ort_nodes.module_path`). Kernels
  placed nowhere (layout reorders) form the ``(unattributed)`` row.
- torch: forward pre/post hooks on every module, ``time.perf_counter``; a unit is a module's self
  time (inclusive time minus its children's inclusive time). Leaf modules get a row each; a
  container's self time (functional ops in its forward, such as a residual add, plus Python and
  hook overhead) gets its own row when the IR has nodes in that scope, else goes to
  ``(unattributed)``.

``measured_total`` is the sum of the measured rows (for onnxruntime: the kernel total, which
leaves out the per-run session overhead), so the rows add up to it exactly; ``run_time`` is the
median of the same runs timed whole (``model_run`` events; the root module's inclusive time).
Nothing here is compared against a timing value: measurements are reported, never asserted.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import GraphpruneError, OptionError, SourceError
from ..frontends.onnx_model import ordered_feeds
from ..ir import Graph
from .latency import Calibration, LatencyModel, predict
from .ort_nodes import OnnxIndex, module_path, node_times, place
from .profile import example_feeds
from .runtimes import OrtRuntime, Runtime

__all__ = ["TOP", "UNATTRIBUTED", "LayerProfile", "LayerRow", "layer_profile"]

UNATTRIBUTED = "(unattributed)"
TOP = "(top level)"


@dataclass(frozen=True)
class LayerRow:
    layer: str
    op: str  # the layer's IR ops ("conv", "relu"; "+"-joined when several), else the kernels' ops
    predicted: float  # seconds, calibration scale applied
    measured: float  # seconds, median over runs
    units: int = 0  # measured units placed here: executed kernels (onnxruntime) or modules (torch)

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "op": self.op, "predicted_us": self.predicted * 1e6,
                "measured_us": self.measured * 1e6, "units": self.units}


@dataclass(frozen=True)
class LayerProfile:
    runtime: str
    threads: int
    runs: int
    rows: tuple[LayerRow, ...]
    predicted_total: float  # calibrated whole-model prediction (offset included)
    calibration: Calibration
    run_time: float  # median seconds of the profiled runs themselves (session.run / the root module)

    @property
    def measured_total(self) -> float:
        return sum(r.measured for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "threads": self.threads, "runs": self.runs,
                "predicted_total_us": self.predicted_total * 1e6, "measured_total_us": self.measured_total * 1e6,
                "measured_run_us": self.run_time * 1e6,
                "calibration": {"scale": self.calibration.scale, "offset_us": self.calibration.offset * 1e6},
                "layers": [r.to_json() for r in self.rows]}


def _label(scope: str) -> str:
    return scope or TOP


# ---------------------------------------------------------------- ONNX sources


def _named(model: Any) -> Any:
    """A copy whose node names are the IR's (unique, never empty: :func:`.frontends.onnx.node_names`)."""
    import onnx

    from ..frontends.onnx import node_names

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for n, name in zip(out.graph.node, node_names(model), strict=True):
        n.name = name
    return out


@dataclass
class _Measured:
    """Per layer label: median seconds per run, what ran there (kernel ops), how many units."""

    times: dict[str, float] = field(default_factory=dict)
    ops: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    units: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    runs: int = 0
    run_time: float = 0.0  # median seconds per run, whole


# ---------------------------------------------------------------- onnxruntime


@dataclass(frozen=True)
class _Kernels:
    times: dict[str, float]  # executed node -> median seconds per run
    ops: dict[str, str]  # executed node -> kernel op
    io: dict[str, tuple[list[str], list[str]]]  # executed node -> (inputs, outputs), from the optimized model
    runs: list[float]  # seconds of each run used


def _ort_kernels(path: Path, feeds: list[np.ndarray], runtime: OrtRuntime, runs: int, warmup: int,
                 what: str) -> _Kernels:
    import onnx

    so = runtime._options()  # the runtime's threads and logging, so the kernels run as when timed
    so.enable_profiling = True
    so.profile_file_prefix = str(path.with_name("ort-profile"))
    so.optimized_model_filepath = str(path.with_name("optimized.onnx"))
    try:
        sess = runtime.ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        inputs = {i.name: np.ascontiguousarray(a) for i, a in zip(sess.get_inputs(), feeds, strict=True)}
        for _ in range(warmup + runs):
            sess.run(None, inputs)
        events = json.loads(Path(sess.end_profiling()).read_text())
    except Exception as exc:  # onnxruntime raises its own types; a person needs the reason, not a traceback
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise SourceError(f"onnxruntime {runtime.ort.__version__} cannot profile {what}: {reason}") from exc
    times, ops, used = node_times(events, warmup)
    if len(used) != runs:
        raise GraphpruneError(f"the onnxruntime {runtime.ort.__version__} profile shows {len(used)} of {runs} runs "
                              "(no 'model_run' events?); per-layer times cannot be told apart by run")
    io: dict[str, tuple[list[str], list[str]]] = {}
    try:
        opt = onnx.load(so.optimized_model_filepath, load_external_data=False)
        io = {n.name: (list(n.input), list(n.output)) for n in opt.graph.node}
    except Exception:  # the optimized model is only a naming aid; names alone place most kernels
        pass
    return _Kernels(times, ops, io, used)


def _place(kernels: _Kernels, source: Any, layer_of: Callable[[str], str | None]) -> _Measured:
    """Kernel times summed per layer label (UNATTRIBUTED for kernels placed on no source node)."""
    where = place(kernels.ops, kernels.io, OnnxIndex.of(source.graph))
    out = _Measured(runs=len(kernels.runs), run_time=float(np.median(kernels.runs)))
    times: dict[str, float] = defaultdict(float)
    for name, t in kernels.times.items():
        op = kernels.ops.get(name, "")
        node = where.get(name)
        scope = layer_of(node) if node is not None else None
        label = UNATTRIBUTED if scope is None else _label(scope)
        times[label] += t
        out.units[label] += 1
        if op not in out.ops[label]:
            out.ops[label].append(op)
    out.times = dict(times)
    return out


def _measure_ort(source: Any, example_inputs: Any, runtime: OrtRuntime, runs: int, warmup: int) -> _Measured:
    import onnx

    with tempfile.TemporaryDirectory(prefix="graphprune-layers-") as tmp:
        path = Path(tmp) / "model.onnx"
        if isinstance(source, torch.nn.Module):
            from ..export import save_model

            save_model(source, path, example_inputs)
            model = _named(onnx.load(str(path)))
            feeds = example_feeds(example_inputs)[2]
            modules = {name for name, _ in source.named_modules()}
            by_name = {n.name: n for n in model.graph.node}

            def layer_of(node: str) -> str | None:
                return module_path(by_name[node], modules)
        else:  # a PreparedOnnx: layers are its node names, which the IR's are
            model = _named(source.model)
            feeds = ordered_feeds(source, example_inputs)

            def layer_of(node: str) -> str | None:
                return node
        path.write_bytes(model.SerializeToString())
        what = "the model exported for it" if isinstance(source, torch.nn.Module) else "the ONNX model"
        kernels = _ort_kernels(path, feeds, runtime, runs, warmup, what)
    return _place(kernels, model, layer_of)


# ---------------------------------------------------------------- torch


def _measure_torch(model: torch.nn.Module, example_inputs: Any, runtime: Runtime, ir_scopes: set[str], runs: int,
                   warmup: int) -> _Measured:
    from ..frontends.inputs import as_args_kwargs

    args, kwargs = as_args_kwargs(example_inputs)
    modules = dict(model.named_modules())
    leaves = {name for name, m in modules.items() if next(m.children(), None) is None}
    label = {name: _label(name) if (name in leaves or name in ir_scopes) else UNATTRIBUTED for name in modules}
    current: dict[str, float] = defaultdict(float)
    stack: list[list[Any]] = []  # [module name, start, children's inclusive seconds]
    whole: list[float] = []  # the root's inclusive seconds per call

    def pre(name: str) -> Callable[..., None]:
        def hook(_m: Any, _a: Any) -> None:
            stack.append([name, time.perf_counter(), 0.0])
        return hook

    def post(_m: Any, _a: Any, _o: Any) -> None:
        end = time.perf_counter()
        name, start, child = stack.pop()
        current[label[name]] += max(0.0, end - start - child)
        if stack:
            stack[-1][2] += end - start
        else:
            whole.append(end - start)

    handles = []
    for name, m in modules.items():
        handles.append(m.register_forward_pre_hook(pre(name)))
        handles.append(m.register_forward_hook(post))
    per_run: list[dict[str, float]] = []
    run_times: list[float] = []
    was_training = model.training
    threads = getattr(runtime, "threads_set", None)
    try:
        model.eval()
        with torch.no_grad(), (threads() if threads is not None else contextlib.nullcontext()):
            for i in range(warmup + runs):
                current.clear()
                stack.clear()
                whole.clear()
                model(*args, **kwargs)
                if i >= warmup:
                    per_run.append(dict(current))
                    run_times.append(sum(whole))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = _Measured(runs=len(per_run), run_time=float(np.median(run_times)))
    for name in modules:
        out.units[label[name]] += 1
    out.times = {lab: float(np.median([r.get(lab, 0.0) for r in per_run])) for lab in out.units}
    return out


# ---------------------------------------------------------------- rows


def layer_profile(graph: Graph, latency_model: LatencyModel, source: Any, example_inputs: Any, runtime: Runtime,
                  runs: int = 20, warmup: int = 5) -> LayerProfile:
    """Predicted and measured latency per layer of ``graph``'s model on ``runtime``.

    ``source`` is the nn.Module the graph was captured from, or the ``PreparedOnnx`` it was
    lowered from (:func:`graphprune.frontends.prepare`); ``latency_model`` the calibrated table model.
    """
    if runs < 1 or warmup < 0:
        raise OptionError(f"runs={runs}, warmup={warmup}: need runs >= 1 and warmup >= 0")
    onnx_source = not isinstance(source, torch.nn.Module)
    if isinstance(runtime, OrtRuntime):
        measured = _measure_ort(source, example_inputs, runtime, runs, warmup)
    elif onnx_source:
        raise OptionError(f"runtime {runtime.name!r} runs PyTorch modules; profile an .onnx model on onnxruntime")
    else:
        measured = _measure_torch(source, example_inputs, runtime, {n.scope for n in graph.nodes}, runs, warmup)
    rep = predict(latency_model, graph)
    scale = latency_model.calibration.scale
    predicted: dict[str, float] = defaultdict(float)
    ir_ops: dict[str, list[str]] = defaultdict(list)
    for node in graph.nodes:
        lab = node.name if onnx_source else _label(node.scope)
        predicted[lab] += rep.per_node.get(node.name, 0.0) * scale
        if node.op not in ir_ops[lab]:
            ir_ops[lab].append(node.op)
    rows = []
    for lab in dict.fromkeys([*predicted, *measured.times, UNATTRIBUTED]):
        p, units = predicted.get(lab, 0.0), measured.units.get(lab, 0)
        if p > 0 or units > 0 or lab == UNATTRIBUTED:
            op = "+".join(ir_ops.get(lab) or measured.ops.get(lab, []))
            rows.append(LayerRow(lab, op, p, measured.times.get(lab, 0.0), units))
    if rows[-1].layer != UNATTRIBUTED:  # keep it last
        rows.append(rows.pop(next(i for i, r in enumerate(rows) if r.layer == UNATTRIBUTED)))
    return LayerProfile(runtime.name, runtime.threads_used, measured.runs, tuple(rows), rep.total, latency_model.calibration,
                        measured.run_time)
