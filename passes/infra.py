"""Pass infrastructure: the Pass protocol, the per-run context, the registry and the pipeline
string parser (``couple,score{criterion=l2},allocate{flops=0.5,round-to=8},rewrite,verify``).

A pass is a frozen dataclass whose fields are its options; ``run(graph, ctx)`` returns a
``PassResult``. Per-run state (captured program, coupling, scores, the plan, pruned model) lives in the
:class:`PassContext`, never in a pass or a global. The hinge is ``ctx.plan``
(:class:`graphprune.plan.PruningPlan`): allocate (or replay) writes it; rewrite, verify,
reconstruction and the latency loop read the decision from it (:func:`removed_units`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from graphprune.errors import OptionError
from graphprune.ir import Graph
from graphprune.progress import as_progress

__all__ = ["PASSES", "CalibStats", "Pass", "PassContext", "PassResult", "Records", "RunInputs", "parse_pipeline", "register_pass", "removed_units",
           "run_pipeline"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunInputs:
    """What a run is given; no pass changes it (``run_pipeline`` only fills in ``progress``)."""

    model: torch.nn.Module | None  # None for an ONNX source
    example_inputs: Any
    calib: list[Any] | None = None  # calibration batches (example-input forms), re-iterable
    loss: Any = None  # loss(outputs, batch) -> scalar for gradient criteria; None = output probe
    seed: int = 0
    progress: Any = None  # graphprune.progress protocol: progress(name, done=None, total=None); None = silent


@dataclass
class CalibStats:
    """Calibration statistics, gathered once and shared by the passes that need them."""

    sites: list[Any] | None = None  # graphprune.analysis.calibration.Site; score or reconstruction fills it
    stats: dict[str, Any] = field(default_factory=dict)  # site node -> ChannelStats
    refit: set[str] = field(default_factory=set)  # consumer nodes reconstruct-lsq refit (reconstruct-bias skips them)


@dataclass
class Records:
    """What the run did, for the report; a pass may append, only ``verify`` reads ``reconstructed``."""

    timings: dict[str, float] = field(default_factory=dict)  # pass name -> seconds (run_pipeline)
    notes: list[str] = field(default_factory=list)
    pinned_after_check: list[dict[str, Any]] = field(default_factory=list)  # groups verify pinned
    reconstructed: list[str] = field(default_factory=list)  # reconstruction passes that changed weights
    latency_loop: dict[str, Any] | None = None  # latency-loop's measurements (report["latency"])
    pre_barrier_check: dict[str, Any] | None = None  # verify, on a fragment capture (report["capture"])


@dataclass(init=False, eq=False)
class PassContext:
    """One pruning run: what it was given (``given``), what capture produced, the products the passes
    exchange, the output, and the report's records. Which pass writes and reads each field:
    docs/ARCHITECTURE.md, "The pass context"."""

    given: RunInputs
    # capture
    program: Any  # torch.export.ExportedProgram (PyTorch source)
    onnx: Any  # graphprune.frontends.PreparedOnnx (ONNX source)
    fragments: Any  # graphprune.frontends.fragments.FragmentCapture (program is then None)
    # analysis products
    coupling: Any  # graphprune.analysis.Coupling: couple
    scores: np.ndarray | None  # score: normalized per group
    loss_scores: np.ndarray | None  # score, loss-based criteria: comparable across groups (the knapsack's)
    criterion: str  # score: the criterion's name, recorded in the plan
    allocation: Any  # graphprune.analysis.allocation.Allocation: allocate's costs (verify, report)
    plan: Any  # graphprune.plan.PruningPlan: the decision (allocate or replay; verify may pin groups)
    latency: Any  # graphprune.latency_target.LatencySetup: allocate{latency=...}, reused by its re-runs
    calib_stats: CalibStats
    # output
    pruned: Any  # rewrite: nn.Module, or onnx.ModelProto for an ONNX source
    route: str  # rewrite: "module" | "fx" | "onnx"
    route_reason: str
    onnx_dynamic: dict[str, Any]  # rewrite: symbolic input dims kept? verify checks them (report["onnx_dynamic"])
    verification: Any  # verify
    masked: Any  # the masked original, built once per allocation for the oracle
    # the report's records, and the passes run_pipeline is running (latency-loop and verify look)
    records: Records
    pipeline: tuple[Any, ...]

    def __init__(self, model: torch.nn.Module | None, example_inputs: Any, *, program: Any = None,
                 onnx: Any = None, calib: list[Any] | None = None, loss: Any = None, seed: int = 0,
                 progress: Any = None, fragments: Any = None) -> None:
        self.given = RunInputs(model, example_inputs, calib, loss, seed, progress)
        self.program, self.onnx, self.fragments = program, onnx, fragments
        self.coupling = self.scores = self.loss_scores = self.allocation = self.plan = self.latency = None
        self.criterion = ""
        self.calib_stats = CalibStats()
        self.pruned = self.verification = self.masked = None
        self.route = self.route_reason = ""
        self.onnx_dynamic = {}
        self.records = Records()
        self.pipeline = ()

    # the run's inputs, read-only
    @property
    def model(self) -> torch.nn.Module | None:
        return self.given.model

    @property
    def example_inputs(self) -> Any:
        return self.given.example_inputs

    @property
    def calib(self) -> list[Any] | None:
        return self.given.calib

    @property
    def loss(self) -> Any:
        return self.given.loss

    @property
    def seed(self) -> int:
        return self.given.seed

    @property
    def progress(self) -> Any:
        return self.given.progress


def removed_units(ctx: PassContext) -> np.ndarray:
    """The plan's removed units as a mask over ``ctx.coupling`` (what the rewriters cut)."""
    if ctx.plan is None or ctx.coupling is None:
        raise OptionError("this pass needs 'couple' and 'allocate' (or 'replay') to run first")
    return ctx.plan.removed_mask(ctx.coupling.n_units)


@dataclass(frozen=True)
class PassResult:
    graph: Graph
    changed: bool


class Pass(Protocol):
    name: ClassVar[str]

    def run(self, graph: Graph, ctx: PassContext) -> PassResult: ...


PASSES: dict[str, type] = {}


def register_pass(cls: type) -> type:
    name = cls.name  # type: ignore[attr-defined]
    if name in PASSES:
        raise ValueError(f"pass {name!r} registered twice")
    PASSES[name] = cls
    return cls


_ITEM = re.compile(r"\s*([a-z][a-z0-9_-]*)\s*(?:\{([^}]*)\})?\s*(?:,|$)")


def _convert(raw: str, typ: Any, where: str) -> Any:
    names = [typ] if isinstance(typ, type) else [n.strip() for n in str(typ).split("|") if n.strip() != "None"]
    if len(names) > 1:  # a union: the first type that reads the text (int | str: "8" -> 8, "auto" -> "auto")
        for name in names:
            try:
                return _convert(raw, name, where)
            except OptionError:
                continue
    t = names[0] if isinstance(names[0], type) else {"int": int, "float": float, "str": str, "bool": bool}.get(
        names[0], str
    )
    try:
        if t is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return t(raw)
    except ValueError:
        raise OptionError(f"{where}: cannot read {raw!r} as {t.__name__}") from None


def parse_pipeline(text: str) -> list[Any]:
    """Parse a pipeline string into pass instances; errors name the pass and option."""
    passes: list[Any] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise OptionError(f"cannot parse pipeline at {text[pos:]!r}; expected name or name{{key=value,...}}")
        name, opts = m.group(1), m.group(2)
        cls = PASSES.get(name)
        if cls is None:
            raise OptionError(f"unknown pass {name!r}; available: {', '.join(sorted(PASSES))}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in (opts or "").split(","))):
            key, eq, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if not eq or key not in fields:
                known = ", ".join(k.replace("_", "-") for k in fields) or "none"
                raise OptionError(f"pass {name!r} has no option {item!r}; options: {known}")
            kwargs[key] = _convert(raw.strip(), fields[key].type, f"pass {name!r} option {key!r}")
        passes.append(cls(**kwargs))
        pos = m.end()
    return passes


def run_pipeline(passes: list[Any], graph: Graph, ctx: PassContext, progress: Any = None) -> Graph:
    """Run ``passes`` in order; ``progress`` (see :mod:`graphprune.progress`; a one-argument
    callback works too) hears each pass's name as it starts, and the steps of long passes
    (through ``ctx.progress``, set here when the context has none)."""
    progress = as_progress(progress)
    if ctx.progress is None:
        ctx.given = dataclasses.replace(ctx.given, progress=progress)
    ctx.pipeline = tuple(passes)
    for p in passes:
        t0 = time.perf_counter()
        if progress is not None:
            progress(p.name)
        timings = ctx.records.timings
        inner = dict(timings)
        result = p.run(graph, ctx)
        graph = result.graph
        # time a pass spent in work it booked under another name (rewrite's oracle check) is
        # not counted twice
        booked = sum(v - inner.get(k, 0.0) for k, v in timings.items())
        timings[p.name] = timings.get(p.name, 0.0) + time.perf_counter() - t0 - booked
        log.debug("pass %s: changed=%s (%.3fs)", p.name, result.changed, timings[p.name])
    return graph
