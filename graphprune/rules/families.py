"""Op families as data: one rule covers each family."""

from __future__ import annotations

__all__ = ["BINARY", "IDENTITY", "NORMS", "POOL", "REDUCE", "SOURCES", "UNARY", "UNIFORM_FILL"]

#: ops that return their input unchanged in shape and channel order
IDENTITY = frozenset({"identity", "dropout", "clone", "contiguous", "cast"})

#: one-input elementwise maths; channel i of the output depends only on channel i of the input
UNARY = frozenset(
    {
        "relu", "relu6", "leaky_relu", "prelu_scalar", "elu", "selu", "celu", "gelu", "silu", "mish",
        "sigmoid", "hardsigmoid", "hardswish", "hardtanh", "tanh", "softplus", "softsign", "erf",
        "exp", "log", "sqrt", "rsqrt", "reciprocal", "neg", "abs", "sin", "cos", "square",
        "logical_not", "sign", "floor", "ceil", "round", "isnan", "isinf", "isfinite",
    }
)

#: multi-input elementwise maths with numpy broadcasting
BINARY = frozenset(
    {"add", "sub", "mul", "div", "maximum", "minimum", "where", "masked_fill", "eq", "ne", "gt",
     "lt", "ge", "le", "logical_and", "logical_or", "floor_divide", "remainder", "atan2", "lerp",
     "pow", "clamp", "prelu_nd"}
)

#: ops whose reduced axes are consumed (pinned) and other axes pass through
REDUCE = frozenset({"reduce", "softmax", "cumsum"})

#: spatial ops: leading (batch, channel) axes pass through, trailing spatial axes are pinned
POOL = frozenset({"pool", "adaptive_pool", "resize", "tri"})

#: normalizations over a per-channel axis
NORMS = frozenset({"batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm"})

#: ops that create tensors without tensor inputs (constants): nothing to tie, not a barrier
SOURCES = frozenset({"constant"})

#: factories (their ATen target's name) whose elements are all equal (zeros, ones, full) or hold
#: nothing until written (empty): any subset of any axis is the same tensor, smaller (rules/inplace.py)
UNIFORM_FILL = frozenset({"empty", "new_empty", "zeros", "new_zeros", "ones", "new_ones", "full", "new_full"})
