"""Building latency tables and calibrating them against whole-model runs.

- :func:`profile_graph`: for every measurable node (conv, linear; see :mod:`.signature`) whose
  signature is not in the cache, time the single op on the runtime at a grid of widths
  (multiples of the runtime's ``step``, see :func:`.signature.grid_points`), all grid points of a
  signature interleaved with the harness's null call, ``t = max(0, t_op - t_null)``; the cache is
  saved after every signature so an interrupted run keeps what it measured.
- :func:`measure_models`: whole models timed side by side (interleaved) on the runtime.
- :func:`calibrate`: ``(a, b)`` of ``T = a * sum_n t_n + b`` fitted on the unpruned model and a
  few random pruned variants (:meth:`.latency.Calibration.fit`), timed by a ``measure_masks``
  callable, so calibration does not care whether the model is a module or an ONNX file.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_flatten

from ..ir import Graph
from .latency import PROFILES, Calibration, Roofline, TableLatency, predict
from .runtimes import OrtRuntime, Runtime
from .signature import OpSpec, grid_points, op_spec
from .table import OpTable, TableCache
from .timing import TimingConfig, time_interleaved

__all__ = ["Calibrated", "MeasureMasks", "calibrate", "default_fallback", "example_feeds", "table_model", "graph_key", "measure_models", "measure_onnx", "profile_graph", "random_masks"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

OP_TIMING = TimingConfig(warmup=3, rounds=15, min_round_s=1e-3)
MODEL_TIMING = TimingConfig(warmup=5, rounds=40, min_round_s=5e-3)


def _threads(runtime: Runtime) -> contextlib.AbstractContextManager[Any]:
    ctx = getattr(runtime, "threads_set", None)
    return ctx() if ctx is not None else contextlib.nullcontext()


def graph_key(graph: Graph) -> str:
    """Stable hash of a graph's ops and shapes (the calibration's model key)."""
    h = hashlib.sha1(graph.name.encode())
    for n in graph.nodes:
        h.update(f"{n.op}:{[v.shape if v is not None else None for v in n.inputs]}".encode())
    return f"{graph.name}-{h.hexdigest()[:12]}"


def _specs(graph: Graph) -> list[OpSpec]:
    seen: dict[str, OpSpec] = {}
    for node in graph.nodes:
        spec = op_spec(node)
        if spec is not None and spec.key not in seen:
            seen[spec.key] = spec
    return list(seen.values())


def measure_spec(spec: OpSpec, runtime: Runtime, cfg: TimingConfig = OP_TIMING) -> OpTable:
    axes = [grid_points(c, runtime.step) for c in spec.full]
    points = list(itertools.product(*axes))
    calls = [runtime.null_call()] + [runtime.op_call(spec, p) for p in points]
    with _threads(runtime):
        times = time_interleaved(calls, cfg)
    null = times[0]
    return OpTable(axes, np.asarray([max(0.0, t - null) for t in times[1:]]))


def profile_graph(
    graph: Graph, runtime: Runtime, cache: TableCache, progress: Progress | None = None, refresh: bool = False
) -> tuple[dict[str, OpTable], int]:
    """Tables for every measurable node of ``graph``; returns (tables, number newly measured)."""
    fp = runtime.fingerprint()
    specs = _specs(graph)
    tables: dict[str, OpTable] = {}
    todo: list[OpSpec] = []
    for spec in specs:
        t = None if refresh else cache.get(fp, spec.key)
        if t is None:
            todo.append(spec)
        else:
            tables[spec.key] = t
    for i, spec in enumerate(todo):
        if progress is not None:
            progress(i, len(todo), f"{spec.kind} {list(spec.full)}")
        tables[spec.key] = measure_spec(spec, runtime)
        cache.put(fp, spec.key, tables[spec.key])
        cache.save()
    if progress is not None:
        progress(len(todo), len(todo), "done")
    log.info("latency tables: %d signatures, %d measured now", len(specs), len(todo))
    return tables, len(todo)


def example_feeds(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any], list[np.ndarray]]:
    """(args, kwargs, the tensors among them as numpy arrays in flattening order: an exported model's inputs)."""
    from ..frontends.inputs import as_args_kwargs

    args, kwargs = as_args_kwargs(example_inputs)
    flat, _ = tree_flatten((args, kwargs))
    arrays = [t.detach().cpu().numpy() for t in flat if isinstance(t, torch.Tensor)]
    return args, kwargs, arrays


def measure_onnx(paths: Sequence[str | Path], feeds: list[np.ndarray], runtime: Runtime,
                 cfg: TimingConfig = MODEL_TIMING) -> list[float]:
    """Interleaved median seconds per run of each ONNX file on an onnxruntime runtime."""
    calls = [runtime.onnx_call(p, feeds) for p in paths]
    return time_interleaved(calls, cfg)


def measure_models(models: Sequence[torch.nn.Module], example_inputs: Any, runtime: Runtime,
                   cfg: TimingConfig = MODEL_TIMING) -> list[float]:
    """Interleaved median seconds per forward of each model on the runtime (ONNX-exported for
    every onnxruntime runtime, CPU or GPU; eager for torch)."""
    args, kwargs, arrays = example_feeds(example_inputs)
    if not isinstance(runtime, OrtRuntime):
        calls = [runtime.module_call(m, args, kwargs) for m in models]
        with _threads(runtime):
            return time_interleaved(calls, cfg)
    from ..export import save_model

    with tempfile.TemporaryDirectory(prefix="graphprune-lat-") as tmp:
        paths = []
        for i, m in enumerate(models):
            p = Path(tmp) / f"m{i}.onnx"
            save_model(m, p, example_inputs)
            paths.append(p)
        return measure_onnx(paths, arrays, runtime, cfg)


def random_masks(coupling: Any, step: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` random removal masks: each group keeps a random width (a multiple of ``step`` for
    channel groups), around overall keep fractions spread over [0.2, 0.9] (so the calibration line
    is pinned at both ends)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rem = np.zeros(coupling.n_units, dtype=bool)
        base = 0.2 + 0.7 * (i + rng.uniform(0, 1)) / n  # spread over [0.2, 0.9]
        for g in coupling.groups:
            frac = float(np.clip(base + rng.normal(0, 0.15), 0.05, 1.0))
            keep = max(1, round(g.size * frac))
            if g.width == 1 and step > 1 and g.size > step:
                keep = min(g.size, max(step, round(keep / step) * step))
            rem[rng.permutation(g.units)[: g.size - keep]] = True
        out.append(rem)
    return out


@dataclass(frozen=True)
class Calibrated:
    calibration: Calibration
    raw: list[float]
    measured: list[float]

    @property
    def base_measured(self) -> float:
        return self.measured[0]


MeasureMasks = Callable[[Sequence[np.ndarray]], list[float]]


def calibrate(
    lm: TableLatency, graph: Graph, coupling: Any, measure_masks: MeasureMasks, runtime: Runtime, variants: int = 3,
    seed: int = 0,
) -> Calibrated:
    """Fit the whole-model calibration on the unpruned model and ``variants`` random prunings.

    ``measure_masks(masks)`` returns seconds per run of the model pruned by each removal mask
    (the all-False mask is the original), timed side by side; see
    :mod:`graphprune.latency_source` for the PyTorch and ONNX versions."""
    from ..analysis.allocation import ShapeTable

    table = ShapeTable(coupling)
    masks = [np.zeros(coupling.n_units, dtype=bool)] + random_masks(coupling, runtime.step, variants, seed)
    raw = [predict(lm, graph, table.shapes(m)).raw for m in masks]
    meas = measure_masks(masks)
    cal = Calibration.fit(raw, meas)
    log.info("latency calibration: scale %.3f offset %.3g ms over %d models", cal.scale, cal.offset * 1e3, len(meas))
    return Calibrated(cal, raw, meas)


def default_fallback(runtime: Runtime) -> Roofline:
    name = "cpu-avx512-1t" if runtime.step == 16 else "cpu-avx2-1t"
    return Roofline(PROFILES[name])


def table_model(tables: dict[str, OpTable], runtime: Runtime) -> TableLatency:
    """The uncalibrated measured-table model for a runtime (with its fusion rules)."""
    return TableLatency(tables, default_fallback(runtime), free=runtime.free)
