"""Per-op rules. Importing this package registers every rule module into the tables."""

from __future__ import annotations

from . import (  # noqa: F401
    attention,
    complex_views,
    concat_split,
    conv,
    elementwise,
    inplace,
    linear,
    moe,
    norm,
    pooling,
    reshape,
)
from .readers import READERS, Reads, reads
from .registry import COST, COUPLING, MACS, register_cost, register_coupling, register_macs

__all__ = ["COST", "COUPLING", "MACS", "READERS", "Reads", "reads", "register_cost", "register_coupling", "register_macs"]
