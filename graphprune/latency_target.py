"""Latency targeting: set up a calibrated latency model for one model on one runtime, and
measure pruned results against the original (closing the loop). The model may be an nn.Module or
an ONNX file: whole-model timing goes through a :class:`~.latency_source.ModelTimer`.

``setup_latency`` profiles the model's conv/linear signatures that the cache lacks
(:func:`graphprune.cost.profile.profile_graph`), then calibrates ``T = a * sum_n t_n + b`` on
the unpruned model and a few random pruned variants (cached per device fingerprint and graph),
so ``T(unpruned)`` matches the measured latency and budgets given as a fraction of the measured
latency become absolute targets: ``T* = latency * T_meas(original)`` or ``T* = latency_ms / 1000``.
Closing the loop (measure, re-allocate, keep the best plan) is a pass: ``passes/latency_loop.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cost.latency import MODEL_VERSION, Calibration, TableLatency
from .cost.profile import Calibrated, calibrate, graph_key, profile_graph, table_model
from .cost.runtimes import Runtime
from .cost.table import TableCache
from .errors import BudgetError
from .ir import Graph
from .latency_source import ModelTimer
from .plan import PruningPlan

__all__ = ["LatencySetup", "budget_fraction", "measure", "measure_pair", "setup_latency"]

log = logging.getLogger(__name__)


@dataclass
class LatencySetup:
    runtime: Runtime
    model: TableLatency  # calibrated
    calibrated: Calibrated
    measured_now: int  # op signatures measured in this setup (0: all from the cache)
    cache_path: str
    timer: ModelTimer  # times whole models of the source (PyTorch or ONNX)

    @property
    def base_measured(self) -> float:
        return self.calibrated.base_measured

    def info(self) -> dict[str, Any]:
        cal = self.model.calibration
        return {
            "runtime": self.runtime.name, "threads": self.runtime.threads_used,
            "threads_source": "pinned" if self.runtime.threads else "runtime default", "step": self.runtime.step,
            "source": self.timer.kind,
            "calibration": {"scale": cal.scale, "offset_ms": cal.offset * 1e3, "models": cal.samples},
            "signatures_measured_now": self.measured_now, "cache": self.cache_path,
        }


def setup_latency(
    graph: Graph, coupling: Any, timer: ModelTimer, cache: TableCache | None = None,
    progress: Callable[[int, int, str], None] | None = None, variants: int = 5, recalibrate: bool = False, refresh: bool = False,
) -> LatencySetup:
    """Profile the graph's op signatures the cache lacks and calibrate on ``timer.runtime``;
    ``timer`` (:func:`graphprune.latency_source.make_timer`) times whole models of the source."""
    rt = timer.runtime
    cache = cache or TableCache()
    tables, n_new = profile_graph(graph, rt, cache, progress, refresh=refresh)
    lm = table_model(tables, rt)
    fp = rt.fingerprint()
    key = f"{graph_key(graph)}-{MODEL_VERSION}" + ("" if timer.kind == "torch" else f"-{timer.kind}")
    stored = None if (recalibrate or n_new) else cache.calibration(fp, key)
    if stored is not None:
        cal = Calibrated(Calibration(stored["scale"], stored["offset"], int(stored["samples"])),
                         list(stored["raw"]), list(stored["measured"]))
    else:
        cal = calibrate(lm, graph, coupling, timer.measure_masks, rt, variants)
        c = cal.calibration
        cache.put_calibration(fp, key, {"scale": c.scale, "offset": c.offset, "samples": c.samples,
                                        "raw": cal.raw, "measured": cal.measured})
        cache.save()
    return LatencySetup(rt, lm.with_calibration(cal.calibration), cal, n_new, str(cache.path), timer)


def measure(setup: LatencySetup, plan: PruningPlan, built: Any = None) -> tuple[float, float]:
    """(original, pruned) seconds per run of the model ``plan`` makes, measured side by side on the
    runtime; ``built`` is that model when the caller already has it (of the source's kind), else
    the timer rebuilds it from the plan's removed units."""
    return setup.timer.measure(plan, built)


def measure_pair(setup: LatencySetup, pruned: Any) -> tuple[float, float]:
    """(original, pruned) seconds per run, measured side by side (interleaved) on the runtime;
    ``pruned`` is of the source's kind (nn.Module, or ModelProto for an ONNX source)."""
    return setup.timer.measure_pair(pruned)


def budget_fraction(latency: float | None, speedup: float | None, latency_ms: float | None) -> tuple[str, float]:
    """Validate a latency budget; returns ('latency', fraction) or ('latency_ms', ms)."""
    given = [(k, v) for k, v in (("latency", latency), ("speedup", speedup), ("latency_ms", latency_ms)) if v is not None]
    if len(given) != 1:
        raise BudgetError("give exactly one latency budget: latency=FRACTION, speedup=FACTOR or latency_ms=MS")
    name, v = given[0]
    v = float(v)
    if not np.isfinite(v):
        raise BudgetError(f"{name}={v} is not a finite number")
    if name == "latency":
        if not 0.0 < v <= 1.0:
            raise BudgetError(f"latency={v} is out of range: give the fraction of measured latency to keep, in (0, 1]")
        return "latency", v
    if name == "speedup":
        if v <= 1.0:
            raise BudgetError(f"speedup={v} must be > 1 (e.g. speedup=2.0 for half the measured latency)")
        return "latency", 1.0 / v
    if v <= 0.0:
        raise BudgetError(f"latency_ms={v} must be > 0 (the target latency in milliseconds)")
    return "latency_ms", v
