"""ONNX -> IR lowering table: ONNX op_type -> normalized op, data inputs and attrs.

The same op vocabulary as the ATen table, so every coupling and cost rule is shared. Inputs that
only carry shapes or indices (Reshape's shape, Slice's starts, Split's sizes) are read as
constants here and are not IR inputs; the ONNX rewriter edits them from the pruned shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import NodeProto, helper

from ..registry import registrar

__all__ = ["LOWER_ONNX", "OnnxCtx"]


class OnnxCtx:
    """What a lowering may ask: a constant input's value, a tensor's rank/shape, weight-ness."""

    def __init__(self, const: Callable[[str], np.ndarray | None], shape: Callable[[str], tuple[int, ...] | None],
                 is_weight: Callable[[str], bool]) -> None:
        self.const = const
        self.shape = shape
        self.is_weight = is_weight

    def rank(self, name: str) -> int:
        s = self.shape(name)
        if s is None:
            raise ValueError(f"no shape for {name!r}")
        return len(s)


Lowered = tuple[str, list[str], dict[str, Any]]
Lowering = Callable[[NodeProto, dict[str, Any], OnnxCtx], Lowered | None]
LOWER_ONNX: dict[str, Lowering] = {}


_reg = registrar(LOWER_ONNX)


def attrs_of(node: NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _inp(node: NodeProto, i: int) -> str:
    return node.input[i] if i < len(node.input) else ""


@_reg("Conv")
def _conv(n, a, c):
    return "conv", [n.input[0], n.input[1], _inp(n, 2)], {"groups": int(a.get("group", 1))}


@_reg("ConvTranspose")
def _conv_t(n, a, c):
    return "conv", [n.input[0], n.input[1], _inp(n, 2)], {"groups": int(a.get("group", 1)), "transposed": True}


@_reg("Gemm")
def _gemm(n, a, c):
    if int(a.get("transA", 0)):
        return None
    return "gemm", [n.input[0], n.input[1], _inp(n, 2)], {"trans_b": int(a.get("transB", 0))}


@_reg("MatMul")
def _matmul(n, a, c):
    return "matmul", [n.input[0], n.input[1]], {}


@_reg("Einsum")
def _einsum(n, a, c):
    eq = a["equation"]
    return "einsum", list(n.input), {"equation": (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")}


@_reg("BatchNormalization")
def _bn(n, a, c):
    return "batch_norm", list(n.input[:5]), {}


@_reg("InstanceNormalization")
def _in(n, a, c):
    return "instance_norm", list(n.input[:3]), {}


@_reg("LayerNormalization")
def _ln(n, a, c):
    r = c.rank(n.input[0])
    return "layer_norm", [n.input[0], _inp(n, 1), _inp(n, 2)], {"normalized_ndim": r - int(a.get("axis", -1)) % r}


@_reg("RMSNormalization", "SimplifiedLayerNormalization")
def _rms(n, a, c):
    r = c.rank(n.input[0])
    return "rms_norm", [n.input[0], _inp(n, 1)], {"normalized_ndim": r - int(a.get("axis", -1)) % r}


@_reg("GroupNormalization")
def _gn(n, a, c):
    groups = int(a["num_groups"])
    scale = c.shape(_inp(n, 1)) if _inp(n, 1) else None
    channels = (c.shape(n.input[0]) or (0, 0))[1]
    if scale is not None and scale[0] != channels:
        return None  # opset < 21: per-group scale; keep the channels (barrier)
    return "group_norm", [n.input[0], _inp(n, 1), _inp(n, 2)], {"groups": groups}


_UNARY = {
    "Relu": "relu", "LeakyRelu": "leaky_relu", "Elu": "elu", "Selu": "selu", "Celu": "celu",
    "Sigmoid": "sigmoid", "HardSigmoid": "hardsigmoid", "HardSwish": "hardswish", "Gelu": "gelu",
    "FastGelu": "gelu", "Erf": "erf", "Tanh": "tanh", "Softplus": "softplus", "Softsign": "softsign",
    "Mish": "mish", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Reciprocal": "reciprocal", "Neg": "neg",
    "Abs": "abs", "Sin": "sin", "Cos": "cos", "Not": "logical_not", "Sign": "sign", "Floor": "floor",
    "Ceil": "ceil", "Round": "round", "Clip": "clamp", "Cast": "cast", "CastLike": "cast",
    "Identity": "identity", "Dropout": "dropout", "Shrink": "relu", "ThresholdedRelu": "relu",
    "IsNaN": "isnan", "IsInf": "isinf",
}
_BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Max": "maximum", "Min": "minimum",
    "Sum": "add", "Mean": "add", "Where": "where", "Equal": "eq", "Greater": "gt", "Less": "lt",
    "GreaterOrEqual": "ge", "LessOrEqual": "le", "And": "logical_and", "Or": "logical_or", "Mod": "remainder",
    "PRelu": "prelu_nd",
}


def _unary(op: str) -> Lowering:
    return lambda n, a, c: (op, [n.input[0]], {})


def _binary(op: str) -> Lowering:
    return lambda n, a, c: (op, [i for i in n.input if i], {})


for _k, _v in _UNARY.items():
    LOWER_ONNX[_k] = _unary(_v)
for _k, _v in _BINARY.items():
    LOWER_ONNX[_k] = _binary(_v)


@_reg("Concat")
def _concat(n, a, c):
    return "cat", list(n.input), {"axis": int(a["axis"])}


@_reg("Split")
def _split(n, a, c):
    return "split", [n.input[0]], {"axis": int(a.get("axis", 0))}


@_reg("Slice")
def _slice(n, a, c):
    x = n.input[0]
    shape = c.shape(x)
    starts, ends = c.const(n.input[1]), c.const(n.input[2])
    axes = c.const(_inp(n, 3)) if _inp(n, 3) else None
    steps = c.const(_inp(n, 4)) if _inp(n, 4) else None
    if shape is None or starts is None or ends is None or (_inp(n, 3) and axes is None) or (_inp(n, 4) and steps is None):
        return None
    r = len(shape)
    axes_l = [int(v) % r for v in (axes if axes is not None else range(len(starts)))]
    steps_l = [int(v) for v in (steps if steps is not None else [1] * len(axes_l))]
    changed = []
    for ax, s0, e0, st in zip(axes_l, starts.tolist(), ends.tolist(), steps_l, strict=True):
        size = shape[ax]
        s1 = min(max(int(s0) + size if int(s0) < 0 else int(s0), 0), size)
        e1 = min(max(int(e0) + size if int(e0) < 0 else int(e0), 0), size)
        if (s1, e1, st) != (0, size, 1):
            changed.append((ax, s1, e1, st))
    if len(changed) > 1:
        return None
    if not changed:
        return "identity", [x], {}
    ax, s1, e1, st = changed[0]
    return "slice", [x], {"axis": ax, "start": s1, "end": e1, "step": st}


@_reg("Gather")
def _gather(n, a, c):
    data, idx = n.input[0], n.input[1]
    axis = int(a.get("axis", 0)) % c.rank(data)
    value = c.const(idx)
    if value is not None and value.ndim == 0:
        return "select", [data], {"axis": axis, "index": int(value)}
    if c.is_weight(data) and axis == 0 and value is None:
        return "embedding", [data, idx], {}
    return "index", [data, idx], {"axis": axis}


@_reg("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(n, a, c):
    return "reshape", [n.input[0]], {}


@_reg("Transpose")
def _transpose(n, a, c):
    r = c.rank(n.input[0])
    return "permute", [n.input[0]], {"perm": [int(p) for p in a.get("perm", list(reversed(range(r))))]}


@_reg("Expand")
def _expand(n, a, c):
    return "expand", [n.input[0]], {}


@_reg("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool")
def _pool(n, a, c):
    return "pool", [n.input[0]], {"spatial": c.rank(n.input[0]) - 2}


@_reg("Resize", "Upsample")
def _resize(n, a, c):
    return "resize", [n.input[0]], {"spatial": c.rank(n.input[0]) - 2}


@_reg("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
      "ReduceLogSumExp", "ReduceSumSquare", "ReduceLogSum", "ArgMax", "ArgMin")
def _reduce(n, a, c):
    r = c.rank(n.input[0])
    axes = a.get("axes")
    if axes is None and n.op_type not in ("ArgMax", "ArgMin") and _inp(n, 1):
        v = c.const(n.input[1])
        if v is None:
            return None
        axes = v.tolist()
    if n.op_type in ("ArgMax", "ArgMin"):
        axes = [int(a.get("axis", 0))]
    if not axes:
        axes = [] if int(a.get("noop_with_empty_axes", 0)) else list(range(r))
    return "reduce", [n.input[0]], {"axes": [int(x) % r for x in axes], "keepdim": bool(a.get("keepdims", 1))}


@_reg("Softmax", "LogSoftmax", "Hardmax")
def _softmax(n, a, c):
    return "softmax", [n.input[0]], {"axis": int(a.get("axis", -1)) % c.rank(n.input[0])}


@_reg("CumSum")
def _cumsum(n, a, c):
    v = c.const(n.input[1])
    if v is None:
        return None
    return "cumsum", [n.input[0]], {"axis": int(v) % c.rank(n.input[0])}


@_reg("Pad")
def _pad(n, a, c):
    r = c.rank(n.input[0])
    pads = a.get("pads")
    if pads is None:
        v = c.const(_inp(n, 1))
        if v is None:
            return None
        pads = v.tolist()
    axes = list(range(r))
    if _inp(n, 3):
        av = c.const(n.input[3])
        if av is None:
            return None
        axes = [int(x) % r for x in av.tolist()]
    k = len(axes)
    padded = sorted({axes[i % k] for i, p in enumerate(pads) if int(p) != 0})
    return "pad", [n.input[0]], {"padded": padded}


@_reg("DepthToSpace")
def _d2s(n, a, c):
    mode = a.get("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    return ("pixel_shuffle" if mode == "CRD" else "depth_to_space"), [n.input[0]], {"factor": int(a["blocksize"])}


@_reg("SpaceToDepth")
def _s2d(n, a, c):
    return "space_to_depth", [n.input[0]], {"factor": int(a["blocksize"])}


@_reg("Attention")
def _attention(n, a, c):
    if c.rank(n.input[0]) != 4:
        return None
    return "sdpa", [n.input[0], n.input[1], n.input[2], _inp(n, 3)], {"is_causal": bool(a.get("is_causal", 0))}


@_reg("Constant", "ConstantOfShape", "Range", "Shape", "Size", "EyeLike", "RandomNormal", "RandomUniform",
      "RandomNormalLike", "RandomUniformLike", "Trilu")
def _constant(n, a, c):
    if n.op_type == "Trilu":
        return "tri", [n.input[0]], {"spatial": 2}
    return "constant", [], {}
