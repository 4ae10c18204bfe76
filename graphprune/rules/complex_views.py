"""Complex views: ``view_as_complex`` and ``view_as_real`` (rotary embeddings in complex form,
e.g. DeepSeek-V2, LLaMA's reference code).

view_as_complex: y[..., j] = x[..., j, 0] + i * x[..., j, 1]   (x's last axis has size 2)
view_as_real:    y[..., j, 0] = re(x[..., j]), y[..., j, 1] = im(x[..., j])

Every leading axis is an identity tie; the (real, imaginary) pair axis is consumed (pinned): a
complex number loses both parts or none, and the pair is one rotary frequency whose angle comes
from the position table, which pins it there. FLOPs: 0 (views).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..ir import Node, Value
from .registry import register_coupling

if TYPE_CHECKING:
    from ..analysis.coupling import CouplingBuilder

__all__: list[str] = []


def _pair_view(node: Node, b: CouplingBuilder, real: Value, cplx: Value) -> None:
    if real.rank != cplx.rank + 1 or real.shape[-1] != 2 or tuple(real.shape[:-1]) != tuple(cplx.shape):
        raise ValueError(f"{node.op} node {node.name!r}: {real.shape} is not {cplx.shape} + (2,)")
    for ax in range(cplx.rank):
        b.same(real, ax, cplx, ax)
    b.pin(real, real.rank - 1, f"{node.op} node {node.name!r}: the (real, imaginary) pair stays whole")


@register_coupling("aten.view_as_complex")
def couple_view_as_complex(node: Node, b: CouplingBuilder) -> None:
    x = node.inputs[0]
    assert x is not None
    _pair_view(node, b, x, node.output)


@register_coupling("aten.view_as_real")
def couple_view_as_real(node: Node, b: CouplingBuilder) -> None:
    x = node.inputs[0]
    assert x is not None
    _pair_view(node, b, node.output, x)
