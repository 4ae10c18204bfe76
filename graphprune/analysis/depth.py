"""Depth eligibility: which coupled groups may be removed whole (taken to width 0).

Removing every unit of a group g removes, from each space (v, ax) it touches, the channels g
owns. When those channels live entirely inside a residual branch (a bottleneck's inner channels,
a transformer MLP's hidden units, all heads of an attention block), the branch's ops compute on
empty tensors and can be dropped; what reaches the rest of the graph is the output of the
branch's *linear exits*, which with an empty contraction is

    y = b    (the exit's bias, broadcast to its output shape; zeros without a bias)

-- exactly what the masked original computes, since it zeroes the exit's weight slices that read
g's channels (``verification.masked_original``). So the oracle needs no change.

g is eligible when, for every space (v, ax) of g, v is neither a model input nor a model output
and every node u using v is one of

(a) a node all of whose outputs also carry a space of g (the chain continues and dies with g);
(b) a linear exit reading ax as its contraction axis: a conv (or transposed conv) with
    groups == 1 reading input channels, a linear reading K, a matmul/addmm/gemm contracting over
    ax with a weight operand (the coupling only ties such a contraction when a weight can mask
    it); when v is a weight, its axis must be the exit's consumer-side (reader) axis;
(c) a concat along ax (its output keeps the other parts).

Anything else (a reduction or norm over the axis, a shape-dependent op, an op without a rule)
makes g ineligible. And the branch must be *bypassed*: every model output that depends on a
model input must still depend on one once g is gone (exits then emit constants and g's emptied
tensors carry nothing). This keeps a ResNet stage's residual stream or a plain chain's channels
(whose removal would cut the model in two) out, and lets a residual branch in. Several eligible
groups removed together can still cut the model (every branch of an Inception module):
:func:`bypassed` checks a set, and the greedy allocator uses it before each move to width 0.

The analysis never mutates; :func:`exit_contraction` and :func:`exit_bias` are shared with the fx
and ONNX rewriters, which replace each exit whose contraction is empty by its bias.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ir import Node, Value
from ..rules.readers import reads
from .coupling import Coupling, Group

__all__ = ["bypassed", "depth_eligible", "drop_decoder_layers", "exit_bias", "exit_contraction", "layer_influence",
           "removed_whole"]

log = logging.getLogger(__name__)

def exit_contraction(node: Node) -> list[tuple[Value, int]]:
    """The (operand, axis) pairs a linear exit contracts over (normalized to non-negative axes),
    from the reader-axes table (:data:`graphprune.rules.READERS`); empty for a node that is not a
    linear exit (a grouped conv, an activation-activation matmul, a Gemm with trans_a, any other op)."""
    r = reads(node)
    if r is None or not r.dense:
        return []
    pairs = r.operands(node)
    if len(pairs) != 2:
        return []
    (a, _), (c, _) = pairs
    if r.needs_weight and not (a.is_weight or c.is_weight):
        return []
    if node.op == "gemm" and node.attrs.get("trans_a", 0):
        return []  # the ONNX rewriter replaces exits of the plain A @ B form only
    return [(v, ax % v.rank) for v, ax in pairs]


def exit_bias(node: Node) -> Value | None:
    """The bias a linear exit adds (its output when the contraction is empty), or None."""
    r = reads(node)
    return node.input(r.bias) if r is not None and r.bias is not None else None


def _user_ok(u: Node, v: Value, ax: int, mine: set[tuple[str, int]], readers: frozenset[tuple[int, int]]) -> bool:
    if any(x is v and a == ax for x, a in exit_contraction(u)):  # (b); a weight must be its reader axis
        return not v.is_weight or (v.index, ax) in readers
    if u.op == "cat" and not v.is_weight and int(u.attrs.get("axis", 0)) % u.output.rank == ax:
        return True  # (c)
    return all(any((o.name, a) in mine for a in range(o.rank)) for o in u.outputs)  # (a)


def _emptied(c: Coupling, gone: Sequence[Group]) -> set[int]:
    """Indices of the values that become empty (an axis with no element left) when the groups in
    ``gone`` are all removed."""
    ids = np.asarray(sorted({g.id for g in gone}), dtype=np.int64)
    out = set()
    for g in gone:
        for name, ax in g.spaces:
            v = c.graph.value(name)
            u = c.units_of(v, ax)
            if len(u) and bool((u >= 0).all()) and bool(np.isin(c.unit_group[u], ids).all()):
                out.add(v.index)
    return out


def _live(c: Coupling, empty: set[int]) -> set[int]:
    """Indices of the values that depend on a model input when the values in ``empty`` are empty
    (an exit whose contraction operand is empty emits a constant)."""
    live = {v.index for v in c.graph.inputs}
    for node in c.graph.nodes:
        if any(o.index in empty for o in node.outputs):
            continue
        if any(x.index in empty for x, _ in exit_contraction(node)):
            continue
        if any(x is not None and x.index in live and x.index not in empty for x in node.inputs):
            live.update(o.index for o in node.outputs)
    return live


def bypassed(coupling: Coupling, gone: Sequence[Group], live0: set[int] | None = None) -> bool:
    """True when, with every group in ``gone`` removed whole, each model output that depends on a
    model input still does. Eligibility checks one group; the allocator checks the groups it takes
    to width 0 together (parallel branches of a concat are each bypassed by the others, not all
    at once). ``live0``: ``_live`` of the unpruned graph, when the caller has it."""
    base = _live(coupling, set()) if live0 is None else live0
    live = _live(coupling, _emptied(coupling, gone))
    return all(v.index in live for v in coupling.graph.outputs if v.index in base)


def _eligible(c: Coupling, g: Group) -> bool:
    graph = c.graph
    mine = set(g.spaces)
    ends = {id(v) for v in graph.inputs} | {id(v) for v in graph.outputs}
    for name, ax in g.spaces:
        v = graph.value(name)
        if id(v) in ends:
            return False
        for u in v.users:
            if not _user_ok(u, v, ax, mine, c.readers):
                return False
    return True


def depth_eligible(coupling: Coupling) -> frozenset[int]:
    """Indices of the groups that may be taken to width 0 (see the module docstring)."""
    live0 = _live(coupling, set())
    out = frozenset(g.id for g in coupling.groups if _eligible(coupling, g) and bypassed(coupling, [g], live0))
    log.debug("depth: %d of %d groups may be removed whole", len(out), len(coupling.groups))
    return out


def removed_whole(coupling: Coupling, removed: np.ndarray) -> list[Group]:
    """Groups every unit of which is removed (width 0) under the boolean unit mask ``removed``."""
    return [g for g in coupling.groups if g.size and bool(removed[g.units].all())]


# -- whole decoder layers (transformers decoders) -----------------------------------------------
#
# A decoder layer computes x_out = x_in + attn(...) + mlp(...): the residual stream passes it by.
# ShortGPT's block influence, BI = 1 - E[cos(x_in, x_out)] over calibration tokens (equivalently
# the angular distance arccos(cos)/pi of "The Unreasonable Ineffectiveness of the Deeper
# Layers"), ranks the layers: the one that turns the stream least matters least. The channel-group
# depth above cannot express this (a layer's residual adds are not a group's exits), so whole
# layers are a transformers-level step before the width pipeline: score, drop the ``n`` layers of
# least influence (rewrite/hf_attrs.py renumbers layer indices and the config), then prune widths
# to what the budget still asks.


def layer_influence(model: Any, layers: Sequence[Any], batches: Sequence[Any]) -> list[float]:
    """Block influence ``1 - mean cos(x_in, x_out)`` of each module in ``layers`` (a decoder
    layer's first positional or ``hidden_states`` input and first output), over every token of
    ``batches`` (example-input structures) but the padding (zeros of an ``attention_mask`` keyword
    input). Reads the model; changes nothing."""
    import torch

    from ..frontends.inputs import as_args_kwargs
    from .calibration import PADDING_MASK_NAMES, real_token_rows

    sums = [0.0] * len(layers)
    counts = [0] * len(layers)
    real: list[Any] = [None]  # this batch's real-token rows (calibration.real_token_rows), if it pads

    def hook(i: int) -> Any:
        def fn(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            x = args[0] if args else kwargs.get("hidden_states")
            y = out[0] if isinstance(out, (tuple, list)) else out
            cos = torch.nn.functional.cosine_similarity(x.double().flatten(0, -2), y.double().flatten(0, -2), dim=-1)
            keep = real[0]
            if keep is not None and tuple(x.shape[:2]) == keep[0] and cos.numel() == keep[0][0] * keep[0][1]:
                cos = cos.index_select(0, keep[1])  # padding positions left out, as in the calibration statistics
            sums[i] += float((1 - cos).sum())
            counts[i] += cos.numel()
        return fn

    handles = [m.register_forward_hook(hook(i), with_kwargs=True) for i, m in enumerate(layers)]
    try:
        with torch.no_grad():
            for b in batches:
                args, kwargs = as_args_kwargs(b)
                masks = [kwargs[name] for name in PADDING_MASK_NAMES if name in kwargs]
                real[0] = real_token_rows(masks[0]) if masks else None
                model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return [s / max(c, 1) for s, c in zip(sums, counts, strict=True)]


def drop_decoder_layers(model: Any, example_inputs: Any, batches: Sequence[Any] | None, layers: float,
                        metric: str, frac: float | None, onnx_input: bool) -> tuple[Any, float | None, dict[str, Any]]:
    """``gp.prune(layers=...)``: a NEW model without the ``n`` least influential decoder layers
    (``layers``: an int count, or a float in (0, 1) as a share of the layers), and the budget
    fraction the width pipeline must still reach (relative to the smaller model; at most 1), and
    ``{"removed": [layer index...], "influence": [score per layer]}`` for the report."""
    from ..api import count_flops
    from ..errors import OptionError
    from ..rewrite.hf_attrs import decoder_layers, drop_layers

    if onnx_input:
        raise OptionError("layers= needs a transformers decoder given as a PyTorch model, not an .onnx file")
    found = decoder_layers(model)
    if found is None:
        raise OptionError(f"layers= needs a transformers decoder with a list of decoder layers (model.model.layers); "
                          f"{type(model).__name__} has none")
    total = len(found)
    if isinstance(layers, bool) or not isinstance(layers, (int, float)) or layers < 0 or \
            (isinstance(layers, float) and layers >= 1) or (isinstance(layers, int) and layers >= total):
        raise OptionError(f"layers={layers!r}: give a number of decoder layers to remove (0..{total - 1}) or a fraction "
                          "in [0, 1)")
    n = int(layers) if isinstance(layers, int) else int(round(layers * total))
    if n == 0:
        return model, frac, {"removed": [], "influence": []}
    scores = layer_influence(model, list(found), list(batches) if batches else [example_inputs])
    drop = sorted(sorted(range(total), key=lambda i: (scores[i], i))[:n])
    log.info("layers: removing decoder layers %s (block influence %s)", drop, [round(scores[i], 4) for i in drop])
    new = drop_layers(model, drop)
    info = {"removed": drop, "influence": [round(s, 6) for s in scores]}
    if frac is None:
        return new, frac, info
    idx = 0 if metric in ("flops", "macs") else 1
    before = count_flops(model, example_inputs)[idx] if metric != "params" else sum(p.numel() for p in model.parameters())
    after = count_flops(new, example_inputs)[idx] if metric != "params" else sum(p.numel() for p in new.parameters())
    return new, min(1.0, frac * before / after), info
