"""The masked-original oracle for ONNX models, run in onnxruntime.

Same statement as ``verification.py``: zero the consumer-side (reader) slices of removed units in
the original's initializers; the pruned model must then produce the same outputs on the same
inputs. Inputs are the user's feeds when given, plus random ones matching the graph inputs.

A pruned model whose symbolic dims were kept is also checked against the masked ORIGINAL graph
(``rewrite.onnx_dynamic.masked_original``, symbolic like the pruned one) at the analysis binding,
the second binding and a small one (:func:`verify_onnx_dynamic`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort
from onnx import ModelProto, numpy_helper

from .analysis.coupling import Coupling
from .frontends.onnx_model import OnnxDynamic, random_feeds
from .verification import VerifyResult

__all__ = ["masked_onnx", "run_onnx", "verify_onnx", "verify_onnx_dynamic"]


def masked_onnx(model: ModelProto, coupling: Coupling, removed: np.ndarray) -> ModelProto:
    out = ModelProto()
    out.CopyFrom(model)
    zero: dict[str, list[tuple[int, np.ndarray]]] = {}
    for vi, ax in sorted(coupling.readers):
        v = coupling.graph.values[vi]
        kept = coupling.kept(v, ax, removed)
        if len(kept) != v.shape[ax]:
            zero.setdefault(v.name, []).append((ax, np.setdiff1d(np.arange(v.shape[ax]), kept)))
    for t in out.graph.initializer:
        if t.name in zero:
            arr = numpy_helper.to_array(t).copy()
            for ax, gone in zero[t.name]:
                index = [slice(None)] * arr.ndim
                index[ax] = gone  # type: ignore[call-overload]
                arr[tuple(index)] = 0
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return out


def run_onnx(model: ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return [np.asarray(o) for o in sess.run(None, {k: v for k, v in feeds.items() if k in names})]


def verify_onnx(
    original: ModelProto, pruned: ModelProto, coupling: Coupling, removed: np.ndarray,
    input_shapes: Mapping[str, tuple[int, ...]], feeds: Mapping[str, np.ndarray] | None = None,
    trials: int = 1, rtol: float = 1e-4,
) -> VerifyResult:
    masked = masked_onnx(original, coupling, removed)
    all_feeds = ([dict(feeds)] if feeds else []) + [random_feeds(original, input_shapes, seed=s) for s in range(trials)]
    return _compare(masked, pruned, all_feeds, rtol)


def verify_onnx_dynamic(
    dyn: OnnxDynamic, prepared: ModelProto, pruned: ModelProto, coupling: Coupling, removed: np.ndarray,
    trials: int = 1, rtol: float = 1e-4,
) -> tuple[VerifyResult, list[dict[str, tuple[int, ...]]]]:
    """The pruned model (symbolic dims kept) against the masked original graph at each binding the
    masked original runs at (at least two); returns the result and the bindings checked."""
    from .rewrite.onnx_dynamic import masked_original

    masked = masked_original(dyn, prepared, coupling, removed)
    checked, worst = [], VerifyResult(True, 0.0, 0.0, rtol, 0)
    for shapes in [dyn.base_shapes, dyn.alt_shapes, *dyn.check_shapes]:
        feeds = [random_feeds(dyn.original, shapes, seed=s) for s in range(trials)]
        try:
            run_onnx(masked, feeds[0])
        except Exception:  # the model itself does not run at this size (e.g. longer than its positions)
            continue
        res = _compare(masked, pruned, feeds, rtol)
        checked.append(dict(shapes))
        if not res.ok:
            return res, checked
        worst = res if res.max_abs_err >= worst.max_abs_err else worst
    if len(checked) < 2:
        return VerifyResult(False, float("inf"), 0.0, rtol, 0, "the original runs at fewer than two input sizes"), checked
    return worst, checked


def _compare(masked: ModelProto, pruned: ModelProto, all_feeds: list[dict[str, np.ndarray]], rtol: float) -> VerifyResult:
    worst, scale = 0.0, 0.0
    for f in all_feeds:
        try:
            ref, got = run_onnx(masked, f), run_onnx(pruned, f)
        except Exception as exc:  # onnxruntime cannot run the model (custom ops, bad shapes)
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            return VerifyResult(False, float("inf"), 0.0, rtol, 0, f"onnxruntime cannot run the model: {first}")
        if len(ref) != len(got):
            return VerifyResult(False, float("inf"), 0.0, rtol, len(all_feeds), "output count differs")
        for i, (r, g) in enumerate(zip(ref, got, strict=True)):
            if r.shape != g.shape:
                return VerifyResult(False, float("inf"), 0.0, rtol, len(all_feeds),
                                    f"output {i} has shape {g.shape}, expected {r.shape}")
            if r.dtype.kind != "f":
                if not np.array_equal(r, g):
                    return VerifyResult(False, float("inf"), 0.0, rtol, len(all_feeds), f"integer output {i} differs")
                continue
            if r.size:
                worst = max(worst, float(np.abs(r.astype(np.float64) - g.astype(np.float64)).max()))
                scale = max(scale, float(np.abs(r).max()))
    tol = rtol * max(1.0, scale)
    return VerifyResult(worst <= tol, worst, scale, tol, len(all_feeds))
