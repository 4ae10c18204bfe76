"""Named pipelines: the default prune pipeline as a string the CLI also accepts."""

from __future__ import annotations

from collections.abc import Sequence

from graphprune.analysis.importance import CRITERIA
from graphprune.errors import OptionError

__all__ = ["RECONSTRUCT", "default_pipeline"]

# reconstruct= names -> pass, in the order they run (lsq refits the bias itself, so bias
# compensation then only touches consumers lsq could not refit; BN statistics go last because
# they depend on every weight upstream)
RECONSTRUCT: dict[str, str] = {"lsq": "reconstruct-lsq", "bias": "reconstruct-bias", "bn": "reconstruct-bn"}


def default_pipeline(
    metric: str, fraction: float, criterion: str = "l2", policy: str = "uniform", round_to: int | None = None,
    strict: bool = True,
    runtime: str = "onnxruntime", threads: int = 0,
    reconstruct: Sequence[str] = (),
    depth: bool = False,
    uniform_layers: bool = False,
    hidden: bool = False,
    hidden_multiple: int = 1,
    experts: bool = True,
    normalize: str = "group",
) -> str:
    """``couple,score,allocate,rewrite,verify`` then the chosen reconstruction passes.

    verify runs BEFORE reconstruction so the masked-original oracle stays exact. With ``lsq`` and a
    criterion that reads activations, ``score`` also takes the Gram matrices (one calibration pass).
    """
    unknown = [r for r in reconstruct if r not in RECONSTRUCT]
    if unknown:
        raise OptionError(f"reconstruct={unknown[0]!r} is unknown; choose from {', '.join(RECONSTRUCT)}")
    tail = "".join(f",{p}" for name, p in RECONSTRUCT.items() if name in reconstruct)
    crit = CRITERIA.get(criterion)
    score_opts = "" if normalize == "group" else f",normalize={normalize}"
    score_opts += ",gram=true" if "lsq" in reconstruct and crit is not None and crit.needs == "activations" else ""
    extra = f",runtime={runtime},threads={threads}" if metric.startswith("latency") else ""
    extra += ",depth=true" if depth else ""
    extra += ",uniform-layers=true" if uniform_layers else ""
    opts = (["hidden=true"] + ([f"multiple={hidden_multiple}"] if hidden_multiple > 1 else [])) if hidden else []
    opts += [] if experts else ["experts=false"]
    couple = f"couple{{{','.join(opts)}}}," if opts else "couple,"
    return (
        f"{couple}score{{criterion={criterion}{score_opts}}},"
        f"allocate{{{metric.replace('_', '-')}={fraction!r},policy={policy},round-to={round_to or 'auto'}{extra}}},"
        f"rewrite,verify{{strict={str(strict).lower()}}}{tail}"
    )
