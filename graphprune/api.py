"""The public Python API: ``prune``, ``analyze``, ``count_flops``.

    import graphprune as gp
    res = gp.prune(model, example_inputs, flops=0.5)   # keep 50% of FLOPs; or macs=0.5, params=0.5
    res = gp.prune(model, example_inputs, speedup=2.0) # half the measured onnxruntime latency
    res = gp.prune("model.onnx", speedup=2.0)          # ONNX in, ONNX out (onnxruntime only)
    res.model; res.report; res.plan; res.save("small.pt"); res.save("small.onnx")
    res.plan.save("plan.json")
    gp.apply("model.onnx", "plan.json")                # the same decision on the ONNX export
    gp.apply(other_checkpoint, res.plan, example_inputs)  # or on another checkpoint
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .analysis import Coupling, couple
from .boundary import own_errors
from .cost import METRICS, count
from .errors import BudgetError, OptionError, PlanError
from .export import save_model
from .frontends import ExampleInputs, capture
from .frontends.calib import check_batches, materialize
from .ir import Graph
from .plan import PruningPlan
from .progress import as_progress
from .rewrite import kept_indices
from .rewrite.slicing import KeptIndices
from .rules.readers import reads

__all__ = ["MISS_TOLERANCE", "NO_CALIB_NOTE", "Analysis", "PruneResult", "Recipe", "analyze", "apply", "count_flops",
           "default_allocation", "default_recipe", "prune", "target_verdict"]


@dataclass
class Analysis:
    """Coupling analysis of a model: groups, barriers and per-layer cost, before any pruning."""

    graph: Graph
    coupling: Coupling
    program: Any
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)
    onnx: Any = None  # graphprune.frontends.PreparedOnnx for an ONNX source (what latency timing runs)
    feeds: dict[str, np.ndarray] | None = None  # an ONNX source's example inputs, when given


@dataclass
class PruneResult:
    model: nn.Module
    report: dict[str, Any]
    plan: PruningPlan
    example_inputs: Any = field(default=None, repr=False)
    coupling: Coupling | None = field(default=None, repr=False)
    removed: np.ndarray | None = field(default=None, repr=False)  # bool per coupling unit
    original_config: Any = field(default=None, repr=False)  # a transformers model's config before pruning

    def save(self, path: str | os.PathLike[str], opset: int | None = None) -> dict[str, Any]:
        """Write ``.pt`` or ``.onnx`` (checked in onnxruntime) atomically."""
        return save_model(self.model, path, self.example_inputs, opset)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> dict[str, Any]:
        """Write a transformers model as a Hugging Face directory (safetensors + config.json),
        atomically. Equal widths per layer kind: a stock directory (``from_pretrained`` reloads it);
        per-layer widths: reload with ``graphprune.load_pretrained(directory)`` (stock loading
        refuses it). Returns what was written; see :func:`graphprune.hf.save_pretrained`."""
        from .hf import save_pretrained

        return save_pretrained(self.model, directory, original=self.original_config)


def _is_onnx(model: Any) -> bool:
    import onnx

    return isinstance(model, (str, os.PathLike, onnx.ModelProto))


def _onnx_feeds(prep_model: Any, example_inputs: Any) -> dict[str, np.ndarray] | None:
    """ONNX example inputs: a dict name -> array, a tuple in graph-input order, or one array."""
    from .frontends.onnx_model import graph_inputs

    if example_inputs is None:
        return None
    names = [i.name for i in graph_inputs(prep_model)]
    if isinstance(example_inputs, dict):
        items = dict(example_inputs)
    else:
        seq = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        if len(seq) != len(names):
            raise OptionError(f"example_inputs has {len(seq)} tensors; the ONNX model has inputs {names}")
        items = dict(zip(names, seq, strict=True))
    unknown = sorted(set(items) - set(names))
    if unknown:
        raise OptionError(f"example_inputs names {unknown} are not inputs of the ONNX model ({names})")
    return {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in items.items()}


def _load_onnx_source(model: Any, example_inputs: Any, input_shapes: Any) -> tuple[Any, Any, Graph, str]:
    from .frontends import load_onnx, lower_onnx, prepare

    proto = load_onnx(model)
    feeds = _onnx_feeds(proto, example_inputs)
    shapes = dict(input_shapes or {})
    for k, v in (feeds or {}).items():
        shapes.setdefault(k, tuple(v.shape))
    prep = prepare(proto, shapes)
    name = Path(model).stem if isinstance(model, (str, os.PathLike)) else (proto.graph.name or "onnx")
    return prep, feeds, lower_onnx(prep, name=name), name


def _is_directory(model: Any) -> bool:
    """A directory (not one named .onnx): a transformers checkpoint directory, or one to refuse."""
    return isinstance(model, (str, os.PathLike)) and Path(model).is_dir() and not str(model).lower().endswith(".onnx")


def _prune_directory(model: Any, example_inputs: Any, *, latency: Any, speedup: Any, latency_ms: Any, pipeline: Any,
                     steps: int, depth: Any, **kw: Any) -> Any:
    """A transformers checkpoint directory: pruned layer by layer (:mod:`graphprune.stream`)."""
    from .stream import prune_checkpoint

    given = [n for n, v in (("example_inputs", example_inputs), ("latency", latency), ("speedup", speedup),
                            ("latency_ms", latency_ms), ("pipeline", pipeline), ("depth", depth)) if v is not None]
    if steps != 1:
        given.append("steps")
    if given:
        raise OptionError(f"a checkpoint directory ({model}) is pruned layer by layer with flops=, macs= or params=, "
                          f"calib=, criterion=, allocation=, reconstruct=, round_to=, uniform=; {given[0]}= is not "
                          "supported there (load the model and prune it in memory for that)")
    return prune_checkpoint(model, **kw)


def _check_model(model: Any, example_inputs: Any) -> None:
    if not isinstance(model, nn.Module):
        raise OptionError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if example_inputs is None:
        raise OptionError("example_inputs is required for a PyTorch model (a tensor, a tuple, or a dict)")


@own_errors("graphprune.analyze")
def analyze(model: nn.Module | str | os.PathLike[str], example_inputs: ExampleInputs = None,
            *, input_shapes: dict[str, tuple[int, ...]] | None = None) -> Analysis:
    """Coupling analysis of an nn.Module (with example inputs) or an ONNX model (path/ModelProto)."""
    t0 = time.perf_counter()
    if _is_onnx(model):
        prep, feeds, graph, _ = _load_onnx_source(model, example_inputs, input_shapes)
        coupling = couple(graph)
        a = Analysis(graph, coupling, None, time.perf_counter() - t0, onnx=prep, feeds=feeds)
        a.report = analysis_report(graph, coupling)
        return a
    _check_model(model, example_inputs)
    assert isinstance(model, nn.Module)
    was_training = model.training
    model.eval()
    try:
        cap = capture(model, example_inputs)
    finally:
        model.train(was_training)
    coupling = couple(cap.graph)
    a = Analysis(cap.graph, coupling, cap.program, time.perf_counter() - t0)
    a.report = analysis_report(cap.graph, coupling)
    if cap.fragments is not None:
        a.report["capture"] = cap.fragments.as_dict()
    return a


def count_flops(model: nn.Module | str | os.PathLike[str], example_inputs: ExampleInputs = None) -> tuple[int, int]:
    """(FLOPs, params) of a module or ONNX model, with graphprune's per-op counting conventions."""
    if _is_onnx(model):
        graph = _load_onnx_source(model, example_inputs, None)[2]
    else:
        graph = capture(model, example_inputs).graph
    rep = count(graph)
    return int(rep.flops), rep.params


@own_errors("graphprune.prune")
def prune(
    model: nn.Module | str | os.PathLike[str],
    example_inputs: ExampleInputs = None,
    *,
    flops: float | None = None,
    params: float | None = None,
    macs: float | None = None,
    latency: float | None = None,
    speedup: float | None = None,
    latency_ms: float | None = None,
    criterion: str | None = None,
    allocation: str | None = None,
    round_to: int | None = None,
    verify: bool = True,
    pipeline: str | None = None,
    progress: Callable[..., None] | None = None,
    runtime: str = "onnxruntime",
    threads: int | None = None,
    iterate: int = 2,
    measure: bool = True,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    calib: Iterable[ExampleInputs] | None = None,
    loss: Callable[[Any, ExampleInputs], torch.Tensor] | None = None,
    reconstruct: Sequence[str] | str | None = None,
    steps: int = 1,
    callback: Callable[[nn.Module, int], None] | None = None,
    seed: int = 0,
    depth: bool | None = None,
    allow_static: bool = False,
    uniform: bool = False,
    hidden: bool | None = None,
    layers: int | float | None = None,
    experts: bool | None = None,
) -> PruneResult:
    """Prune ``model`` to a budget; returns a new, verified model.

    ``model`` may be an nn.Module (``example_inputs`` required) or an ONNX file / ModelProto
    (``example_inputs`` optional: a dict or tuple of arrays; ``input_shapes`` binds symbolic dims).
    Budgets (give one): ``flops``, ``macs`` or ``params`` (fraction kept; ``macs`` counts only the
    multiply-accumulates of conv/linear/matmul/attention, the fvcore/thop convention, ``flops`` also
    elementwise/norm/softmax ops: :data:`graphprune.cost.METRICS`); ``latency`` (fraction of the
    measured latency on ``runtime`` with ``threads``: None is the runtime's own default, as it runs
    when deployed — onnxruntime: one thread per physical core), ``speedup`` (= 1/latency) or
    ``latency_ms`` (an ONNX model is timed on ``runtime="onnxruntime"`` only). With a latency budget the pruned model is measured against the original
    (``report["latency"]``), and when it misses the target by more than 5% the allocation is
    redone with a corrected budget, up to ``iterate`` times (``measure=False`` skips this).
    ``verify=False`` keeps a model that fails the oracle instead of raising (the report says so).
    ``report["target_met"]`` says whether the budget held within tolerance (``report["miss"]``, the
    relative excess over the target; tolerances in :data:`MISS_TOLERANCE`); the model is returned
    either way. ``progress(name, done=None, total=None)`` hears each phase and, for long phases,
    its steps (a callback taking only ``name`` still works: :mod:`graphprune.progress`).
    ``calib``: iterable of batches shaped like ``example_inputs``, for data-aware criteria
    (wanda, flap, taylor, fisher) and reconstruction; ``loss(outputs, batch)`` replaces the
    default output probe of the gradient criteria. ``reconstruct``: any of ``"lsq"``, ``"bias"``,
    ``"bn"`` (run after verification, in that order). ``steps=k`` prunes in k steps toward the
    budget (step i keeps ``1 - (1 - fraction) * i / k`` of the original), calling
    ``callback(model, i)`` between steps; the returned plan is the composition of the steps' plans.
    Defaults (:func:`default_recipe`): with ``calib=`` and none of ``criterion``, ``reconstruct``,
    ``allocation`` set, the best measured recipe, ``wanda`` + ``lsq,bias`` + ``global``
    (docs/QUALITY.md); without ``calib=``, ``l2`` and no reconstruction, and ``report["notes"]`` says
    what that costs. A criterion set by the user keeps ``reconstruct=()`` unless it is given.
    ``allocation`` (default :func:`default_allocation`): ``uniform`` (every group keeps the same
    fraction), ``global`` (one ranking of group-normalized scores) or ``greedy`` (the knapsack: least
    importance lost per unit of cost saved).
    ``round_to`` (default None: the target ``runtime``'s channel step, 16 on onnxruntime with AVX-512
    and 8 otherwise, finer only for groups too small to take four steps): kept widths are multiples
    of it, for FLOPs and params budgets too, since off-step widths run slower on blocked kernels;
    ``round_to=1`` keeps any width.
    ``depth=True``: let the greedy also remove whole residual branches (groups taken to width 0,
    see ``graphprune.analysis.depth``; the result then takes the fx route).
    ``allow_static=True``: an ONNX model whose symbolic input dims cannot stay symbolic is written
    with the shapes it was analyzed at (default: ``NotDynamic`` is raised and nothing is kept).
    ``uniform=True``: every layer of a kind keeps the same width (all MLP intermediate sizes equal,
    all attention KV-group counts equal; allocation ``uniform`` only), and a transformers model keeps
    whole what its config cannot express, so ``res.model.save_pretrained(d)`` reloads with stock
    ``from_pretrained`` (docs/HF.md).
    ``hidden=True``: the residual-stream (hidden) size of RMSNorm models may shrink too (every norm
    rescaled, exact: ``graphprune.rules.hidden``; default :data:`HIDDEN_DEFAULT`, docs/LLM.md).
    ``layers=N`` (int) or ``layers=F`` (fraction of the decoder layers): a transformers decoder
    first loses the N layers whose output is closest in angle to their input on ``calib=``
    (ShortGPT; ``graphprune.analysis.depth.drop_decoder_layers``), then the widths prune to what the
    budget still asks; the config's ``num_hidden_layers`` and layer indices follow.
    ``experts``: whole mixture-of-experts experts (with their router rows) as units; default: only
    for a ``params=`` budget (an expert removed saves parameters, not FLOPs or latency, since every
    token still runs k experts; docs/HF.md measures the quality it costs).
    """

    from graphprune.passes import default_pipeline

    from .cost.runtimes import make_runtime
    from .latency_source import check_onnx_runtime
    from .latency_target import budget_fraction

    progress = as_progress(progress)
    if _is_directory(model):
        return _prune_directory(model, example_inputs, flops=flops, params=params, macs=macs, latency=latency,
                                speedup=speedup, latency_ms=latency_ms, criterion=criterion, allocation=allocation,
                                round_to=round_to, verify=verify, pipeline=pipeline, progress=progress, calib=calib,
                                reconstruct=reconstruct, steps=steps, seed=seed, depth=depth, uniform=uniform)
    onnx_input = _is_onnx(model)
    if not onnx_input:
        _check_model(model, example_inputs)
    lat_given = any(v is not None for v in (latency, speedup, latency_ms))
    n_budgets = sum(v is not None for v in (flops, params, macs)) + int(lat_given)
    if n_budgets != 1 and pipeline is None:
        raise BudgetError("give exactly one budget: flops=, macs=, params= or latency= FRACTION (fraction to keep, "
                          "in (0, 1]), speedup=FACTOR or latency_ms=MS")
    recipe = default_recipe(criterion, reconstruct, allocation, calib is not None, onnx_input)
    criterion = recipe.criterion
    reconstruct = recipe.reconstruct
    recon = tuple(r.strip() for r in reconstruct.split(",") if r.strip()) if isinstance(reconstruct, str) else tuple(reconstruct)
    if onnx_input and (calib is not None or recon or steps != 1):
        raise OptionError("for an .onnx model use flops=, params= or a latency budget with a weight criterion (l1, l2); "
                          "calib=, reconstruct= and steps= need the PyTorch model for now")
    if lat_given:
        metric, frac = budget_fraction(latency, speedup, latency_ms)
        make_runtime(runtime, threads)  # validates runtime= and threads= before any work
        if onnx_input:
            check_onnx_runtime(runtime)
        if iterate < 0:
            raise OptionError(f"iterate={iterate} must be >= 0")
    else:
        metric, frac = next(((k, v) for k, v in (("flops", flops), ("macs", macs), ("params", params)) if v is not None),
                            ("flops", None))
    if not isinstance(steps, int) or steps < 1:
        raise OptionError(f"steps={steps!r} must be an integer >= 1")
    if round_to is not None and (not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1):
        raise OptionError(f"round_to={round_to!r} must be an integer >= 1 (1: no rounding), or None for the target "
                          "runtime's channel step")
    if steps > 1 and (pipeline is not None or lat_given):
        raise OptionError("steps= needs a flops=, macs= or params= budget (not pipeline= or a latency budget)")
    batches = materialize(calib)
    if batches is not None:
        check_batches(batches, example_inputs)
    policy = allocation or ("uniform" if uniform else recipe.allocation or default_allocation(lat_given, criterion))
    if uniform and (policy != "uniform" or pipeline is not None):
        raise OptionError(f"uniform=True needs allocation='uniform' and no pipeline= (got allocation={policy!r}"
                          f"{', a pipeline' if pipeline is not None else ''}); in a pipeline use allocate{{uniform-layers=true}}")
    use_depth = bool(depth)
    if use_depth and policy != "greedy":
        raise OptionError(f"depth=True needs allocation='greedy' (the knapsack); got allocation={policy!r}")

    use_hidden = HIDDEN_DEFAULT if hidden is None else bool(hidden)
    if onnx_input and hidden:
        raise OptionError("hidden=True needs the PyTorch model for now (the ONNX rewriter cannot rescale a norm's mean); "
                          "prune the .onnx file without it")
    if layers is not None:
        from .analysis.depth import drop_decoder_layers

        model, frac, layer_info = drop_decoder_layers(model, example_inputs, batches, layers, metric, frac, onnx_input)

    def once(m: Any, fraction: float | None) -> PruneResult:
        text = pipeline or default_pipeline(
            metric, float(1.0 if fraction is None else fraction), criterion, policy, round_to, strict=verify,
            runtime=runtime, threads=threads or 0, reconstruct=recon, depth=use_depth, uniform_layers=uniform,
            hidden=use_hidden, hidden_multiple=_hidden_multiple(m) if use_hidden else 1,
            experts=(metric == "params") if experts is None else bool(experts), normalize=recipe.normalize,
        )
        return _prune_once(m, example_inputs, text, batches, loss, seed, progress, input_shapes, measure, iterate,
                           allow_static=allow_static)

    res = once(model, frac) if steps == 1 else _prune_steps(model, once, metric, float(frac), steps, callback)  # type: ignore[arg-type]
    if layers is not None:
        res.report["layers_removed"] = layer_info
        if layer_info["removed"]:  # replayed by apply() before the widths: the plan's graph has fewer layers
            res.plan = dataclasses.replace(res.plan, provenance={
                **res.plan.provenance, DROPPED_LAYERS: ",".join(str(i) for i in layer_info["removed"])})
    res.report.update(target_verdict(res.report))
    if recipe.note:
        res.report["notes"].append(recipe.note)
    return res


@own_errors("graphprune.apply")
def apply(
    model: nn.Module | str | os.PathLike[str],
    plan: PruningPlan | str | os.PathLike[str],
    example_inputs: ExampleInputs = None,
    *,
    verify: bool = True,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    allow_static: bool = False,
    progress: Callable[..., None] | None = None,
) -> PruneResult:
    """Apply a saved decision: the channels ``plan`` keeps (a :class:`PruningPlan` or the path of
    its JSON, ``res.plan.save(path)`` / ``graphprune prune --plan-out``) are kept in ``model`` — the
    model the plan was made on, its ONNX export (path or ModelProto; ``example_inputs`` optional as
    in :func:`prune`), or another checkpoint of the same architecture. Nothing is scored or
    allocated, so no calibration data is needed. The result is rewritten and verified against the
    masked original as :func:`prune` does (``verify=False`` keeps a model that fails the check).
    A plan made for a different graph raises :class:`~graphprune.errors.PlanError` naming the
    first weight that differs; ``report["plan"]`` says what the plan was made for."""
    from graphprune.passes import parse_pipeline
    from graphprune.passes.replay import Replay

    the_plan = plan if isinstance(plan, PruningPlan) else PruningPlan.load(plan)
    if not _is_onnx(model):
        _check_model(model, example_inputs)
    if the_plan.provenance.get(DROPPED_LAYERS):  # made with layers=: drop the same decoder layers first
        if _is_onnx(model):
            raise PlanError(f"the plan for {the_plan.model!r} removes decoder layers "
                            f"{the_plan.provenance[DROPPED_LAYERS]}; replay it on the PyTorch model, not an ONNX file")
        from .rewrite.hf_attrs import drop_layers

        model = drop_layers(model, [int(i) for i in the_plan.provenance[DROPPED_LAYERS].split(",")])
    passes = [*parse_pipeline("couple"), Replay(plan=the_plan), *parse_pipeline(
        f"rewrite,verify{{strict={str(verify).lower()},repair=0}}")]
    res = _prune_once(model, example_inputs, passes, None, None, 0, as_progress(progress), input_shapes, False, 0,
                      allow_static=allow_static)
    res.report["plan"] = {"model": the_plan.model, "target": dict(the_plan.target), "criterion": the_plan.criterion,
                          "allocation": the_plan.allocation, "graph": {k: v for k, v in the_plan.graph.items()
                                                                       if k not in ("weights", "readers")}}
    return res


def _hidden_multiple(model: Any) -> int:
    """transformers configs validate ``hidden_size % num_attention_heads == 0``: the hidden size
    keeps a multiple of the head count."""
    heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
    return heads if isinstance(heads, int) and heads > 1 else 1


# the plan's provenance key for decoder layers removed by layers= (apply removes them first)
DROPPED_LAYERS = "decoder_layers_removed"

# hidden-size pruning by default? chosen by tools/bench_llm_quality.py (docs/LLM.md)
HIDDEN_DEFAULT = False

# how far above its target a result may land and still count as met (relative excess)
MISS_TOLERANCE: dict[str, float] = {"flops": 0.01, "macs": 0.01, "params": 0.01, "latency": 0.05}


def target_verdict(report: dict[str, Any]) -> dict[str, Any]:
    """``target_met`` / ``miss`` of a prune report: FLOPs, MACs, params met when the achieved
    fraction is at most 1% (relative) above the target and the target was reachable; latency met
    when the measured (else predicted) latency is at most 5% above the target (the closed loop's
    tolerance). Landing below the target is never a miss."""
    metric, value = next(iter(report["target"].items()))
    if metric.startswith("latency"):
        lat = report.get("latency") or {}
        if "measured_ms" in lat:
            miss = float(lat["miss"])
        else:  # measure=False: judge the calibrated prediction
            target_ms = value * lat["measured_before_at_calibration_ms"] if metric == "latency" else value
            miss = lat["predicted_ms"] / target_ms - 1.0
        tol = MISS_TOLERANCE["latency"]
        return {"target_met": bool(miss <= tol), "miss": miss, "tolerance": tol}
    achieved = float(report["achieved"][metric])
    miss = achieved / value - 1.0 if value else 0.0
    tol = MISS_TOLERANCE[metric]
    return {"target_met": bool(report["target_reachable"] and miss <= tol), "miss": miss, "tolerance": tol}


# What pruning without calibration data costs, measured (docs/QUALITY.md, all-MiniLM-L6-v2, 256
# held-out sentences): cosine of the pruned embeddings to the dense ones with the no-calib default
# (l2, uniform) against the calibrated default (256 calibration sentences).
NO_CALIB_NOTE = (
    "no calibration data: channels were ranked by weight magnitude (l2) and nothing was refit; on "
    "all-MiniLM-L6-v2 at 0.8 FLOPs that keeps 0.81 cosine to the dense embeddings against 0.98 with "
    "calibration (0.53 against 0.91 at 0.5): pass calib=[batch, ...] (CLI: --calib batches.pt)"
)


@dataclass(frozen=True)
class Recipe:
    """What :func:`prune` runs when the user leaves the criterion, reconstruction or allocation unset."""

    criterion: str
    reconstruct: Sequence[str] | str
    allocation: str | None  # None: default_allocation decides
    note: str = ""
    normalize: str = "group"  # the score pass's normalize= (kind: repeated blocks compete on raw scores)


def default_recipe(criterion: str | None, reconstruct: Sequence[str] | str | None, allocation: str | None,
                   calibrated: bool, onnx: bool = False) -> Recipe:
    """The defaults: with calibration data and nothing chosen, the best measured recipe (``wanda``
    scores normalized per layer kind, ``lsq,bias`` reconstruction, ``global`` allocation: docs/QUALITY.md,
    on MiniLM, the digits CNN and the byte LM); otherwise ``l2`` and no reconstruction, and, when no calibration data was
    given and no criterion chosen, a note on what that costs (:data:`NO_CALIB_NOTE`; not for an
    ONNX model, which takes no calibration data yet)."""
    if criterion is None and calibrated:
        return Recipe("wanda", ("lsq", "bias") if reconstruct is None else reconstruct, allocation or "global",
                      normalize="kind")
    note = NO_CALIB_NOTE if criterion is None and not calibrated and not onnx else ""
    return Recipe(criterion or "l2", () if reconstruct is None else reconstruct, allocation, note)


def default_allocation(latency_budget: bool, criterion: str) -> str:
    """``greedy`` for a latency budget with a loss-based criterion (taylor, fisher), whose scores
    compare across groups as the knapsack needs; ``uniform`` otherwise: on group-normalized
    magnitude scores the knapsack's cross-group trades lose real quality (MiniLM, docs/LATENCY.md)."""
    from .analysis.importance import CRITERIA

    crit = CRITERIA.get(criterion)
    return "greedy" if latency_budget and crit is not None and crit.loss_based else "uniform"


def _prune_once(
    model: Any, example_inputs: ExampleInputs, text: str | list[Any], calib: list[Any] | None,
    loss: Callable[[Any, ExampleInputs], torch.Tensor] | None, seed: int, progress: Callable[[str], None] | None,
    input_shapes: dict[str, tuple[int, ...]] | None, measure: bool, iterate: int, allow_static: bool = False,
) -> PruneResult:
    from graphprune.passes import PassContext, parse_pipeline, run_pipeline
    from graphprune.passes.latency_loop import LatencyLoop

    passes = parse_pipeline(text) if isinstance(text, str) else list(text)
    latency_budget = any(p.name == "allocate" and (p.latency is not None or p.latency_ms is not None) for p in passes)
    if measure and latency_budget and not any(p.name == LatencyLoop.name for p in passes):
        passes.append(LatencyLoop(iterate=iterate))
    t0 = time.perf_counter()
    capture_info: dict[str, Any] | None = None
    onnx_input = _is_onnx(model)
    if onnx_input:
        if progress:
            progress("load")
        prep, feeds, graph, _ = _load_onnx_source(model, example_inputs, input_shapes)
        ctx = PassContext(model=None, example_inputs=feeds, onnx=prep, seed=seed)
        ctx.records.timings["capture"] = time.perf_counter() - t0
        graph = run_pipeline(passes, graph, ctx, progress)
        example_inputs = feeds
    else:
        assert isinstance(model, nn.Module)
        was_training = model.training
        model.eval()
        try:
            if progress:
                progress("capture")
            cap = capture(model, example_inputs)
            ctx = PassContext(model=model, example_inputs=example_inputs, program=cap.program, fragments=cap.fragments,
                              calib=calib, loss=loss, seed=seed)
            ctx.records.timings["capture"] = cap.seconds
            graph = run_pipeline(passes, cap.graph, ctx, progress)
            if cap.fragments is not None:
                capture_info = _check_fragments(cap, ctx, verify=not any(p.name == "verify" and not getattr(p, "strict", True)
                                                          for p in passes))
        finally:
            model.train(was_training)
    if ctx.pruned is None or ctx.plan is None or ctx.coupling is None:
        raise OptionError(f"pipeline {text!r} did not produce a model; it needs couple, allocate (or replay) and "
                          "rewrite")
    ctx.records.timings["total"] = time.perf_counter() - t0
    kept = kept_indices(ctx.coupling, ctx.plan.removed_mask(ctx.coupling.n_units))
    plan: PruningPlan = ctx.plan
    report = prune_report(graph, ctx, kept)
    if onnx_input:
        report["input_shapes"] = {k: list(v) for k, v in ctx.onnx.input_shapes.items()}
        if ctx.onnx.symbolic:
            report["symbolic_dims"] = dict(ctx.onnx.symbolic)
        if ctx.onnx_dynamic:
            report["onnx_dynamic"] = dict(ctx.onnx_dynamic)
            if not ctx.onnx_dynamic.get("kept") and not allow_static:
                from .rewrite.onnx_dynamic import refuse_static

                refuse_static(graph.name, report)
    if ctx.latency is not None:
        report["latency"] = latency_report(graph, ctx, ctx.records.latency_loop)
    if capture_info is not None:
        report["capture"] = capture_info
    original_config = copy.deepcopy(getattr(model, "config", None)) if isinstance(model, nn.Module) else None
    return PruneResult(ctx.pruned, report, plan, example_inputs, ctx.coupling, plan.removed_mask(ctx.coupling.n_units),
                       original_config)


def _check_fragments(cap: Any, ctx: Any, verify: bool) -> dict[str, Any]:
    """A model captured as fragments: what was captured (``report["capture"]``) and the oracle on
    the tensors before the barriers (``["pre_barrier_check"]``; frontends/fragments.py), which
    raises like ``verify`` unless the pipeline's verify is not strict."""
    from .errors import VerificationError
    from .frontends.fragments import check_pre_barrier
    from .verification import masked_original

    info: dict[str, Any] = cap.fragments.as_dict()
    ctx.records.notes.append(f"torch.export could not capture {type(ctx.model).__name__} whole; captured as fragments "
                     f"{', '.join(info['fragments'])}; glue reading their outputs is a barrier "
                     f"({', '.join(sorted(info['glue_barriers'])) or 'none'})")
    res = ctx.records.pre_barrier_check  # the verify pass's, taken before any reconstruction
    if res is None:
        if ctx.pruned is None or ctx.records.reconstructed or ctx.plan is None:
            return info
        masked = ctx.masked if ctx.masked is not None else masked_original(
            ctx.model, ctx.coupling, ctx.plan.removed_mask(ctx.coupling.n_units))
        res = check_pre_barrier(masked, ctx.pruned, cap.fragments, cap.args, cap.kwargs)
    info["pre_barrier_check"] = res
    if not res["ok"] and verify:
        raise VerificationError(f"pruned {type(ctx.model).__name__} differs from the masked original before the "
                                f"barriers: {res['detail']}")
    return info


def _prune_steps(
    model: nn.Module, once: Callable[[nn.Module, float], PruneResult], metric: str, frac: float, steps: int,
    callback: Callable[[nn.Module, int], None] | None,
) -> PruneResult:
    """k pruning steps; step i targets ``1 - (1 - frac) * i / k`` of the ORIGINAL cost, asking each
    step for (goal / current cost) of its own input, so rounding in one step is absorbed by the next."""
    res = once(model, 1.0 - (1.0 - frac) / steps)
    first, original_config = res.report, res.original_config
    total0 = float(first[f"{metric}_before"])
    plan, history = res.plan, [res.report["achieved"][metric]]
    for i in range(2, steps + 1):
        if callback is not None:
            callback(res.model, i - 1)
        goal = (1.0 - (1.0 - frac) * i / steps) * total0
        current = float(res.report[f"{metric}_after"])
        res = once(res.model, min(1.0, goal / current) if current > 0 else 1.0)
        plan = plan.compose(res.plan)
        history.append(res.report["achieved"][metric])
    report = dict(res.report)
    report.update({
        "target": {metric: frac},
        "achieved": {metric: float(report[f"{metric}_after"]) / total0 if total0 else 1.0},
        "flops_before": first["flops_before"], "params_before": first["params_before"],
        "macs_before": first["macs_before"],
        "steps": {"count": steps, "achieved_per_step_of_input": history},
    })
    plan = dataclasses.replace(plan, target={metric: frac})
    return PruneResult(res.model, report, plan, res.example_inputs, res.coupling, res.removed, original_config)


def analysis_report(graph: Graph, coupling: Coupling) -> dict[str, Any]:
    from .analysis.depth import depth_eligible

    cost = count(graph)
    whole = depth_eligible(coupling)
    layers = []
    for node in graph.nodes:
        w = [v for v in node.inputs if v is not None and v.kind == "param"]
        if reads(node) is not None or node.op in ("embedding", "sdpa") or w:
            layers.append({
                "node": node.name, "op": node.op, "scope": node.scope,
                "weight": w[0].source if w else None, "shape": list(w[0].shape) if w else list(node.output.shape),
                "flops": cost.per_node.get(node.name, 0.0),
                "macs": cost.per_node_macs.get(node.name, 0.0),
                "params": int(sum(int(np.prod(v.shape)) for v in w)),
                "prunable": bool(w and any(coupling.prunable(w[0], ax) for ax in range(w[0].rank))),
            })
    return {
        "model": graph.name,
        "nodes": len(graph.nodes),
        "flops": cost.flops,
        "macs": cost.macs,
        "params": cost.params,
        "units": coupling.n_units,
        "groups": [
            {"id": g.id, "units": g.size, "width": g.width, "depth_eligible": g.id in whole,
             "spaces": [f"{n}[{a}]" for n, a in g.spaces],
             "weights": [f"{graph.value(n).source}[{a}]" for n, a in g.spaces if graph.value(n).is_weight]}
            for g in coupling.groups
        ],
        "depth_eligible": len(whole),
        "barriers": {op: names for op, names in coupling.barriers.items()},
        "layers": layers,
    }


def latency_report(graph: Graph, ctx: Any, loop: dict[str, Any] | None) -> dict[str, Any]:
    """Predicted (calibrated table model) and, when measured, actual latency of the result."""
    from .analysis.allocation import ShapeTable
    from .cost import predict

    setup = ctx.latency
    shapes = ShapeTable(ctx.coupling).shapes(ctx.plan.removed_mask(ctx.coupling.n_units))
    pred_before = predict(setup.model, graph).total
    pred_after = predict(setup.model, graph, shapes).total
    out: dict[str, Any] = {
        **setup.info(),
        "predicted_before_ms": pred_before * 1e3,
        "predicted_ms": pred_after * 1e3,
        "measured_before_at_calibration_ms": setup.base_measured * 1e3,
    }
    if loop is not None:
        out.update(loop)
        meas = loop["measured_ms"]
        out["prediction_error"] = (pred_after * 1e3 - meas) / meas
    return out


def module_path(scope: str) -> str:
    """A node scope as a dotted module path; ONNX node names from the PyTorch exporters
    (``/layer2/layer2.0/downsample/downsample.0/Conv``: each part repeats its parent's name) are
    read as the path they spell (``layer2.0.downsample.0``)."""
    if "/" not in scope:
        return scope
    path: list[str] = []
    last = ""
    for part in [p for p in scope.split("/") if p][:-1]:
        path.append(part[len(last) + 1:] if last and part.startswith(last + ".") else part)
        last = part
    return ".".join(path)


def block_of(scope: str) -> str:
    """The block a node's scope belongs to: the module path (:func:`module_path`) up to its first
    numbered part (``layer1.0.conv1`` -> ``layer1.0``, ``encoder.layer.3.attention.self`` ->
    ``encoder.layer.3``), else its first part (``fc``)."""
    parts = [p for p in module_path(scope).split(".") if p]
    if not parts:
        return "(top level)"
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0]


def barrier_why(graph: Graph, coupling: Coupling, budget: int = 200) -> dict[str, list[str]]:
    """For each barrier op, the ``--why`` chain (:meth:`Coupling.explain`) of one weight channel it
    freezes: the first weight (output axis, channel 0) whose chain ends at one of the op's nodes;
    else the chain of the first barrier node's first input. ``budget`` caps the explain calls."""
    out: dict[str, list[str]] = {}
    weights = [v for v in graph.weights() if v.rank >= 1 and v.shape[0] > 0]
    for op, names in coupling.barriers.items():
        marks = tuple(repr(n) for n in names)
        found: list[str] | None = None
        for v in weights:
            if budget <= 0:
                break
            if coupling.prunable(v, 0):
                continue
            budget -= 1
            lines = coupling.explain(v, 0, 0)
            if any(m in lines[0] for m in marks):
                found = lines
                break
        if found is None:
            node = next(n for n in graph.nodes if n.name == names[0])
            v = next((x for x in [*node.inputs, *node.outputs] if x is not None and x.rank >= 1 and x.shape[-1] > 0), None)
            found = coupling.explain(v, v.rank - 1, 0) if v is not None else [f"{op} node {names[0]!r} has no rule"]
        out[op] = found
    return out


def layer_rows(graph: Graph, before: Any, after: Any, shape: Any,
               latency: tuple[dict[str, float], dict[str, float], float] | None = None) -> list[dict[str, Any]]:
    """Per costed node: its block, weight, output width and FLOPs/MACs before and after (and the
    calibrated predicted latency in microseconds when a latency model priced the run): what the
    HTML report draws, kept in the JSON so the page can be rebuilt from it."""
    rows = []
    for node in graph.nodes:
        w = next((v for v in node.inputs if v is not None and v.kind == "param" and v.rank >= 1), None)
        fb = before.per_node.get(node.name, 0.0)
        if not fb and w is None:
            continue
        out = node.output
        r = reads(node)
        width_ax = r.y_axis if r is not None and r.y_axis < out.rank else -1
        row: dict[str, Any] = {
            "node": node.name, "op": node.op, "scope": node.scope, "block": block_of(node.scope) if node.scope else "(top level)",
            "module": module_path(node.scope),
            "weight": w.source if w is not None else None,
            "width_before": out.shape[width_ax] if out.rank else 1,
            "width_after": shape(out)[width_ax] if out.rank else 1,
            "flops_before": fb, "flops_after": after.per_node.get(node.name, 0.0),
            "macs_before": before.per_node_macs.get(node.name, 0.0), "macs_after": after.per_node_macs.get(node.name, 0.0),
        }
        if latency is not None:
            pb, pa, scale = latency
            row["predicted_us_before"] = pb.get(node.name, 0.0) * scale * 1e6
            row["predicted_us_after"] = pa.get(node.name, 0.0) * scale * 1e6
        rows.append(row)
    return rows


def prune_report(graph: Graph, ctx: Any, kept_list: list[KeptIndices]) -> dict[str, Any]:
    from .analysis.allocation import ShapeTable
    from .rewrite.std_conv import fold_notes

    coupling: Coupling = ctx.coupling
    plan: PruningPlan = ctx.plan
    removed: np.ndarray = plan.removed_mask(coupling.n_units)
    shapes = ShapeTable(coupling).shapes(removed)
    before = count(graph)
    after = count(graph, shapes)
    widths = {
        k.value.source or k.value.name: {"before": list(k.value.shape), "after": [
            len(k.axes[ax]) if ax in k.axes else s for ax, s in enumerate(k.value.shape)
        ]}
        for k in kept_list
    }
    metric, frac = next(iter(plan.target.items()))
    kept = {
        "flops": after.flops / before.flops if before.flops else 1.0,
        "macs": after.macs / before.macs if before.macs else 1.0,
        "params": after.params / before.params if before.params else 1.0,
    }
    budget = metric
    if metric.startswith("latency"):
        metric = "flops"
    achieved = kept[metric]
    latency_nodes = None
    if ctx.latency is not None:
        from .cost import predict

        lm = ctx.latency.model
        latency_nodes = (predict(lm, graph).per_node, predict(lm, graph, shapes).per_node, lm.calibration.scale)
    return {
        "model": graph.name,
        "target": dict(plan.target),
        "achieved": {metric: achieved},
        "kept": kept,
        "budget": {"metric": budget, "counts": METRICS.get(budget, "measured latency on the target runtime")},
        "target_reachable": bool(ctx.allocation.reachable),
        "flops_before": before.flops,
        "flops_after": after.flops,
        "macs_before": before.macs,
        "macs_after": after.macs,
        "params_before": before.params,
        "params_after": after.params,
        "layers": layer_rows(graph, before, after, shapes, latency_nodes),
        "criterion": ctx.criterion,
        "allocation": ctx.allocation.policy,
        "round_to": plan.round_to,
        "units": coupling.n_units,
        "units_removed": int(removed.sum()),
        "groups": len(coupling.groups),
        "groups_removed_whole": sum(bool(removed[g.units].all()) for g in coupling.groups),
        "barriers": {op: names for op, names in coupling.barriers.items()},
        "barrier_why": barrier_why(graph, coupling),
        "group_plan": [
            {"id": g.id, "units": g.size, "kept": int((~removed[g.units]).sum()), "width": g.width,
             "weights": [f"{graph.value(n).source}[{a}]" for n, a in g.spaces if graph.value(n).is_weight][:6]}
            for g in coupling.groups
        ],
        "route": ctx.route,
        "route_reason": ctx.route_reason,
        "verification": ctx.verification.as_dict() if ctx.verification is not None else None,
        "pinned_after_check": list(ctx.records.pinned_after_check),
        "widths": widths,
        "timings": {k: round(v, 4) for k, v in ctx.records.timings.items()},
        "reconstruction": list(ctx.records.reconstructed),
        "notes": list(ctx.records.notes) + fold_notes(coupling, removed, ctx.route),
    }
