"""graphprune: graph-compiler style structured pruning for PyTorch models."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import Analysis, PruneResult, analyze, apply, count_flops, prune  # noqa: E402
from .errors import GraphpruneError  # noqa: E402
from .hf import load_pretrained  # noqa: E402
from .plan import PruningPlan  # noqa: E402

__all__ = ["Analysis", "GraphpruneError", "PruneResult", "PruningPlan", "__version__", "analyze", "apply", "count_flops", "load_pretrained", "prune"]
