"""Helpers shared by the ONNX tests: text graphs with random weights, unit tables, an independent
masked-original oracle and onnxruntime runs.

The independent oracle (``masked_by_plan``) does not use the library's reader set: it derives the
consumer-side ("contraction") axes of every initializer from the ONNX op types themselves
(Conv/ConvTranspose/Gemm/MatMul/Einsum semantics) and zeroes, on those axes, every index the
plan (``res.plan.kept``) removed. Removed channels then contribute nothing to the kept ones, so the
pruned dense model must equal it (DESIGN.md section 2, "Verification").
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx import ModelProto, helper, numpy_helper, parser

import graphprune as gp

__all__ = [
    "assert_close",
    "build",
    "canon",
    "contraction_axes",
    "masked_by_plan",
    "random_inputs",
    "run",
    "unit_table",
]


def build(text: str, weights: Mapping[str, tuple[int, ...]], ints: Mapping[str, np.ndarray] | None = None,
          seed: int = 0, check: bool = True) -> ModelProto:
    """Parse an ONNX text graph and add random float initializers (``var*``: positive) and the
    given integer/constant initializers."""
    m = parser.parse_model(text)
    rng = np.random.default_rng(seed)
    for name, shape in weights.items():
        arr = rng.standard_normal(shape).astype(np.float32)
        if name.startswith("var"):
            arr = np.abs(arr) + 0.5
        m.graph.initializer.append(numpy_helper.from_array(arr, name))
    for name, arr in (ints or {}).items():
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(arr), name))
    if check:
        onnx.checker.check_model(m, full_check=True)
    return m


def canon(ids: np.ndarray) -> list[int]:
    """Relabel unit ids 0, 1, 2... in order of first appearance (-1, frozen, stays -1)."""
    seen: dict[int, int] = {}
    return [-1 if u < 0 else seen.setdefault(int(u), len(seen)) for u in np.asarray(ids).tolist()]


def unit_table(model: ModelProto | str, **kw: object) -> tuple[dict[str, list[np.ndarray]], gp.Analysis]:
    """initializer name -> per-axis raw unit ids (-1 frozen), via ``gp.analyze``."""
    a = gp.analyze(model, **kw)  # type: ignore[arg-type]
    table = {v.name: [a.coupling.units_of(v, ax) for ax in range(v.rank)] for v in a.graph.weights()}
    return table, a


def contraction_axes(model: ModelProto) -> tuple[dict[str, set[int]], set[str]]:
    """(initializer -> axes that are summed over against an activation, op types not understood).

    Conv W[O, I/g, k..]: axis 1 (when I/g > 1); ConvTranspose W[I, O/g, k..]: axis 0; Gemm: B axis
    1 if transB else 0, A axis 0 if transA else 1; MatMul: right operand axis -2, left operand
    axis -1; Einsum with two operands: the weight's letters that are summed away.
    """
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out: dict[str, set[int]] = {}
    unknown: set[str] = set()

    def add(name: str, axis: int) -> None:
        if name in inits and len(inits[name]) > 0:
            out.setdefault(name, set()).add(axis % len(inits[name]))

    for n in model.graph.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        if n.op_type == "Conv":
            if len(n.input) > 1 and n.input[1] in inits and inits[n.input[1]][1] > 1:
                add(n.input[1], 1)
        elif n.op_type == "ConvTranspose":
            add(n.input[1], 0)
        elif n.op_type == "Gemm":
            add(n.input[1], 1 if a.get("transB", 0) else 0)
            add(n.input[0], 0 if a.get("transA", 0) else 1)
        elif n.op_type == "MatMul":
            if n.input[1] in inits and len(inits[n.input[1]]) >= 2:
                add(n.input[1], -2)
            if n.input[0] in inits:
                add(n.input[0], -1)
        elif n.op_type == "Einsum":
            eq = a["equation"].decode() if isinstance(a["equation"], bytes) else a["equation"]
            lhs, _, rhs = eq.replace(" ", "").partition("->")
            terms = lhs.split(",")
            if len(terms) != 2 or not rhs:
                unknown.add("Einsum")
                continue
            for name, term in zip(n.input, terms, strict=True):
                if name in inits:
                    for ax, letter in enumerate(term):
                        if letter not in rhs:
                            add(name, ax)
        elif n.domain not in ("", "ai.onnx"):
            unknown.add(f"{n.domain}.{n.op_type}")
    return out, unknown


def masked_by_plan(model: ModelProto, kept: Mapping[str, Mapping[int, tuple[int, ...]]]) -> ModelProto:
    """Copy of ``model`` with removed indices zeroed on every contraction axis of every initializer."""
    axes, unknown = contraction_axes(model)
    assert not unknown, f"the independent oracle does not understand {sorted(unknown)}"
    out = ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        plan = kept.get(t.name)
        if not plan:
            continue
        arr = numpy_helper.to_array(t).copy()
        changed = False
        for ax in axes.get(t.name, ()):
            if ax in plan:
                gone = np.setdiff1d(np.arange(arr.shape[ax]), np.asarray(plan[ax], dtype=np.int64))
                if len(gone):
                    idx: list[object] = [slice(None)] * arr.ndim
                    idx[ax] = gone
                    arr[tuple(idx)] = 0
                    changed = True
        if changed:
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return out


def random_inputs(model: ModelProto, shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Fresh random feeds for the graph inputs (floats N(0,1); integers in [0, 2))."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        shape = tuple(shapes[inp.name])
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[inp.name] = np.ones(shape, dtype=np.bool_)
        else:
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def run(model: ModelProto | str, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    src = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return [np.asarray(o) for o in sess.run(None, {k: v for k, v in feeds.items() if k in names})]


def assert_close(ref: list[np.ndarray], got: list[np.ndarray], rtol: float = 2e-4, what: str = "") -> float:
    """Same count, shapes and dtypes; floats within ``rtol * max(1, max|ref|)``; returns the error."""
    assert len(ref) == len(got), f"{what}: {len(got)} outputs, expected {len(ref)}"
    worst = 0.0
    for i, (r, g) in enumerate(zip(ref, got, strict=True)):
        assert r.shape == g.shape, f"{what}: output {i} has shape {g.shape}, expected {r.shape}"
        if r.dtype.kind != "f":
            assert np.array_equal(r, g), f"{what}: integer output {i} differs"
            continue
        if r.size:
            err = float(np.abs(r.astype(np.float64) - g.astype(np.float64)).max())
            tol = rtol * max(1.0, float(np.abs(r).max()))
            assert err <= tol, f"{what}: output {i} differs by {err:.3g} (tolerance {tol:.3g})"
            worst = max(worst, err)
    return worst
