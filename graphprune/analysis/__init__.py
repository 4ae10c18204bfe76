"""Analyses over the IR: coupling (what is removed together), importance (scores only)."""

from __future__ import annotations

from .coupling import CHANNEL, FIXED, Coupling, CouplingBuilder, Group, couple
from .importance import (
    CRITERIA,
    NORMALIZERS,
    Criterion,
    CriterionInputs,
    magnitude,
    normalize_global,
    normalize_per_group,
    normalize_per_kind,
    register_criterion,
)

__all__ = [
    "CHANNEL", "CRITERIA", "FIXED", "NORMALIZERS", "Coupling", "CouplingBuilder", "Criterion", "CriterionInputs", "Group", "couple",
    "magnitude", "normalize_global", "normalize_per_group", "normalize_per_kind", "register_criterion",
]
