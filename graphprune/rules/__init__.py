"""Per-op rules. Importing this package registers every rule module into the tables."""

from __future__ import annotations

from . import attention, concat_split, conv, elementwise, linear, norm, pooling, reshape  # noqa: F401
from .registry import COST, COUPLING, register_cost, register_coupling

__all__ = ["COST", "COUPLING", "register_cost", "register_coupling"]
