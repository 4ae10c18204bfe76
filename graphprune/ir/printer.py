"""Text form of the IR, one node per line, for golden tests and debugging.

    %y[1, 8, 4, 4] = conv(%x[1, 3, 4, 4], %c.weight[8, 3, 3, 3], %c.bias[8]) {groups=1}
"""

from __future__ import annotations

from .graph import Graph, Node, Value

__all__ = ["format_graph", "format_node"]


def _fmt_value(v: Value | None) -> str:
    return "None" if v is None else f"%{v.name}{list(v.shape)}"


def _fmt_attr(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v) if isinstance(v, str) else str(v)


def format_node(node: Node) -> str:
    outs = ", ".join(_fmt_value(v) for v in node.outputs)
    ins = ", ".join(_fmt_value(v) for v in node.inputs)
    attrs = ", ".join(f"{k}={_fmt_attr(v)}" for k, v in sorted(node.attrs.items()))
    tail = f" {{{attrs}}}" if attrs else ""
    return f"{outs} = {node.op}({ins}){tail}"


def format_graph(graph: Graph) -> str:
    lines = [f"graph {graph.name}("]
    lines += [f"  {_fmt_value(v)}," for v in graph.inputs]
    lines.append("):")
    lines += [f"  {format_node(n)}" for n in graph.nodes]
    lines.append("  return " + ", ".join(_fmt_value(v) for v in graph.outputs))
    return "\n".join(lines)
