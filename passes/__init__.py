"""The pass library (installed as graphprune.passes): one pass per module, registered by name."""

from __future__ import annotations

from . import (  # noqa: F401  (registration)
    allocate,
    couple,
    latency_loop,
    lint,
    reconstruct_bias,
    reconstruct_bn,
    reconstruct_lsq,
    replay,
    rewrite,
    score,
    verify,
)
from .infra import (
    PASSES,
    CalibStats,
    Pass,
    PassContext,
    PassResult,
    Records,
    RunInputs,
    parse_pipeline,
    register_pass,
    run_pipeline,
)
from .pipelines import default_pipeline

__all__ = ["PASSES", "CalibStats", "Pass", "PassContext", "PassResult", "Records", "RunInputs", "default_pipeline",
           "parse_pipeline", "register_pass", "run_pipeline"]
