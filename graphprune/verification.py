"""The verification oracle for structured pruning (DESIGN.md, "Verification").

In a copy of the ORIGINAL model, zero every consumer-side weight slice that reads a removed
channel (conv/linear input columns, o_proj columns of removed heads...). Removed channels then
contribute nothing anywhere, so the physically smaller model must produce the same outputs as
this masked original, on the example inputs and on random inputs of the same shapes. Nothing is
pruned => masked original == original, so "prune nothing" is checked as the identity.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from .analysis.coupling import Coupling
from .frontends.inputs import ExampleInputs, as_args_kwargs

__all__ = [
    "DTYPE_RTOL", "VerifyResult", "compare_outputs", "dtype_rtol", "find_culprits", "group_ops", "masked_original", "merge_results",
    "random_like_inputs", "suspect_op", "verify_pruned", "verify_structure",
]


# Relative tolerance of the oracle by output dtype (times max(1, max |reference|)). float32: the
# error of summing zeroed products in another order; float16 (10-bit mantissa, unit roundoff
# 4.9e-4) and bfloat16 (7-bit, 3.9e-3): a few roundings of the output's own scale, as the pruned
# model's reductions round at other points than the masked original's (measured on tiny LLaMA
# and MLP models in both dtypes, tests/llm_stream/test_dtypes.py: errors stay well inside these).
DTYPE_RTOL: dict[torch.dtype, float] = {
    torch.float64: 1e-4, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2,
}


def dtype_rtol(dtype: torch.dtype, rtol: float = 1e-4) -> float:
    """The oracle's relative tolerance for outputs of ``dtype``: ``rtol`` or the dtype's floor."""
    return max(rtol, DTYPE_RTOL.get(dtype, rtol))


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    max_abs_err: float
    max_ref: float
    tolerance: float
    checks: int
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "max_abs_err": self.max_abs_err, "max_ref": self.max_ref,
                "tolerance": self.tolerance, "checks": self.checks, "detail": self.detail}


def masked_original(model: nn.Module, coupling: Coupling, removed: np.ndarray) -> nn.Module:
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for vi, ax in sorted(coupling.readers):
            v = coupling.graph.values[vi]
            if v.source is None or (vi, ax) in coupling.std_weights:
                continue
            kept = coupling.kept(v, ax, removed)
            if len(kept) == v.shape[ax]:
                continue
            gone = np.setdiff1d(np.arange(v.shape[ax]), kept)
            mod_path, _, name = v.source.rpartition(".")
            t = getattr(masked.get_submodule(mod_path) if mod_path else masked, name)
            t.index_fill_(ax, torch.as_tensor(gone, dtype=torch.long), 0.0)
        _zero_statistic_writers(masked, coupling, removed)
    _mask_router_logits(masked, coupling, removed)
    return masked


class _RouterLogits(torch.overrides.TorchFunctionMode):
    """Removed experts' logits are -inf: ``linear`` with a router weight fills those columns."""

    def __init__(self, rows: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.rows = rows  # id(weight parameter) -> removed rows

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        w = args[1] if len(args) > 1 else (kwargs or {}).get("weight")
        if func is torch.nn.functional.linear and id(w) in self.rows:
            out = out.index_fill(-1, self.rows[id(w)], float("-inf"))
        return out


def _mask_router_logits(masked: nn.Module, coupling: Coupling, removed: np.ndarray) -> None:
    """Whole MoE experts (rules/moe.py): hooks on the masked COPY run its forward under a mode
    that sets removed experts' router logits to -inf (their softmax weight is then exactly 0)."""
    from .rules.moe import removed_router_rows

    gone = removed_router_rows(coupling, removed)
    if not gone:
        return
    rows = {id(masked.get_parameter(src)): torch.as_tensor(r, dtype=torch.long) for src, r in gone.items()}
    modes: list[_RouterLogits] = []

    def enter(_m: nn.Module, _a: Any) -> None:
        modes.append(_RouterLogits(rows))
        modes[-1].__enter__()

    def leave(_m: nn.Module, _a: Any, _o: Any) -> None:
        modes.pop().__exit__(None, None, None)

    masked.register_forward_pre_hook(enter)
    masked.register_forward_hook(leave, always_call=True)


def _zero_statistic_writers(masked: nn.Module, coupling: Coupling, removed: np.ndarray) -> None:
    """Hidden-size pruning (rules/hidden.py): a removed unit that a statistic (RMSNorm's mean)
    reduces over must be exactly 0 in the stream, so EVERY weight slice of it is zeroed, the
    writers (embedding columns, o_proj/down_proj rows and biases) as well as the readers. A
    standardized conv weight (rules/norm.py) stays whole: its input channels are zeroed on the
    activation side only, so its standardization is the original one."""
    if not coupling.statistics:
        return
    stat = coupling.statistic_units() & removed
    if not stat.any():
        return
    for v in coupling.graph.values:
        if v.source is None or not v.is_weight:
            continue
        for ax in range(v.rank):
            if (v.index, ax) in coupling.std_weights:
                continue
            u = coupling.units_of(v, ax)
            gone = np.flatnonzero((u >= 0) & stat[np.maximum(u, 0)])
            if not len(gone):
                continue
            mod_path, _, name = v.source.rpartition(".")
            t = getattr(masked.get_submodule(mod_path) if mod_path else masked, name)
            t.index_fill_(ax, torch.as_tensor(gone, dtype=torch.long), 0.0)


def random_like_inputs(example_inputs: ExampleInputs, seed: int = 0) -> ExampleInputs:
    """Same structure; float tensors replaced by N(0,1) noise, integer tensors kept."""
    g = torch.Generator().manual_seed(seed)

    def rnd(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return torch.randn(t.shape, generator=g, dtype=t.dtype)
        return t

    if isinstance(example_inputs, torch.Tensor):
        return rnd(example_inputs)
    if isinstance(example_inputs, dict):
        return {k: rnd(v) for k, v in example_inputs.items()}
    return tuple(rnd(t) for t in example_inputs)


def _run(model: nn.Module, inputs: ExampleInputs) -> list[torch.Tensor]:
    args, kwargs = as_args_kwargs(inputs)
    with torch.no_grad():
        out = model(*args, **kwargs)
    leaves, _ = tree_flatten(out)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def compare_outputs(ref: list[torch.Tensor], got: list[torch.Tensor], rtol: float = 1e-4) -> tuple[bool, float, float, str]:
    if len(ref) != len(got):
        return False, math.inf, 0.0, f"{len(got)} outputs, expected {len(ref)}"
    worst, scale, floor = 0.0, 0.0, rtol
    for i, (r, g) in enumerate(zip(ref, got, strict=True)):
        floor = max(floor, dtype_rtol(r.dtype, rtol)) if r.is_floating_point() else floor
        if r.shape != g.shape:
            return False, math.inf, 0.0, f"output {i} has shape {tuple(g.shape)}, expected {tuple(r.shape)}"
        if not r.is_floating_point():
            if not torch.equal(r, g):
                return False, math.inf, 0.0, f"integer output {i} differs"
            continue
        rf, gf = r.double(), g.double()
        worst = max(worst, float((rf - gf).abs().max()) if rf.numel() else 0.0)
        scale = max(scale, float(rf.abs().max()) if rf.numel() else 0.0)
    tol = floor * max(1.0, scale)
    return worst <= tol, worst, scale, ""


def verify_pruned(
    original: nn.Module,
    pruned: nn.Module,
    coupling: Coupling,
    removed: np.ndarray,
    example_inputs: ExampleInputs,
    random_trials: int = 0,
    rtol: float = 1e-4,
    include_example: bool = True,
    masked: nn.Module | None = None,
) -> VerifyResult:
    """Compare ``pruned`` with the masked original; pass ``masked`` to reuse one already built."""
    if masked is None:
        masked = masked_original(original, coupling, removed)
    inputs = [example_inputs] if include_example else []
    inputs += [random_like_inputs(example_inputs, seed=s) for s in range(random_trials)]
    worst, scale = 0.0, 0.0
    for x in inputs:
        ok, err, ref_max, detail = compare_outputs(_run(masked, x), _run(pruned, x), rtol)
        worst, scale = max(worst, err), max(scale, ref_max)
        if not ok:
            return VerifyResult(False, worst, scale, _tol(masked, rtol) * max(1.0, scale), len(inputs), detail)
    return VerifyResult(True, worst, scale, _tol(masked, rtol) * max(1.0, scale), len(inputs))


def _tol(model: nn.Module, rtol: float) -> float:
    """The tolerance a model's outputs get: the floor of its parameters' lowest-precision dtype."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return max([rtol] + [dtype_rtol(d, rtol) for d in dtypes])


def merge_results(a: VerifyResult, b: VerifyResult) -> VerifyResult:
    """One result for two sets of checks: ok only if both are."""
    scale = max(a.max_ref, b.max_ref)
    return VerifyResult(a.ok and b.ok, max(a.max_abs_err, b.max_abs_err), scale, max(a.tolerance, b.tolerance),
                        a.checks + b.checks, a.detail or b.detail)


def verify_structure(
    original: nn.Module, pruned: nn.Module, coupling: Coupling, removed: np.ndarray, example_inputs: ExampleInputs
) -> VerifyResult:
    """Shapes only (for a reconstructed model): planned weight shapes and output shapes."""
    from .rewrite.slicing import kept_indices

    state = dict(pruned.named_parameters(remove_duplicate=False))
    state.update(dict(pruned.named_buffers(remove_duplicate=False)))
    for k in kept_indices(coupling, removed):
        src = k.value.source
        if src is None or src not in state:
            continue
        want = tuple(len(k.axes[ax]) if ax in k.axes else s for ax, s in enumerate(k.value.shape))
        if tuple(state[src].shape) != want:
            return VerifyResult(False, math.inf, 0.0, 0.0, 1, f"{src} has shape {tuple(state[src].shape)}, planned {want}")
    ref, got = _run(masked_original(original, coupling, removed), example_inputs), _run(pruned, example_inputs)
    if len(ref) != len(got):
        return VerifyResult(False, math.inf, 0.0, 0.0, 1, f"{len(got)} outputs, expected {len(ref)}")
    for i, (r, g) in enumerate(zip(ref, got, strict=True)):
        if r.shape != g.shape:
            return VerifyResult(False, math.inf, 0.0, 0.0, 1, f"output {i} has shape {tuple(g.shape)}, expected {tuple(r.shape)}")
    return VerifyResult(True, 0.0, 0.0, 0.0, 1, "structure only (weights were reconstructed)")


def find_culprits(coupling: Coupling, removed: np.ndarray, fails: Callable[[np.ndarray], VerifyResult | None],
                  max_checks: int = 64) -> list[tuple[int, VerifyResult | None]]:
    """The removed groups responsible for a failed check, by bisection (delta debugging).

    ``fails(mask)`` rewrites and checks the model with only the units of ``mask`` removed and
    returns the failed result (None when it passes). A set known to fail is halved; a half that
    fails alone is searched further; when neither half fails alone (only together), the whole set
    is blamed. Returns ``(group id, failed result)`` pairs; at most ``max_checks`` rewrites.
    """
    budget = [max_checks]

    def only(gids: list[int]) -> np.ndarray:
        rem = np.zeros_like(removed)
        for gid in gids:
            u = coupling.groups[gid].units
            rem[u] = removed[u]
        return rem

    def check(gids: list[int]) -> VerifyResult | None:
        budget[0] -= 1
        return fails(only(gids))

    found: list[tuple[int, VerifyResult | None]] = []

    def search(gids: list[int], res: VerifyResult | None) -> None:
        if len(gids) == 1 or budget[0] < 2:
            found.extend((g, res) for g in gids)
            return
        half = len(gids) // 2
        a, b = gids[:half], gids[half:]
        ra = check(a)
        rb = check(b)
        if ra is not None:
            search(a, ra)
        if rb is not None:
            search(b, rb)
        if ra is None and rb is None:
            found.extend((g, res) for g in gids)

    gids = [g.id for g in coupling.groups if removed[g.units].any()]
    if gids:
        search(gids, None)
    return found


def group_ops(coupling: Coupling, gid: int) -> list[tuple[str, str]]:
    """(op, node name) of every node that reads or writes a space of group ``gid``, in graph order."""
    graph = coupling.graph
    names: set[str] = set()
    for vname, _ax in coupling.groups[gid].spaces:
        v = graph.value(vname)
        if v.producer is not None:
            names.add(v.producer.name)
        names.update(u.name for u in v.users)
    return [(n.op, n.name) for n in graph.nodes if n.name in names]


def suspect_op(coupling: Coupling, ops: list[tuple[str, str]]) -> str:
    """The op most likely to have the wrong rule among a failing group's ops: the rarest in the
    graph (an op the rest of the model exercises many times without failing is less suspect)."""
    freq: dict[str, int] = {}
    for n in coupling.graph.nodes:
        freq[n.op] = freq.get(n.op, 0) + 1
    return min((op for op, _ in ops), key=lambda op: (freq.get(op, 0), op)) if ops else ""
