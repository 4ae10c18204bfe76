"""Module route for weight-standardized convs (timm's StdConv2d / ScaledStdConv2d): fold, then slice.

Such a module standardizes its weight over each filter's fan-in (in-channels x kernel) at every
forward, so slicing its input channels and keeping its code would re-standardize the kept weights
-- not what the masked original computes (rules/norm.py: there the removed input channels are zero
on the activation side and the weight is whole). The pruned module is therefore a plain
``nn.Conv2d`` whose weight is the module's standardized FULL weight (gain and scale folded in, read
from one forward of the ORIGINAL module) sliced to the kept output and input channels: exactly
equal, an inference drop-in (the standardization is no longer recomputed, so training the pruned
model trains the folded weight directly).

The weight is captured as the argument of the module's ``conv2d`` call (a ``TorchFunctionMode``
around one forward on a zero input; the model is not patched). A module whose forward is not a
single ``conv2d`` on its own input with its own stride/padding/dilation/groups (e.g. a "same"
variant that pads first) is refused with :class:`NotRewritable`, naming it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..analysis.coupling import Coupling
from .module_attrs import NotRewritable

__all__ = ["fold_std_convs", "folded_paths"]

log = logging.getLogger(__name__)

_CONV2D = (F.conv2d, torch.conv2d)


class _ConvCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _CONV2D:
            self.calls.append((args, kwargs))
        return func(*args, **kwargs)


def _pair(v: Any) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def standardized_weight(mod: nn.Module, path: str) -> torch.Tensor:
    """The weight ``mod`` (a weight-standardized nn.Conv2d) actually convolves with."""
    if not isinstance(mod, nn.Conv2d):
        raise NotRewritable(f"weight-standardized conv {path!r} ({type(mod).__name__}) is not an nn.Conv2d; "
                            "the module route cannot fold its standardization")
    w = mod.weight
    if w.is_meta:
        raise NotRewritable(f"weight-standardized conv {path!r} has no weight values here (a meta/streamed model); "
                            "fold it from the loaded model instead (prune it in memory)")
    kh, kw = mod.kernel_size
    dh, dw = mod.dilation
    x = torch.zeros(1, mod.in_channels, dh * (kh - 1) + 1, dw * (kw - 1) + 1, dtype=w.dtype, device=w.device)
    calls = _ConvCalls()
    with torch.no_grad(), calls:
        mod(x)
    if len(calls.calls) != 1:
        raise NotRewritable(f"weight-standardized conv {path!r} ({type(mod).__name__}) made {len(calls.calls)} conv2d "
                            "calls in one forward, not 1; the module route cannot fold it")
    args, kwargs = calls.calls[0]
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    got = {**dict(zip(names, args, strict=False)), **kwargs}
    pad = got.get("padding", 0)
    same_pad = pad == mod.padding if isinstance(mod.padding, str) or isinstance(pad, str) else _pair(pad) == _pair(mod.padding)
    same = got.get("input") is x and same_pad and _pair(got.get("stride", 1)) == _pair(mod.stride)
    same = same and _pair(got.get("dilation", 1)) == _pair(mod.dilation) and int(got.get("groups", 1)) == mod.groups
    if not same or mod.padding_mode != "zeros":
        raise NotRewritable(f"weight-standardized conv {path!r} ({type(mod).__name__}) does not call conv2d on its "
                            "own input with its own stride/padding/dilation/groups (a padding variant?); the module "
                            "route cannot fold it into an nn.Conv2d")
    folded = got["weight"]
    assert isinstance(folded, torch.Tensor)
    return folded.detach().clone()


def folded_paths(coupling: Coupling, removed: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Module path -> (kept output channels, kept input channels) of every standardized conv
    weight that loses channels (those the module route folds)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for vi, _ in sorted(coupling.std_weights):
        v = coupling.graph.values[vi]
        if v.source is None or v.rank != 4:
            continue
        ko, ki = coupling.kept(v, 0, removed), coupling.kept(v, 1, removed)
        if len(ki) != v.shape[1]:
            out[v.source.rpartition(".")[0]] = (np.asarray(ko), np.asarray(ki))
    return out


def fold_std_convs(original: nn.Module, new: nn.Module, coupling: Coupling, removed: np.ndarray) -> list[str]:
    """In ``new`` (already sliced), replace each standardized conv that lost input channels by an
    nn.Conv2d holding the ORIGINAL module's standardized weight, sliced; returns their paths."""
    paths = folded_paths(coupling, removed)
    for path, (ko, ki) in sorted(paths.items()):
        old = original.get_submodule(path)
        w = standardized_weight(old, path)
        sliced = new.get_submodule(path)
        assert isinstance(old, nn.Conv2d) and isinstance(sliced, nn.Conv2d)
        idx_o = torch.as_tensor(ko, dtype=torch.long, device=w.device)
        idx_i = torch.as_tensor(ki, dtype=torch.long, device=w.device)
        weight = w.index_select(0, idx_o).index_select(1, idx_i)
        conv = nn.Conv2d(weight.shape[1] * sliced.groups, weight.shape[0], sliced.kernel_size, sliced.stride,
                         sliced.padding, sliced.dilation, sliced.groups, bias=sliced.bias is not None,
                         device="meta", dtype=weight.dtype)
        conv.weight = nn.Parameter(weight, requires_grad=old.weight.requires_grad)
        if sliced.bias is not None:
            conv.bias = nn.Parameter(sliced.bias.detach().clone(), requires_grad=sliced.bias.requires_grad)
        conv.train(sliced.training)
        if not path:
            raise NotRewritable("the model itself is a weight-standardized conv; the module route cannot replace it")
        parent_path, _, name = path.rpartition(".")
        parent = new.get_submodule(parent_path) if parent_path else new
        setattr(parent, name, conv)
        log.info("folded the weight standardization of %s (%s) into an nn.Conv2d: its input channels were pruned, "
                 "and only the standardized full weight, sliced, equals the masked original", path, type(old).__name__)
    return sorted(paths)


def _evaluate(n: Any, gm: torch.fx.GraphModule, memo: dict[Any, Any], path: str) -> Any:
    """The value of fx node ``n`` computed from the module's tensors alone (no placeholder)."""
    if not isinstance(n, torch.fx.Node):
        return n
    if n in memo:
        return memo[n]
    if n.op == "get_attr":
        out: Any = gm
        for part in str(n.target).split("."):
            out = getattr(out, part)
    elif n.op == "call_function":
        args = torch.fx.node.map_arg(n.args, lambda a: _evaluate(a, gm, memo, path))
        kwargs = torch.fx.node.map_arg(n.kwargs, lambda a: _evaluate(a, gm, memo, path))
        out = n.target(*args, **kwargs)  # type: ignore[operator]
    else:
        raise NotRewritable(f"the standardized weight of {path!r} depends on {n.op} {n.name!r}, not only on weights; "
                            "the fx route cannot fold it")
    memo[n] = out
    return out


def _std_convs(coupling: Coupling, removed: np.ndarray) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(module path, IR conv node name, kept out, kept in) per folded standardized conv."""
    paths = folded_paths(coupling, removed)
    by_index = {vi: coupling.graph.values[vi] for vi, _ in coupling.std_weights}
    out = []
    for node in coupling.graph.nodes:
        v, depth = node.input(1) if node.op == "conv" else None, 6
        while v is not None and depth >= 0 and v.index not in by_index:
            v = v.producer.inputs[0] if v.producer is not None and v.producer.inputs else None
            depth -= 1
        if v is None or v.index not in by_index or v.source is None:
            continue
        path = v.source.rpartition(".")[0]
        if path in paths:
            out.append((path, node.name, *paths[path]))
    return out


def fold_std_convs_fx(gm: torch.fx.GraphModule, coupling: Coupling, removed: np.ndarray) -> list[str]:
    """The fx route's fold, run BEFORE slicing: each conv whose standardized weight loses input
    channels reads a new parameter, the standardization of the full weight evaluated once and
    sliced; the standardizing chain is then dead code. Returns the module paths folded."""
    fx_nodes = {n.name: n for n in gm.graph.nodes}
    done = []
    for i, (path, conv_name, ko, ki) in enumerate(_std_convs(coupling, removed)):
        conv = fx_nodes.get(conv_name)
        if conv is None or len(conv.args) < 2:
            raise NotRewritable(f"the fx route cannot find the conv {conv_name!r} of weight-standardized {path!r}")
        with torch.no_grad():
            w = _evaluate(conv.args[1], gm, {}, path)
            w = w.index_select(0, torch.as_tensor(ko, dtype=torch.long, device=w.device))
            w = w.index_select(1, torch.as_tensor(ki, dtype=torch.long, device=w.device))
        name = f"graphprune_folded_std_weight_{i}"
        gm.register_parameter(name, nn.Parameter(w.detach().clone(), requires_grad=False))
        with gm.graph.inserting_before(conv):
            attr = gm.graph.get_attr(name)
        attr.meta["val"] = w
        conv.args = (conv.args[0], attr, *conv.args[2:])
        done.append(path)
    if done:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return done


def fold_notes(coupling: Coupling, removed: np.ndarray, route: str) -> list[str]:
    """Report notes: which weight-standardized convs the rewrite folded, and why."""
    paths = sorted(folded_paths(coupling, removed))
    if not paths or route not in ("module", "fx"):
        return []
    how = "replaced by an nn.Conv2d" if route == "module" else "given a folded weight parameter in the fx graph"
    return [f"weight-standardized conv(s) {', '.join(repr(p) for p in paths)} lost input channels and were {how} "
            "holding the standardized full weight (gain/scale folded in), sliced: a re-standardized smaller weight "
            "could not equal the masked original. Inference drop-in; the standardization is no longer recomputed"]
