"""Op signatures: what a measured latency table is keyed by.

A *measurable* node (a dense or grouped convolution, a linear layer) is described by an
:class:`OpSpec`: everything that fixes its cost except the prunable widths (kind, batch and
spatial sizes, kernel, stride, padding, bias) goes into the signature ``key``; the widths are
the table's variables:

- conv, groups == 1:       widths (C_in, C_out)   (also transposed convs, ``"transposed": true``)
- conv, grouped/depthwise: widths (G,)  with C_in = G * C_in/G_0 and C_out = G * C_out/G_0
- linear:                  widths (K, N) for y[M, N] = x[M, K] W^T + b; an ONNX Gemm or a MatMul
                           with a 2-D weight is the same op (same key, so tables are shared)

``full`` holds the unpruned widths (the grid's upper end). Stride and padding are recovered from
the shapes (the IR keeps only ``groups``): s = round(H_in / H_out) and the total padding that
gives the same output size, ``p = max(0, (H_out - 1) s + k - H_in)``, so the measured op does the
same work as the model's. A transposed conv's output is ``(H_in - 1) s - P + k``: ``P`` is the
total padding when it is >= 0, else ``-P`` is the output padding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..ir import Node, Value

__all__ = ["OpSpec", "op_spec"]

ShapeFn = Callable[[Value], tuple[int, ...]]


@dataclass(frozen=True)
class OpSpec:
    kind: str  # "conv" | "linear"
    key: str  # signature: JSON of kind + fixed parameters + full widths
    fixed: dict[str, Any]
    widths: tuple[int, ...]  # the node's widths under the shape function
    full: tuple[int, ...]  # unpruned widths


def _key(kind: str, fixed: dict[str, Any], full: tuple[int, ...]) -> str:
    return json.dumps({"kind": kind, "full": list(full), **fixed}, sort_keys=True, separators=(",", ":"))


def _conv(node: Node, shape: ShapeFn) -> OpSpec | None:
    x, w, b = node.inputs[0], node.inputs[1], node.input(2)
    if x is None or w is None or x.rank < 3:
        return None
    transposed = bool(node.attrs.get("transposed"))
    y = node.output
    groups = int(node.attrs.get("groups", 1))
    if transposed and groups != 1:
        return None
    ks = list(w.shape[2:])
    xs, ys = list(x.shape[2:]), list(y.shape[2:])
    fixed: dict[str, Any] = {"batch": x.shape[0], "spatial": xs, "kernel": ks, "bias": b is not None}
    if transposed:
        strides = [max(1, round(o / max(1, a))) for a, o in zip(xs, ys, strict=True)]
        total = [(a - 1) * s + k - o for a, o, s, k in zip(xs, ys, strides, ks, strict=True)]
        fixed.update(strides=strides, pads=[max(0, p) for p in total], output_padding=[max(0, -p) for p in total],
                     transposed=True)
    else:
        strides = [max(1, round(a / max(1, o))) for a, o in zip(xs, ys, strict=True)]
        fixed.update(strides=strides,
                     pads=[max(0, (o - 1) * s + k - a) for a, o, s, k in zip(xs, ys, strides, ks, strict=True)])
    if groups == 1:
        w_out = 1 if transposed else 0
        full = (x.shape[1], w.shape[w_out])
        widths = (shape(x)[1], shape(w)[w_out])
        fixed["groups"] = 1
    else:
        gin, gout = x.shape[1] // groups, w.shape[0] // groups
        full = (groups,)
        widths = (shape(x)[1] // gin,)
        fixed.update(groups="per", gin=gin, gout=gout)
    return OpSpec("conv", _key("conv", fixed, full), fixed, widths, full)


def _linear(node: Node, shape: ShapeFn) -> OpSpec | None:
    x, w, b = node.inputs[0], node.inputs[1], node.input(2)
    if x is None or w is None or w.rank != 2:
        return None
    lead = list(shape(x)[:-1])
    fixed: dict[str, Any] = {"lead": lead, "bias": b is not None}
    full = (w.shape[1], w.shape[0])
    pw = shape(w)
    return OpSpec("linear", _key("linear", fixed, full), fixed, (pw[1], pw[0]), full)


def _weight_matmul(x: Value | None, w: Value | None, b: Value | None, shape: ShapeFn, k_axis: int) -> OpSpec | None:
    """``x[..., K] @ W`` with a 2-D weight stored with K on ``k_axis``: the same op as a linear."""
    if x is None or w is None or w.rank != 2 or not w.is_weight:
        return None
    n_axis = 1 - k_axis
    fixed: dict[str, Any] = {"lead": list(shape(x)[:-1]), "bias": b is not None}
    full = (w.shape[k_axis], w.shape[n_axis])
    pw = shape(w)
    return OpSpec("linear", _key("linear", fixed, full), fixed, (pw[k_axis], pw[n_axis]), full)


def _gemm(node: Node, shape: ShapeFn) -> OpSpec | None:  # ONNX Gemm (transA = 0): W is [N, K] when transB
    return _weight_matmul(node.inputs[0], node.inputs[1], node.input(2), shape, 1 if node.attrs.get("trans_b") else 0)


def _matmul(node: Node, shape: ShapeFn) -> OpSpec | None:  # ONNX MatMul with a weight: x @ W[K, N]
    return _weight_matmul(node.inputs[0], node.inputs[1], None, shape, 0)


_SPECS: dict[str, Callable[[Node, ShapeFn], OpSpec | None]] = {
    "conv": _conv, "linear": _linear, "gemm": _gemm, "matmul": _matmul,
}


def op_spec(node: Node, shape: ShapeFn | None = None) -> OpSpec | None:
    """The measurable description of ``node`` under ``shape`` (None: not a table op)."""
    fn = _SPECS.get(node.op)
    if fn is None:
        return None
    spec = fn(node, shape or (lambda v: v.shape))
    if spec is not None and any(wd < 1 for wd in spec.widths):
        return None
    return spec


def grid_points(full: int, step: int, max_points: int = 6) -> list[int]:
    """Widths to measure on one axis: multiples of ``step`` up to ``full``, plus ``full``,
    thinned evenly to ``max_points`` (always keeping the smallest and ``full``)."""
    if full <= step:
        pts = sorted({max(1, math.ceil(full / 4)), max(1, math.ceil(full / 2)), full})
    else:
        pts = sorted(set(range(step, full, step)) | {full})
    if len(pts) > max_points:
        idx = sorted({round(i * (len(pts) - 1) / (max_points - 1)) for i in range(max_points)})
        pts = [pts[i] for i in idx]
    return pts


__all__ += ["grid_points"]
