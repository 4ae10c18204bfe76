"""Named pipelines: the default prune pipeline as a string the CLI also accepts."""

from __future__ import annotations

__all__ = ["default_pipeline"]


def default_pipeline(
    metric: str, fraction: float, criterion: str = "l2", policy: str = "uniform", round_to: int = 1, strict: bool = True,
    runtime: str = "onnxruntime", threads: int = 1,
) -> str:
    extra = f",runtime={runtime},threads={threads}" if metric.startswith("latency") else ""
    return (
        f"couple,score{{criterion={criterion}}},"
        f"allocate{{{metric.replace('_', '-')}={fraction!r},policy={policy},round-to={round_to}{extra}}},"
        f"rewrite,verify{{strict={str(strict).lower()}}}"
    )
