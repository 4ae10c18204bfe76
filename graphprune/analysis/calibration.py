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
node, reads the activation argument and adds this batch's sums into float64 accumulators
(channel sums: float32 partials over contiguous runs, summed in float64, without copying the
activation; Gram chunks multiplied in
float32 by BLAS, ``GRAM_CHUNK_ROWS`` rows at a time, and summed in float64). Sites that read the
same tensor the same way (q/k/v projections of one hidden state; two convs with one input and one
kernel geometry) share one Gram accumulator. A conv's patch rows are gathered only at the sampled
output positions (at most ``GRAM_ROWS_PER_DIM * d`` over the calibration set, weighted ``n / m``), never unfolded
whole (gathered straight from the activation, in whatever memory format it has; a stride-1 conv
may take the exact shift Gram instead, :func:`shift_gram`). The interpreter frees every
intermediate after its last use, so memory holds one batch's live activations plus O(C) per site
and O(d^2) per distinct Gram input, never the activation set. A graph made only of
memory-format-agnostic ops (:data:`CHANNELS_LAST_SAFE`) runs its 4-d inputs channels-last, and
activations reading a fresh single-use intermediate run in place (:func:`inplace_nodes`): the
same statistics up to float rounding, less forward time and no activation-sized allocation per
activation. Padded token batches: when the graph has an ``attention_mask`` input
(:data:`PADDING_MASK_NAMES`), the rows of [batch, seq, ...] activations at its zeros are left
out of every statistic, so a padded batch gives the statistics of its real tokens.
"""

from __future__ import annotations

import logging
import math
import operator
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx._pytree as fx_pytree
import torch.nn.functional as F

from ..errors import CalibrationError, exception_line
from ..frontends.calib import check_program_batch
from ..frontends.inputs import ExampleInputs, as_args_kwargs
from ..ir import Value
from ..memory import reuse_freed_memory
from ..rules.readers import reads
from .coupling import Coupling

__all__ = [
    "GRAM_ROWS_PER_DIM", "ChannelStats", "GramAcc", "Site", "StatsRecorder", "add_gram", "book_timings", "channel_sums", "collect_stats", "conv_patches",
    "drop_padding", "flat_call_inputs", "flat_inputs", "gram_key", "padding_keep_rows", "padding_mask_index", "pending_sites", "real_token_rows", "reader_sites", "run_program",
    "shift_gram", "shift_gram_cost",
]

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
    out_axis: int | None = None  # the weight's output-channel axis (None: W @ X, rows are not channels)

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


def _act_of(node: Any, w: Value, ax: int) -> tuple[int, int, int | None] | None:
    """(input index of the activation, its channel axis, the weight's output axis or None) for a
    consumer reading ``w`` at ``ax``, from the reader-axes table (:data:`graphprune.rules.READERS`)."""
    r = reads(node)
    if r is None or not r.dense:
        return None
    (li, la), (ri, ra) = r.lhs, r.rhs
    lhs, rhs = node.inputs[li], node.inputs[ri]
    if lhs is None or rhs is None:
        return None
    if rhs is w and ax == ra % w.rank and (not r.either or not lhs.is_weight):
        return li, la % lhs.rank, r.rhs_out % w.rank
    if r.either and lhs is w and ax == la % w.rank and not rhs.is_weight:
        return ri, ra % rhs.rank, None  # W @ X: W's rows index Y's rows, not channels
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
            idx, a_axis, out_axis = got
            act = node.inputs[idx]
            assert act is not None
            r = reads(node)
            bias = node.input(r.bias) if r is not None and r.bias is not None else None
            sites.append(Site(node.name, node.op, w, ax, act, idx, a_axis, bias,
                              int(node.attrs.get("groups", 1)), bool(node.attrs.get("transposed", False)), out_axis))
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


# Gram rows: a conv site sees batch x output-positions patch rows, often hundreds of times more
# than the Gram's side d = C*kh*kw, and the Gram costs rows * d^2. Over the whole calibration set
# a conv site uses at most GRAM_ROWS_PER_DIM * d rows (spread evenly over the batches), drawn
# uniformly without replacement (fixed seed per batch) and weighted by n / m, so G, gsum and gn stay
# unbiased estimates of the full sums. This is an approximation (docs/QUALITY.md "Reconstruction
# speed"); linear/matmul sites (rows = tokens) always use every row.
GRAM_ROWS_PER_DIM = 16
GRAM_CHUNK_ELEMENTS = 1 << 23  # entries of Z materialized at once (float32 product, float64 running sum)
# A stride-1 conv whose shift Gram over every image costs more than the sampled gather takes it
# over a subset of whole images with this many times the gather's row budget (rows of one image
# are correlated, so a subset of images needs more rows than a uniform sample of rows).
SHIFT_OVERSAMPLE = 2
SHIFT_FIXED_PER_ENTRY = 256.0


@dataclass
class GramAcc:
    """Gram sums for one distinct consumer input (shared by every site that reads it the same way)."""

    gram: torch.Tensor | None = None  # float64 [d, d]
    gsum: torch.Tensor | None = None  # float64 [d]
    gn: int = 0
    skipped: str = ""
    last_batch: int = -1
    order: torch.Tensor | None = None  # columns accumulated kernel-major: the channel-major permutation
    taps: int = 1  # kernel positions of a kernel-major accumulator (d = taps * C)

    def finish(self) -> None:
        """Put a conv's kernel-major sums into the channel-major order of ``W.reshape(out, -1)``."""
        if self.order is not None and self.gram is not None and self.gsum is not None:
            p = self.order
            d, k = self.gram.shape[0], self.taps
            c = d // k
            # one strided copy: G_cm[c*k + i, c'*k + j] = G_km[i*C + c, j*C + c']
            self.gram = self.gram.view(k, c, k, c).permute(1, 0, 3, 2).reshape(d, d)
            self.gsum = self.gsum.index_select(0, p)
        self.order = None


def _float(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


SUM_BLOCK = 4096  # rows per float32 partial sum (cascade-summed by torch) before the float64 total
NORM_BLOCK = 1024  # entries per float32 partial sum of squares (a 2-norm, squared in float64)
SQUARE_CHUNK = 1 << 18  # entries squared at once into a reused buffer (channels-last sums of squares)


def channel_sums(x: torch.Tensor, axis: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(sum_r X[r, j], sum_r X[r, j]^2, n) over every axis but ``axis``, reduced in float64."""
    xf = _float(x)
    axis = axis % max(xf.dim(), 1)
    if xf.dim() > 1 and axis != xf.dim() - 1 and not xf.is_contiguous() and xf.movedim(axis, -1).is_contiguous():
        xf, axis = xf.movedim(axis, -1), xf.dim() - 1  # channels-last memory: a free view, channel axis last
    fast = _channel_sums_blocked(xf, axis) if xf.dtype == torch.float32 else None
    if fast is not None:
        return fast
    dims = [d for d in range(xf.dim()) if d != axis]
    s = xf.sum(dim=dims, dtype=torch.float64) if dims else xf.double()
    q = xf.square().sum(dim=dims, dtype=torch.float64) if dims else xf.double().square()
    return s.numpy(), q.numpy(), xf.numel() // max(xf.shape[axis], 1)


def _channel_sums_blocked(x: torch.Tensor, axis: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """:func:`channel_sums` for a contiguous float32 tensor without a copy: float32 partial sums
    (torch's cascade summation) over contiguous runs of one channel, or over blocks of
    ``SUM_BLOCK`` rows when the channel axis is last, then a float64 sum of the partials (a float64
    reduction over the strided axes is ~10x slower). None when the layout does not allow it."""
    if not x.is_contiguous() or x.dim() < 2:
        return None
    c = x.shape[axis]
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    tail = int(np.prod(x.shape[axis + 1:])) if axis + 1 < x.dim() else 1
    if tail > 1:  # [lead, C, tail]: one float32 partial per (lead, channel) over the contiguous tail
        v = x.reshape(lead, c, tail)
        s = v.sum(2).double().sum(0)
        # squares: float32 2-norms of NORM_BLOCK-long runs (a vectorized reduction, no squared copy,
        # ~6x faster than vecdot), squared and summed in float64
        full = tail - tail % NORM_BLOCK
        q = torch.zeros(c, dtype=torch.float64)
        if full:
            q += torch.linalg.vector_norm(v[:, :, :full].reshape(lead, c, -1, NORM_BLOCK), dim=3).double().square().sum((0, 2))
        if tail > full:
            q += torch.linalg.vector_norm(v[:, :, full:], dim=2).double().square().sum(0)
        return s.numpy(), q.numpy(), lead * tail
    rows = lead  # channels last: [rows, C]
    v = x.reshape(rows, c)
    s = torch.zeros(c, dtype=torch.float64)
    q = torch.zeros(c, dtype=torch.float64)
    step = max(1, min(SUM_BLOCK, SQUARE_CHUNK // max(c, 1)))
    buf = torch.empty(min(step, rows), c)
    for start in range(0, rows, step):  # float32 partials of at most SUM_BLOCK rows, summed in float64
        part = v[start:start + step]
        sq = buf[:part.shape[0]]
        torch.mul(part, part, out=sq)
        s += part.sum(0).double()
        q += sq.sum(0).double()
    return s.numpy(), q.numpy(), rows


def conv_patches(
    x: torch.Tensor, kernel: tuple[int, ...], stride: Any, padding: Any, dilation: Any, index: torch.Tensor,
    channel_major: bool = True,
) -> torch.Tensor:
    """Rows ``index`` (flat over batch x out_h x out_w) of the unfolded patches of a 2-d conv input:
    ``[len(index), C * kh * kw]``, channel-major like ``F.unfold(...).transpose(1, 2)`` (or
    kernel-major, ``[m, kh * kw * C]``, with ``channel_major=False``: no transpose), gathered
    straight from ``x`` in whatever memory format it has (no padded or channels-last copy of the
    whole input): taps that fall in the zero padding are zero-filled."""
    bi, yy, xx, inside = _patch_sources(x, kernel, stride, padding, dilation, index)
    h, w = x.shape[2], x.shape[3]
    z = x.permute(0, 2, 3, 1)[bi, yy.clamp(0, h - 1), xx.clamp(0, w - 1)]  # [m, k, C]
    if not bool(inside.all()):
        z.masked_fill_(~inside[..., None], 0.0)
    return (z.transpose(1, 2) if channel_major else z).reshape(len(index), -1)


def _patch_sources(x: torch.Tensor, kernel: tuple[int, ...], stride: Any, padding: Any, dilation: Any,
                   index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, row, column, inside-the-input) ``[m, kh * kw]`` of every (output position, tap): the
    input pixel each patch entry reads, in unpadded coordinates (``inside`` is False in the padding)."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    kh, kw = kernel
    h, w = x.shape[2], x.shape[3]
    oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    bi = torch.div(index, oh * ow, rounding_mode="floor")
    rest = index - bi * (oh * ow)
    oy, ox = torch.div(rest, ow, rounding_mode="floor"), rest % ow
    ty = (torch.arange(kh, dtype=index.dtype) * dh).repeat_interleave(kw)
    tx = (torch.arange(kw, dtype=index.dtype) * dw).repeat(kh)
    yy = (oy * sh - ph)[:, None] + ty[None, :]
    xx = (ox * sw - pw)[:, None] + tx[None, :]
    inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    return bi[:, None].expand_as(yy), yy, xx, inside


def kernel_to_channel_major(c: int, k: int) -> torch.Tensor:
    """Permutation p with ``Z_cm = Z_km[:, p]`` (column c*k + j of Z_cm is column j*C + c of Z_km)."""
    return (torch.arange(k)[None, :] * c + torch.arange(c)[:, None]).reshape(-1)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def conv_out_positions(x: torch.Tensor, kernel: tuple[int, ...], stride: Any, padding: Any, dilation: Any) -> int:
    """batch x out_h x out_w of a 2-d conv on ``x``."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    oh = (x.shape[2] + 2 * ph - dh * (kernel[0] - 1) - 1) // sh + 1
    ow = (x.shape[3] + 2 * pw - dw * (kernel[1] - 1) - 1) // sw + 1
    return x.shape[0] * oh * ow


def add_gram(acc: GramAcc, rows: Callable[[torch.Tensor], torch.Tensor], n: int, d: int, batch: int,
             rows_per_dim: int = GRAM_ROWS_PER_DIM, chunk: int = 0) -> None:
    """Add one batch's ``Z^T Z`` and ``sum Z`` to ``acc``; ``rows(index) -> Z[index]`` ([m, d]).

    At most ``rows_per_dim * d`` of the ``n`` rows are used (every row when ``rows_per_dim`` is 0;
    otherwise uniform without replacement, weight n / m); Z is built ``chunk`` rows at a time, each
    chunk's product taken in float32 (BLAS) and summed into float64 accumulators."""
    cap = rows_per_dim * d if rows_per_dim > 0 else n  # 0: every row
    if n > max(cap, 1):
        gen = torch.Generator().manual_seed(1_000_003 * (batch + 1))
        index = torch.randperm(n, generator=gen)[:cap].sort().values
        weight = n / cap
    else:
        index = torch.arange(n)
        weight = 1.0
    chunk = chunk or max(256, GRAM_CHUNK_ELEMENTS // max(d, 1))
    g = torch.zeros(d, d, dtype=torch.float64) if acc.gram is None else acc.gram
    gs = torch.zeros(d, dtype=torch.float64) if acc.gsum is None else acc.gsum
    for start in range(0, len(index), chunk):
        z = rows(index[start:start + chunk])
        if z.dtype != torch.float64:
            z = z.float()
        g.add_(torch.mm(z.T, z).double(), alpha=weight)
        gs.add_(z.sum(0, dtype=torch.float64), alpha=weight)
    acc.gram, acc.gsum, acc.gn, acc.last_batch = g, gs, acc.gn + n, batch


# Shift Gram of a stride-1 conv (exact). With x~ the zero-padded input and the kernel's taps at
# offsets o(a) = (a_y*dh, a_x*dw), block (a, b) of the kernel-major patch Gram is
#     G_ab = sum_{p in grid} x~[p + o(a)] x~[p + o(b)]^T = sum_{u in W(a)} x~[u] x~[u + delta]^T,
# delta = o(b) - o(a), W(a) = grid + o(a) (the grid: oh x ow output positions). The window edges
# o(a) and o(a) + (oh, ow) cut the padded plane into a few bands per axis; for each delta the
# product is taken per cell (row band x column band; cells made only of padding are skipped) and
# G_ab is the sum of the cells inside W(a). Pairs (a, b) and (b, a) are transposes, so only half of
# the deltas are multiplied: about (2kh-1)(2kw-1)/2 products of C x C over the B*H*W input
# positions instead of the (kh*kw)^2 blocks of C x C over B*oh*ow patch rows (6x fewer for 3x3).
SHIFT_CHUNK_ELEMENTS = 1 << 27  # C x rows entries per float32 product (longer: summed in float64)


def _shifts(kernel: tuple[int, ...]) -> int:
    return ((2 * kernel[0] - 1) * (2 * kernel[1] - 1) + 1) // 2


def shift_gram_cost(c: int, images: int, h: int, w: int, kernel: tuple[int, ...]) -> float:
    """Multiply-adds of :func:`shift_gram` on ``images`` inputs of [c, h, w], plus its fixed work on
    the d x d result (cell sums, scatter: measured at about 200 multiply-adds' worth per entry)."""
    d = c * kernel[0] * kernel[1]
    return float(_shifts(kernel)) * c * c * images * h * w + SHIFT_FIXED_PER_ENTRY * d * d


def _bands(size: int, starts: list[int], span: int, pad: int, inner: int) -> list[tuple[int, int]]:
    """Cuts of [0, size) at every window edge; bands lying wholly in the padding are dropped."""
    cuts = sorted({0, size, *[min(max(s, 0), size) for s in starts], *[min(max(s + span, 0), size) for s in starts]})
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=False) if b > a and b > pad and a < pad + inner]


def shift_gram(x: torch.Tensor, kernel: tuple[int, ...], padding: Any, dilation: Any,
               chunk: int = SHIFT_CHUNK_ELEMENTS, out: torch.Tensor | None = None,
               weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(G, gsum, n) over every patch row of a stride-1 2-d conv on ``x`` [B, C, H, W], kernel-major
    columns (``j * C + c`` for tap j = ky * kw + kx), float64; exact (see above). With ``out`` (a
    float64 [d, d] running sum) ``weight * G`` is added into it block by block and ``out`` is
    returned as G (no d x d temporary); gsum is never weighted."""
    (ph, pw), (dh, dw) = _pair(padding), _pair(dilation)
    kh, kw = kernel
    bsz, c, h, w = x.shape
    oh, ow = h + 2 * ph - (kh - 1) * dh, w + 2 * pw - (kw - 1) * dw
    hp, wp = h + 2 * ph, w + 2 * pw
    # pad by the kernel's reach as well, so that u + delta never leaves the array (zeros there)
    ry, rx = (kh - 1) * dh, (kw - 1) * dw
    xp = F.pad(x, (pw + rx, pw + rx, ph + ry, ph + ry))  # [B, C, Hp+2ry, Wp+2rx], x's memory format
    rows_major = xp.permute(0, 2, 3, 1).is_contiguous()  # channels-last: cells are copied as [n, C]
    if not rows_major:
        xp = xp.transpose(0, 1).contiguous()  # [C, B, ...]: cells are copied as [C, n]
    taps = [(ky * dh, kx * dw) for ky in range(kh) for kx in range(kw)]
    cells = [(r, q) for r in _bands(hp, [t[0] for t in taps], oh, ph, h)
             for q in _bands(wp, [t[1] for t in taps], ow, pw, w)]

    def inside(cell: tuple[tuple[int, int], tuple[int, int]], a: tuple[int, int]) -> bool:
        (r0, r1), (c0, c1) = cell
        return a[0] <= r0 and r1 <= a[0] + oh and a[1] <= c0 and c1 <= a[1] + ow

    def rect(cell: tuple[tuple[int, int], tuple[int, int]], dy: int, dx: int,
             into: torch.Tensor | None = None) -> torch.Tensor:
        """The cell displaced by (dy, dx) as a [C, n] matrix (a transposed view of [n, C] rows
        for a channels-last input: BLAS takes either without another copy), copied into the
        front of ``into`` when given (a scratch buffer reused for every shifted cell: no fresh
        activation-sized allocation, so no page faults, per product)."""
        (r0, r1), (c0, c1) = cell
        part = xp[:, :, ry + r0 + dy:ry + r1 + dy, rx + c0 + dx:rx + c1 + dx]
        if into is None:
            return part.permute(0, 2, 3, 1).reshape(-1, c).T if rows_major else part.reshape(c, -1)
        dst = into[:part.numel()]
        if rows_major:
            dst.view(bsz, r1 - r0, c1 - c0, c).copy_(part.permute(0, 2, 3, 1))
            return dst.view(-1, c).T
        dst.view(c, bsz, r1 - r0, c1 - c0).copy_(part)
        return dst.view(c, -1)

    base = {cell: rect(cell, 0, 0) for cell in cells}  # one copy per cell
    scratch = torch.empty(max(t.numel() for t in base.values()), dtype=x.dtype)
    k = kh * kw
    g = torch.zeros(k * c, k * c, dtype=torch.float64) if out is None else out
    pairs: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, a in enumerate(taps):
        for j, b in enumerate(taps):
            dlt = (b[0] - a[0], b[1] - a[1])
            if dlt > (0, 0) or (dlt == (0, 0) and i == j):  # the other half are transposes
                pairs.setdefault(dlt, []).append((i, j))
    g4 = g.view(k, c, k, c)
    for (dy, dx), ij in pairs.items():
        need = [cell for cell in cells if any(inside(cell, taps[i]) for i, _ in ij)]
        if not need:  # every window is padding: the blocks are zero
            need = cells[:1]
        prods = torch.empty(len(need), c, c, dtype=torch.float64)
        for n_, cell in enumerate(need):
            a_rows, b_rows = base[cell], rect(cell, dy, dx, scratch)
            step = max(1, chunk // max(c, 1))
            prods[n_] = torch.mm(a_rows[:, :step], b_rows[:, :step].T)
            for st in range(step, a_rows.shape[1], step):  # long rows: float32 partial products
                prods[n_] += torch.mm(a_rows[:, st:st + step], b_rows[:, st:st + step].T)
        # block (i, j) = sum of the cells inside W(i): one small GEMM over the cells, one scatter
        member = torch.tensor([[1.0 if inside(cell, taps[i]) else 0.0 for cell in need] for i, _ in ij],
                              dtype=torch.float64)
        blocks = (member @ prods.view(len(need), -1)).view(len(ij), c, c)
        for t, (i, j) in enumerate(ij):  # added in place: no d x d temporary, no scatter copy
            g4[i, :, j, :].add_(blocks[t], alpha=weight)
            if i != j:
                g4[j, :, i, :].add_(blocks[t].T, alpha=weight)
    csum = {cell: base[cell].sum(dim=1, dtype=torch.float64) for cell in cells}
    gs = torch.cat([sum((csum[cell] for cell in cells if inside(cell, a)), torch.zeros(c, dtype=torch.float64))
                    for a in taps])
    return g, gs, bsz * oh * ow


def gram_key(site: Site, fx_node: torch.fx.Node) -> tuple[Any, ...]:
    """Sites with equal keys read the same Z (same tensor, same patch geometry): one Gram for all."""
    if site.op == "conv":
        return ("conv", site.act.name, tuple(site.weight.shape[2:]), repr(_conv_params(fx_node)))
    return ("rows", site.act.name, site.a_axis)


# Ops whose results do not depend on their inputs' memory format (values equal up to float rounding
# of a different summation order in conv) and that accept channels-last tensors. When every
# call in the captured graph is one of these, the calibration forward runs its 4-d float inputs in
# channels-last memory (oneDNN's native conv layout on CPU: no reorder around each conv; about 20%
# less forward time on a VGG-style detector, docs/QUALITY.md "Reconstruction speed"). A graph with
# anything else (a view, a flatten, a linear, a matmul) runs in the inputs' own format.
CHANNELS_LAST_SAFE = frozenset({
    "conv2d", "convolution", "_convolution",
    "batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm",
    "relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh",
    "leaky_relu", "elu", "add", "sub", "mul", "div", "max_pool2d", "max_pool2d_with_indices", "avg_pool2d",
    "cat", "upsample_bilinear2d", "upsample_nearest2d", "dropout", "clone", "alias", "detach",
})


def channels_last_safe(gm: torch.fx.GraphModule) -> bool:
    """True when every call in ``gm`` is in :data:`CHANNELS_LAST_SAFE` (``getitem`` of a tuple too)
    and some user input is 4-d (see above)."""
    four_d = False
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            val = n.meta.get("val")
            four_d = four_d or (isinstance(val, torch.Tensor) and val.dim() == 4 and val.is_floating_point())
        elif n.op == "call_function":
            if n.target is operator.getitem:
                continue
            name = getattr(getattr(n.target, "_overloadpacket", None), "__name__", None)
            if name not in CHANNELS_LAST_SAFE:
                return False
        elif n.op == "call_method" or (n.op == "call_module" and n.target != "_guards_fn"):  # export's shape guards
            return False
    return four_d


_aten = torch.ops.aten
# Activations the calibration forward applies in place (same values, no activation-sized allocation)
# when their input is a fresh result of one of FRESH_RESULT (never a view, a user input or a
# weight) that nothing else reads.
INPLACE_ACTIVATIONS = {
    _aten.relu.default: _aten.relu_.default, _aten.silu.default: _aten.silu_.default,
    _aten.sigmoid.default: _aten.sigmoid_.default, _aten.tanh.default: _aten.tanh_.default,
    _aten.hardswish.default: _aten.hardswish_.default,
}
FRESH_RESULT = frozenset({"conv2d", "convolution", "_convolution", "batch_norm", "linear", "addmm", "add", "mul", "cat"})


def inplace_nodes(gm: torch.fx.GraphModule) -> frozenset[str]:
    """Nodes of ``gm`` the calibration forward may run in place (see :data:`INPLACE_ACTIVATIONS`)."""
    out = set()
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target not in INPLACE_ACTIVATIONS or len(n.args) != 1 or n.kwargs:
            continue
        src = n.args[0]
        name = getattr(getattr(getattr(src, "target", None), "_overloadpacket", None), "__name__", None)
        if isinstance(src, torch.fx.Node) and src.op == "call_function" and name in FRESH_RESULT and len(src.users) == 1:
            out.add(n.name)
    return frozenset(out)


# The transformers convention for padded token batches: a [batch, seq] integer input named
# ``attention_mask``, 0 at padding. Rows of a [batch, seq, ...] activation at padding positions
# are left out of every statistic: nothing downstream of a padded position is ever used (the
# mask hides it from attention and pooling), and its hidden states are far from real tokens'.
PADDING_MASK_NAMES = ("attention_mask",)


def padding_mask_index(gm: torch.fx.GraphModule) -> int | None:
    """Position among the graph's inputs of the padding mask (:data:`PADDING_MASK_NAMES`), if any."""
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, n in enumerate(inputs):
        if n.name in PADDING_MASK_NAMES or str(n.target) in PADDING_MASK_NAMES:
            return i
    return None


KeepRows = tuple[tuple[int, int], torch.Tensor]  # ([batch, seq] of the mask, flat indices of its real tokens)


def real_token_rows(mask: Any) -> KeepRows | None:
    """The real-token rows of a padding mask (a [batch, seq] integer tensor, 0 at padding), or
    None when ``mask`` is not one or pads nothing."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.is_floating_point() or not bool((mask == 0).any()):
        return None
    return (int(mask.shape[0]), int(mask.shape[1])), mask.reshape(-1).nonzero().squeeze(1)


def padding_keep_rows(mask_index: int | None, flat_inputs: Sequence[Any]) -> KeepRows | None:
    """The real-token rows of this batch's padding mask, or None (no mask input, or no padding)."""
    if mask_index is None or mask_index >= len(flat_inputs):
        return None
    return real_token_rows(flat_inputs[mask_index])


def drop_padding(x: torch.Tensor, axis: int, keep: KeepRows | None) -> tuple[torch.Tensor, int]:
    """``x`` without its padding rows when it is a [batch, seq, ...] activation of the masked batch
    (the axis read, ``axis``, among the trailing ones), as [real tokens, ...]; else unchanged."""
    if keep is None or x.dim() < 3 or axis < 2 or tuple(x.shape[:2]) != keep[0]:
        return x, axis
    return x.detach().flatten(0, 1).index_select(0, keep[1]), axis - 1


class StatsRecorder(torch.fx.Interpreter):
    """Runs a captured graph, adding each site's statistics for ``sites`` (fx node name -> the
    sites read there and their running stats) as the node's inputs go by."""

    def __init__(self, gm: torch.fx.GraphModule, sites: dict[str, list[tuple[Site, ChannelStats]]],
                 n_batches: int = 1) -> None:
        super().__init__(gm)
        self.channels_last = channels_last_safe(gm)
        self.inplace = inplace_nodes(gm)
        self.sites = sites
        self.n_batches = max(1, n_batches)
        self.grams: dict[tuple[Any, ...], GramAcc] = {}
        self.gram_of: dict[int, GramAcc] = {}  # id(ChannelStats) -> its shared accumulator
        self.batch = 0
        self.seconds = {"sums": 0.0, "gram": 0.0}  # time inside the statistics (the rest is the forward)
        self.mask_index = padding_mask_index(gm)
        self.keep_rows: KeepRows | None = None  # this batch's real-token rows
        self.padding_rows = 0
        # the last activation read and its unpadded rows: (x, axis, (rows, axis)); one batch only
        self._unpadded: tuple[torch.Tensor, int, tuple[torch.Tensor, int]] | None = None

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.keep_rows = padding_keep_rows(self.mask_index, args)
        self._unpadded = None
        if self.keep_rows is not None:
            self.padding_rows += self.keep_rows[0][0] * self.keep_rows[0][1] - len(self.keep_rows[1])
        if self.channels_last:
            args = tuple(a.contiguous(memory_format=torch.channels_last)
                         if isinstance(a, torch.Tensor) and a.dim() == 4 and a.is_floating_point() else a for a in args)
        return super().run(*args, **kwargs)

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.name in self.inplace:
            with self._set_current_node(n):
                (x,), _ = self.fetch_args_kwargs_from_env(n)
                if isinstance(x, torch.Tensor) and not x._is_view():
                    return INPLACE_ACTIVATIONS[n.target](x)
        todo = self.sites.get(n.name)
        if todo and n.op == "call_function":
            args, _ = self.fetch_args_kwargs_from_env(n)
            for site, st in todo:
                x = args[site.act_index]
                if isinstance(x, torch.Tensor):
                    self._accumulate(site, st, x, n)
        return super().run_node(n)

    def _accumulate(self, site: Site, st: ChannelStats, x: torch.Tensor, fx_node: torch.fx.Node) -> None:
        t0 = time.perf_counter()
        axis = site.a_axis % x.dim()
        if self.keep_rows is not None:  # sites reading one tensor (q/k/v) come in a row: one copy for all
            last = self._unpadded
            if last is None or last[0] is not x or last[1] != axis:
                last = self._unpadded = (x, axis, drop_padding(x, axis, self.keep_rows))
            x, axis = last[2]
        s, q, n = channel_sums(x, axis)
        st.sum = s if st.sum is None else st.sum + s
        st.sumsq = q if st.sumsq is None else st.sumsq + q
        st.n += n
        t1 = time.perf_counter()
        self.seconds["sums"] += t1 - t0
        if not st.want_gram or st.skipped:
            return
        self._accumulate_gram(site, st, x, fx_node, axis)
        self.seconds["gram"] += time.perf_counter() - t1

    def _accumulate_gram(self, site: Site, st: ChannelStats, x: torch.Tensor, fx_node: torch.fx.Node, axis: int) -> None:
        acc = self.gram_of.get(id(st))
        if acc is None:
            acc = self.grams.setdefault(gram_key(site, fx_node), GramAcc())
            self.gram_of[id(st)] = acc
        if acc.skipped or acc.last_batch == self.batch:  # another site already added this batch
            return
        xf = _float(x)
        if site.op == "conv":
            params = _conv_params(fx_node)
            if params is None or x.dim() != 4:
                acc.skipped = "only 2-d convolutions with numeric padding are refit"
                return
            stride, padding, dilation = params
            kernel = tuple(int(k) for k in site.weight.shape[2:])
            k = kernel[0] * kernel[1]
            acc.order, acc.taps = kernel_to_channel_major(xf.shape[1], k), k
            if self._add_shift_gram(acc, xf, kernel, stride, padding, dilation):
                return
            add_gram(acc, lambda idx: conv_patches(xf, kernel, stride, padding, dilation, idx, channel_major=False),
                     conv_out_positions(xf, kernel, stride, padding, dilation), xf.shape[1] * k,
                     self.batch, rows_per_dim=-(-GRAM_ROWS_PER_DIM // self.n_batches))
        else:
            flat = xf.movedim(axis, -1).reshape(-1, xf.shape[axis])
            add_gram(acc, lambda idx: flat.index_select(0, idx), flat.shape[0], flat.shape[1], self.batch, rows_per_dim=0)

    def _add_shift_gram(self, acc: GramAcc, x: torch.Tensor, kernel: tuple[int, ...], stride: Any, padding: Any,
                        dilation: Any) -> bool:
        """Add this batch's shift Gram (:func:`shift_gram`) when it costs fewer multiply-adds than the
        sampled gather; False (nothing added) otherwise. Every image when that is cheaper still;
        else a seeded subset of images giving ``SHIFT_OVERSAMPLE`` times the gather's row budget
        (whole images, so rows are correlated: hence more of them), weighted B / m."""
        if _pair(stride) != (1, 1):
            return False
        b, c, h, w = x.shape
        d = c * kernel[0] * kernel[1]
        n = conv_out_positions(x, kernel, stride, padding, dilation)
        budget = -(-GRAM_ROWS_PER_DIM // self.n_batches) * d
        gather = float(min(n, budget)) * d * d
        per_image = n // max(b, 1)
        m = b if n <= budget else min(b, max(1, math.ceil(SHIFT_OVERSAMPLE * budget / max(per_image, 1))))
        if per_image <= 0 or shift_gram_cost(c, m, h, w, kernel) >= gather:
            return False
        if m < b:
            pick = torch.randperm(b, generator=torch.Generator().manual_seed(2_000_003 * (self.batch + 1)))[:m]
            x = x.index_select(0, pick.sort().values)
        weight = b / m
        acc.gram, gs, _ = shift_gram(x, kernel, padding, dilation, weight=weight,
                                     out=torch.zeros(d, d, dtype=torch.float64) if acc.gram is None else acc.gram)
        acc.gsum = gs.mul_(weight) if acc.gsum is None else acc.gsum.add_(gs, alpha=weight)
        acc.gn, acc.last_batch = acc.gn + n, self.batch
        return True

    def finish(self) -> None:
        for acc in self.grams.values():
            acc.finish()
        for pairs in self.sites.values():
            for _, st in pairs:
                acc = self.gram_of.get(id(st))
                if acc is None:
                    continue
                st.gram, st.gsum, st.gn = acc.gram, acc.gsum, acc.gn
                st.skipped = st.skipped or acc.skipped


def flat_inputs(gm: torch.fx.GraphModule, batch: ExampleInputs) -> list[Any]:
    """``batch`` as the exported module's placeholders take it (flattened by its input spec)."""
    return flat_call_inputs(gm, *as_args_kwargs(batch))


def flat_call_inputs(gm: torch.fx.GraphModule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """A call's ``(args, kwargs)`` as the exported module's placeholders take them."""
    return list(fx_pytree.tree_flatten_spec((args, kwargs), gm._in_spec))


def run_program(program: Any, batch: ExampleInputs, interp: torch.fx.Interpreter | None = None) -> Any:
    """Run the exported program's module on one batch (through ``interp`` when given)."""
    if interp is None:
        args, kwargs = as_args_kwargs(batch)
        return program.module()(*args, **kwargs)
    return interp.run(*flat_inputs(interp.module, batch))


def pending_sites(sites: Iterable[Site], have: dict[str, ChannelStats],
                  gram_for: set[str] | frozenset[str]) -> dict[str, list[tuple[Site, ChannelStats]]]:
    """Fresh stats for the sites not already in ``have`` with what is asked (a Gram for the nodes
    in ``gram_for``), grouped by site node."""
    todo: dict[str, list[tuple[Site, ChannelStats]]] = {}
    for s in sites:
        got = have.get(s.node)
        need_gram = s.node in gram_for
        if got is not None and (got.gram is not None or got.skipped or not need_gram):
            continue
        todo.setdefault(s.node, []).append((s, ChannelStats(want_gram=need_gram)))
    return todo


def book_timings(timings: dict[str, float], spent: float, seconds: dict[str, float]) -> None:
    """Add a calibration pass's ``spent`` seconds to ``timings``, split into the forward and the
    statistics (``seconds``: a :class:`StatsRecorder`'s sums and Gram time)."""
    for key, v in (("forward", spent - seconds["sums"] - seconds["gram"]), ("sums", seconds["sums"]),
                   ("gram", seconds["gram"])):
        timings[f"calibration:{key}"] = timings.get(f"calibration:{key}", 0.0) + v


def collect_stats(
    program: Any,
    sites: list[Site],
    calib: Iterable[ExampleInputs],
    gram_for: set[str] | frozenset[str] = frozenset(),
    stats: dict[str, ChannelStats] | None = None,
    progress: Callable[[int, int], None] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, ChannelStats]:
    """Stream ``calib`` once through ``program`` and return per-site stats (keyed by node name).

    ``gram_for`` lists site nodes whose Gram matrix is needed; sites already present in ``stats``
    with what is asked are not collected again. ``progress(done, total)`` hears each batch.
    ``timings`` (e.g. the pass context's) gets the seconds spent in the forward passes
    (``calibration:forward``), the channel sums (``calibration:sums``) and the Grams
    (``calibration:gram``) added.
    """
    out = dict(stats or {})
    todo = pending_sites(sites, out, gram_for)
    if not todo:
        return out
    gm = program.module()
    rec = StatsRecorder(gm, todo, len(calib) if isinstance(calib, Sized) else 1)
    total = len(calib) if isinstance(calib, Sized) else 0
    t0 = time.perf_counter()
    with torch.no_grad(), reuse_freed_memory():  # activation-sized blocks are reused, not faulted in again
        for i, batch in enumerate(calib):
            check_program_batch(program, batch, i)
            rec.batch = i
            try:
                run_program(program, batch, rec)
            except Exception as exc:  # a batch the captured graph cannot run
                raise CalibrationError(
                    f"calib= batch {i} could not be run through the captured graph ({exception_line(exc)}); "
                    "batches must match the example inputs "
                    "except in the batch (and sequence) dims the capture kept symbolic"
                ) from exc
            if progress is not None:
                progress(i + 1, total)
    rec.finish()
    if rec.padding_rows:
        log.info("calibration: %d padding positions (attention_mask == 0) left out of the statistics", rec.padding_rows)
    if timings is not None:
        book_timings(timings, time.perf_counter() - t0, rec.seconds)
    for name, pairs in todo.items():
        for _, st in pairs:
            if st.skipped:
                log.info("calibration: no Gram for %s (%s)", name, st.skipped)
            out[name] = st
    log.debug("calibration: statistics for %d sites", len(todo))
    return out

