"""READERS: which operand and axis each contraction (conv, linear, matmul, addmm, gemm) contracts.

One table, keyed by op, read by everything that needs to know how a consumer reads a weight:
calibration (which activation axis feeds a weight's input columns), depth pruning (a linear exit
whose contraction is empty emits its bias), reconstruction (the weight's output axis) and the
report (a layer's output channel axis). ``READERS[op](node)`` gives a :class:`Reads` (``dense``
False for a grouped conv, whose outputs read only their group's channels), or None when the node
is not a contraction (a vector product, any other op).

For ``Y = X W^T`` (linear) the data operand X contracts its last axis against W's axis 1; a conv
(groups = 1) contracts X's channel axis 1 against W's axis 1 (0 when transposed); ``A @ C``
contracts A's last axis against C's second-to-last; ``addmm(bias, A, C)`` is A @ C plus bias;
ONNX ``Gemm`` contracts A's axis 1 (0 with trans_a) against W's axis 0 (1 with trans_b).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..ir import Node, Value
from ..registry import registrar

__all__ = ["READERS", "Reads", "reads", "register_reader"]


@dataclass(frozen=True)
class Reads:
    """A dense contraction: ``lhs`` and ``rhs`` are (input index, axis) of the contracted axes."""

    lhs: tuple[int, int]  # the data operand (X of linear/conv, A of matmul/addmm/gemm)
    rhs: tuple[int, int]  # the weight operand (W of linear/conv; C of matmul/addmm; B of gemm)
    rhs_out: int  # axis of the rhs operand that indexes the output channels
    y_axis: int  # channel axis of the node's output (non-negative)
    bias: int | None  # input index of the bias added to the output channels, if any
    either: bool = False  # either operand may hold the weight (matmul); else only rhs does
    needs_weight: bool = False  # a linear exit only with a weight operand (matmul, addmm, gemm)
    dense: bool = True  # every output channel reads every contracted channel (False: a grouped conv)

    def operands(self, node: Node) -> list[tuple[Value, int]]:
        """The (value, axis) pairs contracted, lhs first (absent operands left out)."""
        return [(node.inputs[i], ax) for i, ax in (self.lhs, self.rhs) if i < len(node.inputs)
                and node.inputs[i] is not None]  # type: ignore[misc]


ReaderRule = Callable[[Node], "Reads | None"]
READERS: dict[str, ReaderRule] = {}
register_reader: Callable[..., Callable[[ReaderRule], ReaderRule]] = registrar(READERS, unique=True)


def reads(node: Node) -> Reads | None:
    """``READERS[node.op](node)``; None for an op that is not a contraction."""
    rule = READERS.get(node.op)
    return rule(node) if rule is not None else None


def _rank(node: Node, i: int) -> int:
    v = node.inputs[i] if i < len(node.inputs) else None
    return v.rank if v is not None else 0


@register_reader("conv")
def _conv(node: Node) -> Reads | None:
    transposed = bool(node.attrs.get("transposed", False))
    return Reads((0, 1), (1, 0 if transposed else 1), 1 if transposed else 0, 1, 2,
                 dense=int(node.attrs.get("groups", 1)) == 1)


@register_reader("linear")
def _linear(node: Node) -> Reads | None:
    return Reads((0, _rank(node, 0) - 1), (1, 1), 0, max(node.output.rank - 1, 0), 2)


@register_reader("matmul")
def _matmul(node: Node) -> Reads | None:
    ra, rc = _rank(node, 0), _rank(node, 1)
    if ra < 2 or rc < 2:
        return None
    return Reads((0, ra - 1), (1, rc - 2), rc - 1, node.output.rank - 1, None, either=True, needs_weight=True)


@register_reader("addmm")
def _addmm(node: Node) -> Reads | None:
    ra, rc = _rank(node, 1), _rank(node, 2)
    if ra < 2 or rc < 2:
        return None
    return Reads((1, ra - 1), (2, rc - 2), rc - 1, node.output.rank - 1, 0, needs_weight=True)


@register_reader("gemm")
def _gemm(node: Node) -> Reads | None:
    trans_b = int(node.attrs.get("trans_b", 0))
    a_ax = 0 if int(node.attrs.get("trans_a", 0)) else 1
    return Reads((0, a_ax), (1, 1 if trans_b else 0), 0 if trans_b else 1, 1, 2, needs_weight=True)
