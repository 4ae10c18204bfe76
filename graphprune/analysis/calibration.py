"""Activation statistics at consumer inputs, gathered in one streamed pass over calibration data.

A *site* is a consumer node that reads a prunable weight axis (``Coupling.readers``): a linear's
input columns, a conv's input channels, the contracted side of a matmul/addmm with a weight. For
the site's input activation ``X`` with its channel axis moved last and every other axis
flattened into rows (``X: [n, C]``; for a conv the rows are batch x spatial positions):

    count  n                      (rows seen over all batches)
    sum    s_j   = sum_r X[r, j]           mean  mu_j  = s_j / n
    sumsq  q_j   = sum_r X[r, j]^2         var   v_j   = q_j / n - mu_j^2,   ||X_j||_2 = sqrt(q_j)
    gram   G     = Z^T Z,  gsum = sum_r Z[r, :]   (only for sites a reconstruction pass asks for)

where ``Z = X`` for linear/matmul consumers and, for a 2-d conv with groups=1, the unfolded
patches ``Z: [n_patches, C * kh * kw]`` (channel-major, matching ``W.reshape(out, -1)``), so a
conv is a linear map ``Y = Z W^T`` and the same least-squares algebra applies.

Batches may differ in size along the dims the capture kept symbolic (batch; sequence for token
inputs): the sums are per channel over all rows, so they equal the sums over the concatenation
of the batches whatever their sizes. The exported program's module runs under a :class:`torch.fx.Interpreter` that, at each site
node, reads the activation argument and adds this batch's sums into float64 accumulators. The
interpreter frees every intermediate after its last use, so memory holds one batch's live
activations plus O(C) per site (O(d^2) per Gram site), never the activation set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx._pytree as fx_pytree
import torch.nn.functional as F

from ..errors import CalibrationError
from ..frontends.calib import check_program_batch
from ..frontends.inputs import ExampleInputs, as_args_kwargs
from ..ir import Value
from .coupling import Coupling

__all__ = ["ChannelStats", "Site", "collect_stats", "reader_sites", "run_program"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Site:
    """A consumer node reading weight ``weight`` along ``w_axis`` from ``act`` along ``a_axis``."""

    node: str
    op: str
    weight: Value
    w_axis: int
    act: Value
    act_index: int  # position of the activation among the node's inputs (= fx positional arg)
    a_axis: int
    bias: Value | None
    groups: int = 1
    transposed: bool = False

    @property
    def linear_like(self) -> bool:
        """True when ``Y = X W^T`` with W [out, C] (linear) or W [out, C, *k] (conv, groups=1)."""
        return (self.op == "linear") or (self.op == "conv" and self.groups == 1 and not self.transposed)


@dataclass
class ChannelStats:
    """Streaming sums for one site (see the module docstring)."""

    n: int = 0
    sum: np.ndarray | None = None
    sumsq: np.ndarray | None = None
    gram: torch.Tensor | None = None  # float64 [d, d]
    gsum: torch.Tensor | None = None  # float64 [d]
    gn: int = 0
    want_gram: bool = False
    skipped: str = ""

    @property
    def mean(self) -> np.ndarray:
        assert self.sum is not None
        return self.sum / max(self.n, 1)

    @property
    def var(self) -> np.ndarray:
        assert self.sumsq is not None
        return np.maximum(self.sumsq / max(self.n, 1) - self.mean**2, 0.0)

    @property
    def rms(self) -> np.ndarray:
        """||X_j||_2 / sqrt(n): the per-channel input norm Wanda uses, scale-free in n."""
        assert self.sumsq is not None
        return np.sqrt(self.sumsq / max(self.n, 1))


def _act_of(node: Any, w: Value, ax: int) -> tuple[int, int] | None:
    """(input index of the activation, its channel axis) for a consumer reading ``w`` at ``ax``."""
    ins = node.inputs
    if node.op == "linear" and ins[1] is w and ax == 1 and ins[0] is not None:
        return 0, ins[0].rank - 1
    if node.op == "conv" and ins[1] is w and ins[0] is not None:
        transposed = bool(node.attrs.get("transposed", False))
        if ax == (0 if transposed else 1) and int(node.attrs.get("groups", 1)) == 1:
            return 0, 1
    if node.op == "matmul":
        a, c = ins[0], ins[1]
        if c is w and a is not None and ax == c.rank - 2 and not a.is_weight:
            return 0, a.rank - 1
        if a is w and c is not None and ax == a.rank - 1 and not c.is_weight:
            return 1, c.rank - 2
    if node.op == "addmm" and ins[2] is w and ax == 0 and ins[1] is not None:
        return 1, ins[1].rank - 1
    return None


def reader_sites(coupling: Coupling, prunable_only: bool = True) -> list[Site]:
    """Every consumer node reading a weight axis that carries units (frozen axes are skipped)."""
    sites: list[Site] = []
    for wi, ax in sorted(coupling.readers):
        w = coupling.graph.values[wi]
        if prunable_only and not coupling.prunable(w, ax):
            continue
        for node in w.users:
            got = _act_of(node, w, ax)
            if got is None:
                continue
            idx, a_axis = got
            act = node.inputs[idx]
            assert act is not None
            bias = node.input(2) if node.op in ("linear", "conv") else (node.inputs[0] if node.op == "addmm" else None)
            sites.append(Site(node.name, node.op, w, ax, act, idx, a_axis, bias,
                              int(node.attrs.get("groups", 1)), bool(node.attrs.get("transposed", False))))
    return sites


def _conv_params(fx_node: torch.fx.Node) -> tuple[Any, Any, Any] | None:
    """(stride, padding, dilation) of an ATen conv call, or None when unfold cannot mirror it."""
    name = getattr(getattr(fx_node.target, "_overloadpacket", None), "__name__", "")
    a = list(fx_node.args)
    if name in ("conv2d",):
        stride, padding, dilation = (a[3] if len(a) > 3 else 1), (a[4] if len(a) > 4 else 0), (a[5] if len(a) > 5 else 1)
    elif name in ("convolution", "_convolution"):
        stride, padding, dilation = a[3], a[4], a[5]
    else:
        return None
    if isinstance(padding, str):
        return None
    return stride, padding, dilation


def _rows(x: torch.Tensor, axis: int) -> torch.Tensor:
    return x.detach().movedim(axis, -1).reshape(-1, x.shape[axis]).double()


class _Recorder(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, sites: dict[str, list[tuple[Site, ChannelStats]]]) -> None:
        super().__init__(gm)
        self.sites = sites

    def run_node(self, n: torch.fx.Node) -> Any:
        todo = self.sites.get(n.name)
        if todo and n.op == "call_function":
            args, _ = self.fetch_args_kwargs_from_env(n)
            for site, st in todo:
                x = args[site.act_index]
                if isinstance(x, torch.Tensor):
                    _accumulate(site, st, x, n)
        return super().run_node(n)


def _accumulate(site: Site, st: ChannelStats, x: torch.Tensor, fx_node: torch.fx.Node) -> None:
    axis = site.a_axis % x.dim()
    rows = _rows(x, axis)
    s, q = rows.sum(0).numpy(), (rows * rows).sum(0).numpy()
    st.sum = s if st.sum is None else st.sum + s
    st.sumsq = q if st.sumsq is None else st.sumsq + q
    st.n += rows.shape[0]
    if not st.want_gram or st.skipped:
        return
    if site.op == "conv":
        params = _conv_params(fx_node)
        w = site.weight
        if params is None or x.dim() != 4:
            st.skipped = "only 2-d convolutions with numeric padding are refit"
            return
        stride, padding, dilation = params
        z = F.unfold(x.detach().double(), tuple(w.shape[2:]), dilation=dilation, padding=padding, stride=stride)
        z = z.transpose(1, 2).reshape(-1, z.shape[1])
    else:
        z = rows
    g = z.T @ z
    st.gram = g if st.gram is None else st.gram + g
    gs = z.sum(0)
    st.gsum = gs if st.gsum is None else st.gsum + gs
    st.gn += z.shape[0]


def run_program(program: Any, batch: ExampleInputs, interp: torch.fx.Interpreter | None = None) -> Any:
    """Run the exported program's module on one batch (through ``interp`` when given)."""
    gm = interp.module if interp is not None else program.module()
    args, kwargs = as_args_kwargs(batch)
    flat = fx_pytree.tree_flatten_spec((args, kwargs), gm._in_spec)
    if interp is None:
        return gm(*args, **kwargs)
    return interp.run(*flat)


def collect_stats(
    program: Any,
    sites: list[Site],
    calib: Iterable[ExampleInputs],
    gram_for: set[str] | frozenset[str] = frozenset(),
    stats: dict[str, ChannelStats] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, ChannelStats]:
    """Stream ``calib`` once through ``program`` and return per-site stats (keyed by node name).

    ``gram_for`` lists site nodes whose Gram matrix is needed; sites already present in ``stats``
    with what is asked are not collected again. ``progress(done, total)`` hears each batch.
    """
    out = dict(stats or {})
    todo: dict[str, list[tuple[Site, ChannelStats]]] = {}
    for s in sites:
        have = out.get(s.node)
        need_gram = s.node in gram_for
        if have is not None and (have.gram is not None or have.skipped or not need_gram):
            continue
        st = ChannelStats(want_gram=need_gram)
        todo.setdefault(s.node, []).append((s, st))
    if not todo:
        return out
    gm = program.module()
    rec = _Recorder(gm, todo)
    total = len(calib) if isinstance(calib, Sized) else 0
    with torch.no_grad():
        for i, batch in enumerate(calib):
            check_program_batch(program, batch, i)
            try:
                run_program(program, batch, rec)
            except Exception as exc:  # a batch the captured graph cannot run
                raise CalibrationError(
                    f"calib= batch {i} could not be run through the captured graph ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); batches must match the example inputs "
                    "except in the batch (and sequence) dims the capture kept symbolic"
                ) from exc
            if progress is not None:
                progress(i + 1, total)
    for name, pairs in todo.items():
        for _, st in pairs:
            if st.skipped:
                log.info("calibration: no Gram for %s (%s)", name, st.skipped)
            out[name] = st
    log.debug("calibration: statistics for %d sites", len(todo))
    return out

