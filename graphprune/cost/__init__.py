"""Cost model: FLOPs/params per op, and latency models (roofline, measured tables) behind one
Protocol (:class:`~.latency.LatencyModel`)."""

from __future__ import annotations

from .flops import METRICS, CostReport, count
from .latency import (
    PROFILES,
    Calibration,
    DeviceProfile,
    LatencyModel,
    LatencyReport,
    Roofline,
    TableLatency,
    fit_profile,
    predict,
)
from .runtimes import RUNTIMES, make_runtime
from .table import OpTable, TableCache

__all__ = [
    "METRICS", "PROFILES", "RUNTIMES", "Calibration", "CostReport", "DeviceProfile", "LatencyModel", "LatencyReport",
    "OpTable", "Roofline", "TableCache", "TableLatency", "count", "fit_profile", "make_runtime", "predict",
]
