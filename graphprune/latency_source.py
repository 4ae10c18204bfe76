"""Timing whole models of either source kind (PyTorch module or ONNX file) on a runtime.

Latency targeting needs two whole-model measurements whose mechanics depend on where the model
came from; a :class:`ModelTimer` hides that from the calibration and the closed loop:

- ``measure_masks(masks)``: seconds per run of the model pruned by each removal mask (one bool
  per coupling unit; the all-False mask is the original), all timed side by side (interleaved);
- ``measure(plan, built=None)``: (original, pruned) seconds per run, side by side, of the model
  the :class:`~graphprune.plan.PruningPlan` ``plan`` makes: ``built`` when the caller already
  rewrote it (the latency loop passes the rewrite pass's output), else rebuilt here from the
  plan's removed units;
- ``measure_pair(pruned)``: (original, pruned) seconds per run of a model already built.

:class:`TorchTimer` rewrites the nn.Module (module route, else fx route) and times the modules
with :func:`.cost.profile.measure_models` (exported to ONNX for onnxruntime, eager for torch).
:class:`OnnxTimer` rewrites the prepared ONNX model with :func:`.rewrite.rewrite_onnx` (static
shapes), writes each model to a temporary file and times the files with
:func:`.cost.profile.measure_onnx` on fixed feeds: the user's example inputs where given, random
ones of the bound input shapes for the other inputs. The original is timed as prepared
(constant-folded, input shapes bound), the model the pruned one is rewritten from, so the
comparison measures what pruning changed. Only onnxruntime can time an ONNX file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .cost.profile import measure_models, measure_onnx
from .cost.runtimes import Runtime
from .errors import OptionError
from .ir import Graph
from .plan import PruningPlan

__all__ = ["ModelTimer", "OnnxTimer", "TorchTimer", "check_onnx_runtime", "make_timer", "torch_rewriter"]


class ModelTimer(Protocol):
    runtime: Runtime
    kind: str  # "torch" | "onnx": part of the calibration's cache key

    def measure_masks(self, masks: Sequence[np.ndarray]) -> list[float]: ...

    def measure(self, plan: PruningPlan, built: Any = None) -> tuple[float, float]: ...

    def measure_pair(self, pruned: Any) -> tuple[float, float]: ...


def check_onnx_runtime(runtime: str) -> None:
    """Only onnxruntime can time an ONNX model; the error names the option and the way out."""
    if not runtime.startswith("onnxruntime"):
        raise OptionError(
            f"runtime={runtime!r} (--runtime {runtime}) cannot time an ONNX model: it runs PyTorch modules; "
            "use runtime='onnxruntime' (the default) for an .onnx source, or prune the PyTorch model to target "
            f"{runtime!r}"
        )


def torch_rewriter(model: torch.nn.Module, program: Any, graph: Graph, coupling: Any) -> Callable[[np.ndarray], torch.nn.Module]:
    """Removal mask -> pruned module: the module route, else the fx route (which always follows
    the graph)."""
    from .rewrite import rewrite_fx, rewrite_module

    def rewrite(removed: np.ndarray) -> torch.nn.Module:
        try:
            return rewrite_module(model, coupling, removed)
        except Exception:  # the module route may refuse; the fx route always follows the graph
            return rewrite_fx(program, graph, coupling, removed)

    return rewrite


@dataclass
class TorchTimer:
    runtime: Runtime
    model: torch.nn.Module
    example_inputs: Any
    rewrite: Callable[[np.ndarray], torch.nn.Module]
    n_units: int  # the coupling's: the length of a plan's removal mask
    kind: str = "torch"

    def measure(self, plan: PruningPlan, built: Any = None) -> tuple[float, float]:
        return self.measure_pair(built if built is not None else self.rewrite(plan.removed_mask(self.n_units)))

    def measure_masks(self, masks: Sequence[np.ndarray]) -> list[float]:
        models = [self.rewrite(m) if m.any() else self.model for m in masks]
        return measure_models(models, self.example_inputs, self.runtime)

    def measure_pair(self, pruned: Any) -> tuple[float, float]:
        a, b = measure_models([self.model, pruned], self.example_inputs, self.runtime)
        return a, b


@dataclass
class OnnxTimer:
    runtime: Runtime
    prep: Any  # graphprune.frontends.PreparedOnnx
    graph: Graph
    coupling: Any
    feeds: list[np.ndarray]  # in the order of the prepared model's graph inputs
    kind: str = "onnx"

    def _time(self, models: Sequence[Callable[[], Any]]) -> list[float]:
        """Write each model (built lazily, one at a time) to a temporary file, then time the files."""
        with tempfile.TemporaryDirectory(prefix="graphprune-lat-") as tmp:
            paths = []
            for i, build in enumerate(models):
                p = Path(tmp) / f"m{i}.onnx"
                p.write_bytes(build().SerializeToString())
                paths.append(p)
            return measure_onnx(paths, self.feeds, self.runtime)

    def measure_masks(self, masks: Sequence[np.ndarray]) -> list[float]:
        from .rewrite import rewrite_onnx

        def build(m: np.ndarray) -> Callable[[], Any]:
            return (lambda: rewrite_onnx(self.prep.model, self.graph, self.coupling, m)) if m.any() else (lambda: self.prep.model)

        return self._time([build(m) for m in masks])

    def measure(self, plan: PruningPlan, built: Any = None) -> tuple[float, float]:
        from .rewrite import rewrite_onnx

        if built is None:
            built = rewrite_onnx(self.prep.model, self.graph, self.coupling, plan.removed_mask(self.coupling.n_units))
        return self.measure_pair(built)

    def measure_pair(self, pruned: Any) -> tuple[float, float]:
        a, b = self._time([lambda: self.prep.model, lambda: pruned])
        return a, b


def make_timer(
    runtime: Runtime, graph: Graph, coupling: Any, *, model: torch.nn.Module | None = None, example_inputs: Any = None,
    program: Any = None, onnx: Any = None,
) -> ModelTimer:
    """The timer for a source: ``onnx`` (a PreparedOnnx, with ``example_inputs`` a dict of arrays
    or None) or ``model`` with its ``example_inputs`` and exported ``program``."""
    if onnx is not None:
        check_onnx_runtime(runtime.name)
        from .frontends.onnx_model import ordered_feeds

        return OnnxTimer(runtime, onnx, graph, coupling, ordered_feeds(onnx, example_inputs))
    if model is None:
        raise OptionError("a latency budget needs a model to measure: a PyTorch model with example inputs, or an .onnx file")
    return TorchTimer(runtime, model, example_inputs, torch_rewriter(model, program, graph, coupling), coupling.n_units)
