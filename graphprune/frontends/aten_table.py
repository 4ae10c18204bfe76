"""ATen -> IR lowering table: one entry per ATen op name, giving the normalized op and attrs.

Each lowering receives the fx node's positional/keyword arguments (fx Nodes still in place) and
returns ``(op, tensor_args, attrs)``; ``tensor_args`` are the fx arguments that become IR inputs,
in the order the rule for ``op`` expects (None for an absent optional tensor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..registry import registrar
from ..rules.families import BINARY, UNARY

__all__ = ["LOWER", "Lowered", "lower_args"]

Lowered = tuple[str, list[Any], dict[str, Any]]
Lowering = Callable[[Sequence[Any], dict[str, Any], Sequence[int]], Lowered]

LOWER: dict[str, Lowering] = {}


def _arg(args: Sequence[Any], kwargs: dict[str, Any], i: int, name: str, default: Any = None) -> Any:
    if i < len(args):
        return args[i]
    return kwargs.get(name, default)


_reg = registrar(LOWER)


def lower_args(name: str, args: Sequence[Any], kwargs: dict[str, Any], in_shape: Sequence[int]) -> Lowered | None:
    fn = LOWER.get(name)
    return None if fn is None else fn(args, kwargs, in_shape)


# -- convolution ---------------------------------------------------------------------------------
@_reg("conv1d", "conv2d", "conv3d")
def _conv(a, k, s):
    return "conv", [a[0], a[1], _arg(a, k, 2, "bias")], {"groups": int(_arg(a, k, 6, "groups", 1))}


@_reg("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def _conv_t(a, k, s):
    attrs = {"groups": int(_arg(a, k, 6, "groups", 1)), "transposed": True}
    return "conv", [a[0], a[1], _arg(a, k, 2, "bias")], attrs


@_reg("convolution", "_convolution")
def _convolution(a, k, s):
    attrs = {"groups": int(_arg(a, k, 8, "groups", 1)), "transposed": bool(_arg(a, k, 6, "transposed", False))}
    return "conv", [a[0], a[1], _arg(a, k, 2, "bias")], attrs


# -- dense ---------------------------------------------------------------------------------------
@_reg("linear")
def _linear(a, k, s):
    return "linear", [a[0], a[1], _arg(a, k, 2, "bias")], {}


@_reg("matmul", "mm", "bmm")
def _matmul(a, k, s):
    return "matmul", [a[0], a[1]], {}


@_reg("addmm")
def _addmm(a, k, s):
    return "addmm", [a[0], a[1], a[2]], {}


@_reg("einsum")
def _einsum(a, k, s):
    return "einsum", list(a[1]), {"equation": str(a[0]).replace(" ", "")}


@_reg("_grouped_mm", "transformers.grouped_mm_fallback")  # MoE experts: x [S, K] @ w [E, K, N] by offsets
def _grouped_mm(a, k, s):
    return "grouped_mm", [a[0], a[1], _arg(a, k, 2, "offs")], {}


@_reg("embedding")
def _embedding(a, k, s):
    return "embedding", [a[0], a[1]], {}


@_reg("scaled_dot_product_attention")
def _sdpa(a, k, s):
    attrs = {"is_causal": bool(_arg(a, k, 5, "is_causal", False)), "enable_gqa": bool(_arg(a, k, 7, "enable_gqa", False))}
    return "sdpa", [a[0], a[1], a[2], _arg(a, k, 3, "attn_mask")], attrs


# -- normalization -------------------------------------------------------------------------------
@_reg("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
      "native_batch_norm", "cudnn_batch_norm", "_batch_norm_with_update", "_batch_norm_no_update")
def _bn(a, k, s):
    return "batch_norm", [a[0], a[1], a[2], a[3], a[4]], {}


@_reg("instance_norm")
def _in(a, k, s):
    return "instance_norm", [a[0], a[1], a[2], a[3], a[4]], {}


@_reg("group_norm")
def _gn(a, k, s):
    return "group_norm", [a[0], _arg(a, k, 2, "weight"), _arg(a, k, 3, "bias")], {"groups": int(a[1])}


@_reg("native_group_norm")
def _ngn(a, k, s):
    return "group_norm", [a[0], a[1], a[2]], {"groups": int(a[6])}


@_reg("layer_norm", "native_layer_norm")
def _ln(a, k, s):
    return "layer_norm", [a[0], _arg(a, k, 2, "weight"), _arg(a, k, 3, "bias")], {"normalized_ndim": len(a[1])}


@_reg("rms_norm")
def _rms(a, k, s):
    return "rms_norm", [a[0], _arg(a, k, 2, "weight")], {"normalized_ndim": len(a[1])}


# -- elementwise ---------------------------------------------------------------------------------
_UNARY_ALIASES = {
    "relu_": "relu", "hardtanh": "hardtanh", "hardtanh_": "hardtanh", "clamp_min": "clamp",
    "clamp_max": "clamp", "clip": "clamp", "silu_": "silu", "gelu_": "gelu", "sigmoid_": "sigmoid",
    "tanh_": "tanh", "hardswish_": "hardswish", "hardsigmoid_": "hardsigmoid", "leaky_relu_": "leaky_relu",
    "elu_": "elu", "mul_scalar": "mul", "pow": "pow", "square": "square", "erf": "erf",
}
_IDENTITY_NAMES = (
    "clone", "contiguous", "dropout", "dropout_", "feature_dropout", "alpha_dropout", "alias", "detach",
    "detach_", "lift_fresh_copy", "_to_copy", "to", "zeros_like", "ones_like", "full_like", "empty_like",
    "rand_like", "randn_like", "native_dropout", "_assert_tensor_metadata_passthrough", "positive",
    "bernoulli",
)


@_reg(*_IDENTITY_NAMES)
def _identity(a, k, s):
    return "identity", [a[0]], {}


@_reg("type_as")
def _type_as(a, k, s):
    return "cast", [a[0]], {}


def _unary_lowering(op: str) -> Lowering:
    def fn(a, k, s):
        return op, [a[0]], {}

    return fn


for _name in UNARY:
    LOWER[_name] = _unary_lowering(_name)
    LOWER[_name + "_"] = _unary_lowering(_name)
for _name, _op in _UNARY_ALIASES.items():
    LOWER[_name] = _unary_lowering(_op)


def _binary_lowering(op: str) -> Lowering:
    def fn(a, k, s):
        return op, list(a), {}

    return fn


for _name in BINARY:
    LOWER[_name] = _binary_lowering(_name)
    LOWER[_name + "_"] = _binary_lowering(_name)
LOWER["rsub"] = _binary_lowering("sub")
LOWER["true_divide"] = _binary_lowering("div")
LOWER["prelu"] = lambda a, k, s: ("prelu", [a[0], a[1]], {})
LOWER["_prelu_kernel"] = LOWER["prelu"]


# -- movement ------------------------------------------------------------------------------------
@_reg("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "squeeze_", "unsqueeze",
      "unsqueeze_", "view_as", "reshape_as")
def _reshape(a, k, s):
    return "reshape", [a[0]], {}


@_reg("permute")
def _permute(a, k, s):
    return "permute", [a[0]], {"perm": [int(p) % len(s) for p in a[1]]}


@_reg("transpose", "swapaxes", "swapdims")
def _transpose(a, k, s):
    perm = list(range(len(s)))
    i, j = int(a[1]) % len(s), int(a[2]) % len(s)
    perm[i], perm[j] = perm[j], perm[i]
    return "permute", [a[0]], {"perm": perm}


@_reg("t", "numpy_T")  # numpy_T: ``weight.T`` (Falcon's FalconLinear), all dims reversed
def _t(a, k, s):
    return "permute", [a[0]], {"perm": list(reversed(range(len(s))))}


@_reg("mT", "adjoint")  # ``x.mT``: the last two dims swapped
def _m_t(a, k, s):
    perm = list(range(len(s)))
    perm[-2:] = perm[-1], perm[-2]
    return "permute", [a[0]], {"perm": perm}


@_reg("movedim")
def _movedim(a, k, s):
    n = len(s)
    src = [int(x) % n for x in (a[1] if isinstance(a[1], (list, tuple)) else [a[1]])]
    dst = [int(x) % n for x in (a[2] if isinstance(a[2], (list, tuple)) else [a[2]])]
    rest = [d for d in range(n) if d not in src]
    perm: list[int] = [-1] * n
    for sd, dd in zip(src, dst, strict=True):
        perm[dd] = sd
    it = iter(rest)
    perm = [p if p >= 0 else next(it) for p in perm]
    return "permute", [a[0]], {"perm": perm}


@_reg("expand", "expand_as", "broadcast_to")
def _expand(a, k, s):
    return "expand", [a[0]], {}


@_reg("cat", "concat", "concatenate")
def _cat(a, k, s):
    return "cat", list(a[0]), {"axis": int(_arg(a, k, 1, "dim", 0))}


@_reg("stack")
def _stack(a, k, s):
    return "stack", list(a[0]), {"axis": int(_arg(a, k, 1, "dim", 0))}


@_reg("split", "split_with_sizes", "chunk", "unsafe_split", "unsafe_split_with_sizes", "tensor_split")
def _split(a, k, s):
    return "split", [a[0]], {"axis": int(_arg(a, k, 2, "dim", 0))}


@_reg("unbind")
def _unbind(a, k, s):
    return "unbind", [a[0]], {"axis": int(_arg(a, k, 1, "dim", 0))}


@_reg("select")
def _select(a, k, s):
    return "select", [a[0]], {"axis": int(a[1]), "index": int(a[2])}


@_reg("slice")
def _slice(a, k, s):
    axis = int(_arg(a, k, 1, "dim", 0)) % len(s)
    n = s[axis]
    start = _arg(a, k, 2, "start", 0)
    end = _arg(a, k, 3, "end", None)
    step = int(_arg(a, k, 4, "step", 1))
    start = 0 if start is None else int(start)
    end = n if end is None else int(end)
    start = min(max(start + n if start < 0 else start, 0), n)
    end = min(max(end + n if end < 0 else end, 0), n)
    return "slice", [a[0]], {"axis": axis, "start": start, "end": end, "step": step}


@_reg("narrow")
def _narrow(a, k, s):
    axis = int(a[1]) % len(s)
    start = int(a[2]) % s[axis] if int(a[2]) < 0 else int(a[2])
    return "slice", [a[0]], {"axis": axis, "start": start, "end": start + int(a[3]), "step": 1}


# -- reductions / spatial ------------------------------------------------------------------------
@_reg("mean", "sum", "amax", "amin", "max", "min", "var", "std", "prod", "logsumexp", "any", "all",
      "var_mean", "std_mean", "norm", "linalg_vector_norm", "argmax", "argmin")
def _reduce(a, k, s):
    dim = _arg(a, k, 1, "dim", None)
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        axes = list(range(len(s)))
    elif isinstance(dim, (list, tuple)):
        axes = [int(d) % len(s) for d in dim]
    elif isinstance(dim, (int, float)) and not isinstance(dim, bool):
        axes = [int(dim) % len(s)] if isinstance(dim, int) else list(range(len(s)))
    else:
        axes = list(range(len(s)))
    keep = _arg(a, k, 2, "keepdim", False)
    return "reduce", [a[0]], {"axes": axes, "keepdim": bool(keep) if isinstance(keep, bool) else False}


@_reg("softmax", "_softmax", "special_softmax", "log_softmax", "_log_softmax")
def _softmax(a, k, s):
    return "softmax", [a[0]], {"axis": int(_arg(a, k, 1, "dim", -1)) % len(s)}


@_reg("cumsum", "cumprod")
def _cumsum(a, k, s):
    return "cumsum", [a[0]], {"axis": int(_arg(a, k, 1, "dim", 0)) % len(s)}


def _pool_lowering(op: str, spatial: int) -> Lowering:
    def fn(a, k, s):
        return op, [a[0]], {"spatial": spatial}

    return fn


for _d in (1, 2, 3):
    for _kind in ("max_pool", "avg_pool", "lp_pool", "fractional_max_pool"):
        LOWER[f"{_kind}{_d}d"] = _pool_lowering("pool", _d)
        LOWER[f"{_kind}{_d}d_with_indices"] = _pool_lowering("pool", _d)
    for _kind in ("adaptive_avg_pool", "adaptive_max_pool", "_adaptive_avg_pool"):
        LOWER[f"{_kind}{_d}d"] = _pool_lowering("adaptive_pool", _d)
for _name, _d in (("upsample_nearest1d", 1), ("upsample_nearest2d", 2), ("upsample_nearest3d", 3),
                  ("upsample_linear1d", 1), ("upsample_bilinear2d", 2), ("upsample_bicubic2d", 2),
                  ("upsample_trilinear3d", 3), ("_upsample_nearest_exact1d", 1),
                  ("_upsample_nearest_exact2d", 2), ("_upsample_nearest_exact3d", 3),
                  ("_upsample_bilinear2d_aa", 2), ("_upsample_bicubic2d_aa", 2)):
    LOWER[_name] = _pool_lowering("resize", _d)
LOWER["triu"] = LOWER["tril"] = _pool_lowering("tri", 2)  # masks the last two axes


@_reg("pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
      "replication_pad1d", "replication_pad2d", "replication_pad3d", "circular_pad1d",
      "circular_pad2d", "circular_pad3d")
def _pad(a, k, s):
    return "pad", [a[0]], {"pads": [int(p) for p in a[1]]}


@_reg("pixel_shuffle")
def _pixel_shuffle(a, k, s):
    return "pixel_shuffle", [a[0]], {"factor": int(a[1])}


@_reg("pixel_unshuffle")
def _pixel_unshuffle(a, k, s):
    return "pixel_unshuffle", [a[0]], {"factor": int(a[1])}


@_reg("channel_shuffle", "native_channel_shuffle")
def _channel_shuffle(a, k, s):
    return "channel_shuffle", [a[0]], {"groups": int(a[1])}


@_reg("arange", "zeros", "ones", "full", "empty", "scalar_tensor", "rand", "randn", "randint",
      "new_zeros", "new_ones", "new_full", "new_empty", "tensor", "eye", "linspace")
def _constant(a, k, s):
    return "constant", [], {}


@_reg("roll")
def _roll(a, k, s):
    dims = _arg(a, k, 2, "dims", [])
    dims = [dims] if isinstance(dims, int) else list(dims)
    return "roll", [a[0]], {"axes": [int(d) % len(s) for d in dims]}


@_reg("index")
def _index(a, k, s):
    """x[..., idx, ...] with ONE index tensor (others None); more indices stay a barrier."""
    indices = list(a[1])
    tensors = [i for i in indices if i is not None]
    if len(tensors) != 1:
        raise ValueError("advanced indexing with several index tensors")
    return "index", [a[0], tensors[0]], {"axis": next(n for n, i in enumerate(indices) if i is not None)}
