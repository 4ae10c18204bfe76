"""Latency models behind one Protocol: an analytic roofline and measured per-op tables.

A :class:`LatencyModel` prices one node given a shape function (the same ``shape(value)`` the
FLOPs rules use, so any candidate pruned widths can be priced without building a model), and a
whole graph as the calibrated sum over nodes:

    T(graph, shape) = a * sum_n t_n(shape) + b

with ``(a, b)`` a :class:`Calibration` fitted by least squares on whole-model measurements
(the unpruned model and a few random pruned variants). Two per-node models:

- :class:`Roofline` (analytic): ``t_n = max(F_n / P, B_n / W) + c`` for ops with a cost rule,
  with ``F_n`` FLOPs (``cost.flops`` rules), ``B_n`` bytes read + written (4 bytes per element of
  every input and output), and a :class:`DeviceProfile` giving peak FLOP/s ``P``, memory
  bandwidth ``W`` and per-op fixed cost ``c``. Movement ops still are one kernel (onnxruntime)
  or dispatcher call (eager) each: views (reshape, select, split, slice, expand) cost ``c``, ops
  that copy (permute -> Transpose, cat, embedding) ``B_n / W + c``; identity, dropout,
  contiguous and clone cost nothing (exporters and runtimes drop them). This fixed cost is what
  removing a whole branch saves beyond its FLOPs.
  :func:`fit_profile` fits ``(P, W, c)`` to measurements by minimising
  ``sum_k (log T_k - log T̂_k)^2`` (scipy ``least_squares`` in log-parameters).
- :class:`TableLatency` (measured): conv and linear nodes are looked up in the measured tables of
  :mod:`.table` (interpolated between measured widths); nodes the runtime fuses into a conv
  (onnxruntime: BatchNorm, Relu-like activations, a residual Add) cost nothing; every other node
  falls back to a roofline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from ..ir import Graph, Node, Value
from ..rules import COST
from .signature import op_spec
from .table import OpTable

__all__ = [
    "MODEL_VERSION", "PROFILES", "Calibration", "DeviceProfile", "LatencyModel", "LatencyReport", "Roofline", "TableLatency",
    "fit_profile", "predict",
]

log = logging.getLogger(__name__)

ShapeFn = Callable[[Value], tuple[int, ...]]


class LatencyModel(Protocol):
    """Per-node latency in seconds (uncalibrated) plus the whole-graph calibration."""

    name: str
    calibration: Calibration

    def node_latency(self, node: Node, shape: ShapeFn) -> float: ...


@dataclass(frozen=True)
class Calibration:
    """``T = scale * sum_n t_n + offset`` (seconds)."""

    scale: float = 1.0
    offset: float = 0.0
    samples: int = 0

    def __call__(self, raw: float) -> float:
        return self.scale * raw + self.offset

    def inverse(self, total: float) -> float:
        return (total - self.offset) / self.scale

    @classmethod
    def fit(cls, raw: Sequence[float], measured: Sequence[float]) -> Calibration:
        """Least squares ``measured ~ scale * raw + offset`` in relative error (rows weighted by
        1/measured); falls back to a pure scale (median ratio) with fewer than 3 points, a
        degenerate spread, or a non-positive fitted scale."""
        x, y = np.asarray(raw, dtype=np.float64), np.asarray(measured, dtype=np.float64)
        if len(x) == 0:
            return cls()
        ratio = float(np.median(y / np.maximum(x, 1e-12)))
        if len(x) >= 3 and np.ptp(x) > 0.05 * float(np.max(x)):
            w = 1.0 / np.maximum(y, 1e-12)
            a = np.stack([x * w, w], axis=1)
            (scale, offset), *_ = np.linalg.lstsq(a, y * w, rcond=None)
            if scale > 0 and scale * float(np.min(x)) + offset > 0:
                return cls(float(scale), float(offset), len(x))
        return cls(ratio, 0.0, len(x))


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    peak_flops: float  # FLOP/s
    bandwidth: float  # bytes/s
    overhead: float  # seconds per op with a cost rule


#: rough built-in profiles; fit them to the target with :func:`fit_profile`
PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile("cpu-avx512-1t", 60e9, 12e9, 2e-6),
        DeviceProfile("cpu-avx2-1t", 30e9, 10e9, 2e-6),
        DeviceProfile("cpu-avx512-8t", 400e9, 40e9, 4e-6),
        DeviceProfile("gpu-datacenter", 300e12, 3e12, 8e-6),
    )
}

#: bump when per-node pricing changes: calibrations fitted to another version's sums are stale
MODEL_VERSION = "m2"

_MOVEMENT_FREE = frozenset({"identity", "dropout", "contiguous", "clone"})
_MOVEMENT_COPY = frozenset({"permute", "cat", "embedding"})
_MOVEMENT_VIEW = frozenset({"reshape", "select", "split", "slice", "expand"})


def removed_node(node: Node, shape: ShapeFn) -> bool:
    """True when pruning leaves the node nothing to compute: an output, or an input other than one
    part of a concat, is empty (a residual branch removed whole; a linear exit whose contraction is
    empty becomes its bias, a constant). Such a node costs nothing, fixed per-op overhead included."""
    if any(0 in shape(v) for v in node.outputs):
        return True
    return node.op != "cat" and any(v is not None and 0 in shape(v) for v in node.inputs)


def _bytes(node: Node, shape: ShapeFn) -> float:
    vals = [v for v in node.inputs if v is not None] + list(node.outputs)
    return 4.0 * sum(math.prod(shape(v)) for v in vals)


def roofline_terms(node: Node, shape: ShapeFn) -> tuple[float, float] | None:
    """(FLOPs, bytes) the roofline prices ``node`` by, plus one fixed cost; None: free."""
    if node.op in _MOVEMENT_VIEW:
        return 0.0, 0.0
    if node.op in _MOVEMENT_COPY:
        return 0.0, _bytes(node, shape)
    rule = COST.get(node.op)
    if rule is None or node.op in _MOVEMENT_FREE:
        return None
    return float(rule(node, shape)), _bytes(node, shape)


class Roofline:
    """Analytic per-node latency from a :class:`DeviceProfile`."""

    name = "roofline"

    def __init__(self, profile: DeviceProfile, calibration: Calibration | None = None) -> None:
        self.profile = profile
        self.calibration = calibration or Calibration()

    def node_latency(self, node: Node, shape: ShapeFn) -> float:
        terms = roofline_terms(node, shape)
        if terms is None or removed_node(node, shape):
            return 0.0
        p = self.profile
        flops, nbytes = terms
        return max(flops / p.peak_flops, nbytes / p.bandwidth) + p.overhead


class TableLatency:
    """Measured tables for conv/linear nodes; a roofline for everything else."""

    name = "table"

    def __init__(
        self, tables: dict[str, OpTable], fallback: Roofline, calibration: Calibration | None = None,
        free: Callable[[Node], bool] | None = None,
    ) -> None:
        self.tables = tables
        self.fallback = fallback
        self.calibration = calibration or Calibration()
        self.free = free or (lambda node: False)  # ops the runtime fuses into a neighbour
        self._missing: set[str] = set()

    def lookup(self, node: Node, shape: ShapeFn) -> float | None:
        spec = op_spec(node, shape)
        if spec is None:
            return None
        table = self.tables.get(spec.key)
        if table is None:
            if spec.key not in self._missing:
                self._missing.add(spec.key)
                log.info("no latency table for %s (%s); using the roofline", node.name, node.op)
            return None
        return table(spec.widths)

    def node_latency(self, node: Node, shape: ShapeFn) -> float:
        if removed_node(node, shape):
            return 0.0
        t = self.lookup(node, shape)
        if t is not None:
            return t
        return 0.0 if self.free(node) else self.fallback.node_latency(node, shape)

    def with_calibration(self, cal: Calibration) -> TableLatency:
        return TableLatency(self.tables, self.fallback, cal, self.free)


@dataclass(frozen=True)
class LatencyReport:
    total: float  # calibrated seconds
    raw: float  # sum of per-node predictions
    per_node: dict[str, float]


def predict(model: LatencyModel, graph: Graph, shape: ShapeFn | None = None) -> LatencyReport:
    """Whole-graph prediction: calibrated sum of per-node latencies."""
    fn: ShapeFn = shape or (lambda v: v.shape)
    per = {n.name: model.node_latency(n, fn) for n in graph.nodes}
    raw = float(sum(per.values()))
    return LatencyReport(model.calibration(raw), raw, per)


def fit_profile(
    base: DeviceProfile, samples: Sequence[tuple[Graph, ShapeFn | None, float]], name: str | None = None
) -> DeviceProfile:
    """Fit ``(P, W, c)`` of a roofline to measured whole-graph times (seconds), starting at
    ``base``; minimises squared log error of ``sum_n t_n`` against each measurement."""
    from scipy.optimize import least_squares

    feats: list[tuple[np.ndarray, np.ndarray, int]] = []
    for graph, shape, _ in samples:
        fn: ShapeFn = shape or (lambda v: v.shape)
        fl, by, n_ops = [], [], 0
        for node in graph.nodes:
            terms = roofline_terms(node, fn)
            if terms is None:
                continue
            fl.append(terms[0])
            by.append(terms[1])
            n_ops += 1
        feats.append((np.asarray(fl), np.asarray(by), n_ops))
    meas = np.log(np.asarray([m for *_, m in samples], dtype=np.float64))
    x0 = np.log([base.peak_flops, base.bandwidth, base.overhead])

    def resid(theta: np.ndarray) -> np.ndarray:
        p, w, c = np.exp(theta)
        pred = [np.maximum(f / p, b / w).sum() + k * c for f, b, k in feats]
        return np.log(np.maximum(pred, 1e-15)) - meas

    sol = least_squares(resid, x0, bounds=(x0 - 7, x0 + 7))
    p, w, c = (float(v) for v in np.exp(sol.x))
    return replace(base, name=name or f"{base.name}-fitted", peak_flops=p, bandwidth=w, overhead=c)
