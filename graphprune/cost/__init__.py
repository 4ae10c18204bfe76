"""Cost model: FLOPs/params per op (latency models come later behind the same interface)."""

from __future__ import annotations

from .flops import CostReport, count

__all__ = ["CostReport", "count"]
