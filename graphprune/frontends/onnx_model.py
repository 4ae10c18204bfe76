"""Loading and preparing ONNX models for analysis.

``load_onnx`` accepts a path or a ModelProto and turns every bad input into a SourceError with one
clear line: not an ONNX file, a truncated file, missing external data, an invalid graph, a
quantized (QDQ/QOperator) graph. ``prepare`` then binds symbolic input dims to concrete sizes
(``input_shapes``, else a representative size, below), folds constants and removes identities
with onnxscript's optimizer (shape sub-graphs become initializers that the rewriter can edit), and
infers a static shape for every tensor, running onnxruntime once for any the shape inference could not resolve.

Dynamic dims: symbolic input dims the user did not size are analyzed at a representative size
(:data:`REPRESENTATIVE`: a dim on axis 0 is a batch, 1; a spatial dim of a 4-D float input 224;
any other, e.g. a sequence, 128; smaller sizes are tried in turn when the model does not run at
those). ``PreparedOnnx.symbolic`` names the sizes chosen, and ``OnnxDynamic`` keeps the ORIGINAL
(unfolded, symbolic) model with the bindings at which the rewriter probes shape sub-graphs and the
verifier checks the pruned model (see ``rewrite/onnx_dynamic.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, numpy_helper

from ..errors import SourceError

__all__ = ["REPRESENTATIVE", "OnnxDynamic", "PreparedOnnx", "graph_inputs", "load_onnx", "ordered_feeds", "prepare", "random_feeds"]

log = logging.getLogger(__name__)

QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                       "MatMulInteger", "DynamicQuantizeLinear", "QGemm", "QAttention"})


def load_onnx(source: str | os.PathLike[str] | ModelProto) -> ModelProto:
    if isinstance(source, ModelProto):
        model = source
        where = "the ModelProto"
    else:
        path = Path(source)
        where = str(path)
        if not path.exists():
            raise SourceError(f"{where}: no such file")
        if path.is_dir():
            raise SourceError(f"{where}: is a directory, not an .onnx file")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises DecodeError and others
            raise SourceError(f"{where}: not a readable ONNX model ({type(exc).__name__}); is the file truncated?") from exc
        if not model.graph.node and not model.graph.input:
            raise SourceError(f"{where}: not an ONNX model (empty graph); is it the right file?")
        external = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
        if external:
            for t in external:
                loc = next((e.value for e in t.external_data if e.key == "location"), "")
                if not (path.parent / loc).is_file():
                    raise SourceError(
                        f"{where}: external data file {loc!r} (for {t.name!r}) is missing; keep it next to the model"
                    )
            try:
                onnx.load_external_data_for_model(model, str(path.parent))
            except Exception as exc:  # truncated or unreadable data files
                raise SourceError(f"{where}: cannot read its external data ({str(exc).splitlines()[0][:200]})") from exc
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise SourceError(f"{where}: invalid ONNX graph: {first[:300]}") from exc
    quant = sorted({n.op_type for n in model.graph.node if n.op_type in QUANT_OPS})
    if quant:
        raise SourceError(
            f"{where}: quantized graph ({', '.join(quant)}); prune the float model, then quantize the pruned one"
        )
    return model


def graph_inputs(model: ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _bind_inputs(model: ModelProto, input_shapes: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    """Give every graph input a static shape; symbolic dims not given default to 1 (``prepare``
    passes representative sizes); a dim named like a dim of a given input (e.g.
    ``attention_mask[1]`` and ``input_ids[1]`` both ``seq``) takes that size."""
    bound: dict[str, tuple[int, ...]] = {}
    given = dict(input_shapes or {})
    sized = _given_dim_params(model, given)
    names = [i.name for i in graph_inputs(model)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise SourceError(f"input shape given for {', '.join(map(repr, unknown))}, which is not a model input; inputs: {names}")
    for inp in graph_inputs(model):
        dims = inp.type.tensor_type.shape.dim
        if inp.name in given:
            shape = tuple(int(d) for d in given[inp.name])
            if len(shape) != len(dims):
                raise SourceError(f"input shape for {inp.name!r} has rank {len(shape)}; the model input has rank {len(dims)}")
            for ax, (d, n) in enumerate(zip(dims, shape, strict=True)):
                if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != n:
                    raise SourceError(
                        f"input shape for {inp.name!r}: axis {ax} is fixed at {d.dim_value} in the model, not {n}"
                    )
                if n < 1:
                    raise SourceError(f"input shape for {inp.name!r}: axis {ax} must be >= 1, got {n}")
        else:
            shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else sized.get(d.dim_param, 1)
                          for d in dims)
        for d, s in zip(dims, shape, strict=True):
            d.Clear()
            d.dim_value = s
        bound[inp.name] = shape
    return bound


def _given_dim_params(model: ModelProto, given: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """dim_param -> size, from the symbolic dims of the inputs the user gave shapes for."""
    sized: dict[str, int] = {}
    for inp in graph_inputs(model):
        shape = given.get(inp.name)
        dims = inp.type.tensor_type.shape.dim
        if shape is None or len(shape) != len(dims):
            continue
        for d, n in zip(dims, shape, strict=True):
            if d.dim_param:
                sized.setdefault(d.dim_param, int(n))
    return sized


# representative sizes for symbolic dims the user did not size, tried in order (batch dims stay 1)
REPRESENTATIVE: tuple[tuple[int, int], ...] = ((128, 224), (64, 64), (16, 16), (1, 1))


@dataclass
class OnnxDynamic:
    """What the rewriter needs to keep the default-bound symbolic input dims symbolic."""

    dims: dict[str, dict[int, str]]  # graph input -> axis -> dim_param (an unnamed dim: <input>_<axis>)
    original: ModelProto  # the loaded model, unfolded and symbolic (initializers listed as inputs dropped)
    base_shapes: dict[str, tuple[int, ...]]  # input shapes at the analysis binding (= PreparedOnnx.input_shapes)
    alt_shapes: dict[str, tuple[int, ...]]  # a second binding: the k-th dim name grows by k + 1
    check_shapes: list[dict[str, tuple[int, ...]]]  # bindings the verifier also runs (besides base and alt)


@dataclass
class PreparedOnnx:
    model: ModelProto  # static-shaped, constant-folded copy that analysis and rewriting use
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, int]
    input_shapes: dict[str, tuple[int, ...]]
    opset: int
    dynamic: OnnxDynamic | None = None  # set when the model has default-bound symbolic input dims
    symbolic: dict[str, int] | None = None  # dim name -> size analyzed at, for default-bound symbolic dims


def _opset(model: ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def prepare(model: ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None) -> PreparedOnnx:
    dims = _default_symbolic(model, input_shapes)
    if not dims:
        work, shapes, dtypes, bound = _prepare_once(model, input_shapes)
        return PreparedOnnx(work, shapes, dtypes, bound, _opset(work))
    for k, (other, spatial) in enumerate(REPRESENTATIVE):
        sizes = _representative(model, dims, other, spatial)
        note = _symbolic_note(model, input_shapes, sizes)
        try:
            work, shapes, dtypes, bound = _prepare_once(model, _with_sizes(model, input_shapes, dims, sizes), note)
            break
        except SourceError as exc:  # the model does not run at this size (a position table too short, ...)
            if k == len(REPRESENTATIVE) - 1:
                raise
            log.info("symbolic dims at %s: %s; trying smaller sizes", sizes, exc)
    log.info("symbolic input dims analyzed at %s", ", ".join(f"{k}={v}" for k, v in sizes.items()))
    prep = PreparedOnnx(work, shapes, dtypes, bound, _opset(work), symbolic=sizes)
    original = _without_initializer_inputs(model)
    names = sorted({p for axes in dims.values() for p in axes.values()})
    small = {p: 3 + 2 * k for k, p in enumerate(names)}
    prep.dynamic = OnnxDynamic(dims, original, bound, _alt_binding(bound, dims),
                               [_shapes_at(bound, dims, small)])
    return prep


def _representative(model: ModelProto, dims: Mapping[str, Mapping[int, str]], other: int, spatial: int) -> dict[str, int]:
    """dim name -> size: 1 for a dim on axis 0 (a batch), ``spatial`` for axes 2.. of a 4-D float
    input (an image), ``other`` for the rest (a sequence)."""
    types = {i.name: i.type.tensor_type for i in graph_inputs(model)}
    sizes: dict[str, int] = {}
    for name, axes in dims.items():
        tt = types[name]
        image = len(tt.shape.dim) == 4 and tt.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
        for ax, p in axes.items():
            size = 1 if ax == 0 else spatial if image and ax >= 2 else other
            sizes[p] = min(sizes.get(p, size), size)
    return sizes


def _shapes_at(bound: Mapping[str, tuple[int, ...]], dims: Mapping[str, Mapping[int, str]],
               sizes: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(sizes[dims[name][ax]] if ax in dims.get(name, {}) else s for ax, s in enumerate(shape))
            for name, shape in bound.items()}


def _with_sizes(model: ModelProto, given: Mapping[str, Sequence[int]] | None, dims: Mapping[str, Mapping[int, str]],
                sizes: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """The user's input shapes plus a full shape for every input with default-bound dims."""
    out = {k: tuple(int(d) for d in v) for k, v in (given or {}).items()}
    for inp in graph_inputs(model):
        if inp.name in dims:
            out[inp.name] = tuple(sizes[dims[inp.name][ax]] if ax in dims[inp.name] else int(d.dim_value)
                                  for ax, d in enumerate(inp.type.tensor_type.shape.dim))
    return out


def _without_initializer_inputs(model: ModelProto) -> ModelProto:
    """A copy of ``model`` without the initializers that older exporters also list as graph inputs
    (they are constants, not inputs)."""
    work = ModelProto()
    work.CopyFrom(model)
    inits = {t.name for t in work.graph.initializer}
    keep_inputs = [i for i in work.graph.input if i.name not in inits]
    del work.graph.input[:]
    work.graph.input.extend(keep_inputs)
    return work


def _prepare_once(model: ModelProto, input_shapes: Mapping[str, Sequence[int]] | None, note: str | None = None
                  ) -> tuple[ModelProto, dict[str, tuple[int, ...]], dict[str, int], dict[str, tuple[int, ...]]]:
    work = _without_initializer_inputs(model)
    bound = _bind_inputs(work, input_shapes)
    declared = {vi.name: vi for vi in work.graph.value_info}  # custom ops' output shapes, if the file has them
    del work.graph.value_info[:]
    try:
        work = _clean(work)
    except Exception as exc:  # clean-up is a nicety; analysis works on the raw graph too
        log.info("ONNX clean-up failed (%s); analyzing the graph unfolded", exc)
    _untie_small_initializers(work)
    try:
        inferred = onnx.shape_inference.infer_shapes(work, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise SourceError(f"ONNX shape inference failed: {str(exc).splitlines()[0][:200]}") from exc
    shapes, dtypes = _collect_shapes(inferred)
    note = _symbolic_note(model, input_shapes) if note is None else note
    if _has_symbolic_inputs(model):
        given = ", ".join(f"'{k}'={list(v)}" for k, v in bound.items())
        _check_binding(work, bound, note or f"; input shapes used: {given} -- check them")
    missing = [o for n in work.graph.node for o in n.output if o and o not in shapes]
    _shapes_from_declared(declared, missing, shapes, dtypes)
    missing = [o for o in missing if o not in shapes]
    if missing:
        _shapes_from_runtime(work, bound, missing, shapes, dtypes, note)
    return work, shapes, dtypes, bound


def _default_symbolic(model: ModelProto, input_shapes: Mapping[str, Sequence[int]] | None) -> dict[str, dict[int, str]]:
    """Input -> axis -> dim name, for symbolic dims the user did not size (an unnamed dim gets
    ``<input>_<axis>``)."""
    given = set(input_shapes or {})
    sized = _given_dim_params(model, dict(input_shapes or {}))
    out: dict[str, dict[int, str]] = {}
    for inp in graph_inputs(model):
        if inp.name in given:
            continue
        for ax, d in enumerate(inp.type.tensor_type.shape.dim):
            if not (d.HasField("dim_value") and d.dim_value > 0) and d.dim_param not in sized:
                out.setdefault(inp.name, {})[ax] = d.dim_param or f"{inp.name}_{ax}"
    return out


def _alt_binding(bound: Mapping[str, tuple[int, ...]], dims: Mapping[str, Mapping[int, str]]) -> dict[str, tuple[int, ...]]:
    """The second binding: the k-th distinct dim name moves by k + 1 (down from a size above
    2 * (k + 1), else up), so two symbolic dims never move alike (a batch is not taken for a
    sequence) and a representative size at a model's limit (its positions) stays within it."""
    names = sorted({p for axes in dims.values() for p in axes.values()})
    step = {p: k + 1 for k, p in enumerate(names)}
    alt = {}
    for name, shape in bound.items():
        axes = dims.get(name, {})
        alt[name] = tuple((s - step[axes[ax]] if s > 2 * step[axes[ax]] else s + step[axes[ax]]) if ax in axes else s
                          for ax, s in enumerate(shape))
    return alt


def _clean(model: ModelProto) -> ModelProto:
    """Inline functions, fold constants (shape sub-graphs become initializers), drop identities and
    dead nodes, lift constants to initializers -- with onnx-ir / onnxscript passes. Deliberately no
    fusion rewrites (BN folding would change the weights that are scored, so the same model pruned
    from PyTorch and from ONNX would keep different channels) and no initializer deduplication."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    import onnxscript.optimizer

    m = ir.serde.deserialize_model(model)
    common.InlinePass()(m)
    onnxscript.optimizer.fold_constants(m, onnx_shape_inference=True)
    for p in (common.IdentityEliminationPass(), common.RemoveUnusedNodesPass(),
              common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
              common.RemoveUnusedNodesPass()):
        p(m)
    return ir.serde.serialize_model(m)


def _untie_small_initializers(model: ModelProto) -> None:
    """Give each user of a shared 1-D float initializer its own copy.

    Exporters and optimizers deduplicate equal constants: the zero biases of twelve attention
    layers become one initializer, which would tie the heads of all layers into one group. A
    shared 1-D tensor is almost always such a coincidence (tied embeddings are 2-D and stay tied).
    """
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            t = inits.get(name)
            if t is None or len(t.dims) != 1 or t.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16,
                                                                   TensorProto.DOUBLE, TensorProto.BFLOAT16):
                continue
            uses[name] = uses.get(name, 0) + 1
            if uses[name] > 1:
                copy = TensorProto()
                copy.CopyFrom(t)
                copy.name = f"{name}__use{uses[name]}"
                model.graph.initializer.append(copy)
                node.input[i] = copy.name


def _collect_shapes(model: ModelProto) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, int] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = tt.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
            dtypes[vi.name] = tt.elem_type
    for t in model.graph.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
        dtypes[t.name] = t.data_type
    return shapes, dtypes


def random_feeds(model: ModelProto, shapes: Mapping[str, Sequence[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs matching the graph inputs' types and shapes (ints in [0, 2): valid indices)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in graph_inputs(model):
        shape = tuple(shapes[inp.name])
        np_type = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        if np.issubdtype(np_type, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(np_type)
        elif np_type == np.bool_:
            feeds[inp.name] = np.ones(shape, dtype=np.bool_)
        else:
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(np_type)
    return feeds


def ordered_feeds(prep: PreparedOnnx, example_inputs: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """An array for every graph input of the prepared model, in graph-input order: the user's where
    given, else random ones of the bound shape (:func:`random_feeds`)."""
    feeds = {**random_feeds(prep.model, prep.input_shapes), **dict(example_inputs or {})}
    return [np.asarray(feeds[i.name]) for i in graph_inputs(prep.model)]


def _symbolic_note(model: ModelProto, input_shapes: Mapping[str, Sequence[int]] | None,
                   sizes: Mapping[str, int] | None = None) -> str:
    """'; symbolic dims x[1]=128, ... were bound by default -- give their sizes ...' (sizes default to 1)."""
    dims = _default_symbolic(model, input_shapes)
    sym = [f"{k}[{ax}]={(sizes or {}).get(p, 1)}" for k, axes in dims.items() for ax, p in axes.items()]
    if not sym:
        return ""
    return f"; symbolic dims {', '.join(sym)} were bound by default -- give their sizes with --input-shape / input_shapes="


def _has_symbolic_inputs(model: ModelProto) -> bool:
    return any(not (d.HasField("dim_value") and d.dim_value > 0)
               for i in graph_inputs(model) for d in i.type.tensor_type.shape.dim)


def _check_binding(model: ModelProto, bound: dict[str, tuple[int, ...]], note: str) -> None:
    """Symbolic dims were bound by default: run the model once so a wrong guess (a symbolic channel
    dim, say) is reported against the input, not later as a failed verification."""
    if any(n.domain not in ("", "ai.onnx") for n in model.graph.node):
        return  # onnxruntime cannot run custom ops; shapes are checked by inference only
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        sess.run(None, random_feeds(model, bound))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise SourceError(f"the model does not run with the bound input shapes ({first}){note}") from exc


def _shapes_from_declared(declared: dict[str, onnx.ValueInfoProto], names: list[str],
                          shapes: dict[str, tuple[int, ...]], dtypes: dict[str, int]) -> None:
    """Static shapes the file declares in value_info (e.g. for custom-domain ops) fill the gaps."""
    for n in names:
        vi = declared.get(n)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            shapes[n] = tuple(int(d.dim_value) for d in dims)
            dtypes[n] = vi.type.tensor_type.elem_type


def _shapes_from_runtime(model: ModelProto, bound: dict[str, tuple[int, ...]], names: list[str],
                         shapes: dict[str, tuple[int, ...]], dtypes: dict[str, int], note: str = "") -> None:
    import onnxruntime as ort

    probe = ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for n in names:
        if n not in have:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        outs = sess.run(None, random_feeds(model, bound))
    except Exception as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        custom = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
        hint = f"; custom ops {', '.join(custom)}: declare their output shapes in value_info" if custom else ""
        raise SourceError(f"could not determine tensor shapes (onnxruntime: {first}){hint}{note}") from exc
    for meta, val in zip(sess.get_outputs(), outs, strict=True):
        if isinstance(val, np.ndarray):
            shapes.setdefault(meta.name, tuple(int(s) for s in val.shape))
            dtypes.setdefault(meta.name, int(onnx.helper.np_dtype_to_tensor_dtype(val.dtype)))


def initializer_arrays(model: ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
