"""Retraining-free reconstruction of a pruned model from calibration statistics.

Every consumer site (``analysis.calibration.Site``) is viewed as a linear map ``y = W z + b`` with
``W`` [out, d]: a linear's weight; a conv's weight reshaped to [out, C*kh*kw] acting on unfolded
patches z; a weight operand of matmul/addmm transposed. Pruning keeps the columns K of W (and
possibly a subset of its rows); the removed columns R read channels that are gone.

Bias compensation (FLAP's baseline bias, Nagel et al. 2019 style): the removed channels' mean
contribution is folded into the bias,

    b' = b + W[:, R] mu[R]           (conv: W summed over its kernel positions first)

which is exact in expectation for a linear consumer. For a conv the zero padding at borders is
ignored (border outputs see fewer than kh*kw positions of the mean); the error is confined to
the border ring.

Least-squares refit (the structured OBS / ZipLM update with a ridge): with G = Z^T Z the Gram of
the consumer's dense inputs over calibration rows, augmented with a constant column 1 (so the
bias is refit too: G~ = [[G, s], [s^T, n]], s = sum_r z_r) when the consumer has or may get a
bias, the kept weights minimizing  sum_r ||W z_r + b - (W' z_r[K] + b')||^2 + lambda ||W'||^2 are

    [W', b'] = [W, b] G~[:, K~] (G~[K~, K~] + lambda I_K)^-1,   K~ = K + {intercept},
    lambda = ridge * mean(diag G[K, K])

(the intercept is not regularized), solved by a Cholesky factorization that consumers sharing a
Gram and a kept column set reuse (one factorization, one triangular solve per right-hand side). Statistics come from the dense model's activations, so each
consumer is refit independently (no error propagation between layers is modelled).

BatchNorm recalibration: running mean/var of every BatchNorm module are reset and re-estimated
as cumulative averages (momentum=None) over the calibration batches, in eval mode otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..analysis.calibration import ChannelStats, Site
from ..analysis.coupling import Coupling
from ..frontends.inputs import ExampleInputs, as_args_kwargs
from .slicing import set_tensor, tensor_owners

__all__ = [
    "LSQ_RIDGE", "as_matrix", "bias_delta", "get_tensor", "lsq_refit", "recalibrate_bn", "refit_on_pruned_inputs", "set_bias",
    "set_weight", "shrunk_sites",
]

log = logging.getLogger(__name__)

# the least-squares refit's default ridge, relative to mean(diag G[K, K]): measured on MiniLM at 0.5
# FLOPs (cosine 0.8852 at 1e-2, 0.8872 at 1e-3, 0.8873 at 1e-4) and the trained byte LLaMA at 20%
# removed (perplexity x1.0030 at 1e-2, x1.0011 at 1e-3); docs/QUALITY.md, docs/LLM.md
LSQ_RIDGE = 1e-3


def get_tensor(root: nn.Module, fqn: str) -> torch.Tensor | None:
    mod_path, _, name = fqn.rpartition(".")
    try:
        mod = root.get_submodule(mod_path) if mod_path else root
    except AttributeError:
        return None
    t = getattr(mod, name, None)
    return t if isinstance(t, torch.Tensor) else None


def _out_axis(site: Site) -> int:
    """The weight's output-channel axis (the reader-axes table's, kept on the site); a ``W @ X``
    site has none, and its contracted axis stands in (the callers then skip it, as ax == out)."""
    return site.out_axis if site.out_axis is not None else site.w_axis


def as_matrix(site: Site, w: torch.Tensor) -> torch.Tensor | None:
    """The site's weight as W [out, d] (d = C, or C*prod(k) for a conv); None if not linear-like."""
    if site.linear_like:
        return w.reshape(w.shape[0], -1)
    if site.op in ("matmul", "addmm") and w.dim() == 2 and site.w_axis % 2 == 0:
        return w.T
    return None


def shrunk_sites(sites: Iterable[Site], coupling: Coupling, removed: np.ndarray) -> list[Site]:
    """Sites whose weight lost input columns and that only one node reads."""
    out = []
    for s in sites:
        if len(coupling.kept(s.weight, s.w_axis, removed)) < s.weight.shape[s.w_axis] and len(s.weight.users) == 1:
            out.append(s)
    return out


def bias_delta(site: Site, w_dense: torch.Tensor, st: ChannelStats, coupling: Coupling, removed: np.ndarray) -> torch.Tensor | None:
    """W[:, R] mu[R] over the kept output rows (see the module docstring); None if unsupported."""
    ax = site.w_axis % w_dense.dim()
    oax = _out_axis(site) % w_dense.dim()
    if ax == oax or st.sum is None:
        return None
    w = w_dense.double()
    other = [d for d in range(w.dim()) if d not in (ax, oax)]
    w2 = w.sum(dim=other) if other else w  # kernel positions summed
    w2 = w2 if ax > oax else w2.T  # [out, C]
    gone = np.setdiff1d(np.arange(w.shape[ax]), coupling.kept(site.weight, ax, removed))
    mu = torch.as_tensor(st.mean[gone], dtype=torch.float64)
    delta = w2[:, torch.as_tensor(gone)] @ mu
    rows = torch.as_tensor(coupling.kept(site.weight, oax, removed))
    return delta[rows]


def _module_of(root: nn.Module, fqn: str) -> tuple[nn.Module, str] | None:
    mod_path, _, name = fqn.rpartition(".")
    try:
        return (root.get_submodule(mod_path) if mod_path else root), name
    except AttributeError:
        return None


def can_create_bias(root: nn.Module, site: Site) -> bool:
    if site.weight.source is None or site.op not in ("linear", "conv"):
        return False
    got = _module_of(root, site.weight.source)
    return bool(got and got[1] == "weight" and isinstance(got[0], (nn.Linear, nn.modules.conv._ConvNd))
                and getattr(got[0], "bias", None) is None)


def set_bias(root: nn.Module, site: Site, value: torch.Tensor) -> bool:
    """Set the consumer's bias in the pruned model (creating it for Linear/Conv); False if impossible."""
    if site.bias is not None and site.bias.source is not None:
        t = get_tensor(root, site.bias.source)
        if t is None or t.shape != value.shape:
            return False
        with torch.no_grad():
            t.copy_(value.to(t.dtype))
        return True
    if not can_create_bias(root, site):
        return False
    assert site.weight.source is not None
    mod, _ = _module_of(root, site.weight.source)  # type: ignore[misc]
    w = mod.weight
    mod.bias = nn.Parameter(value.to(dtype=w.dtype, device=w.device).clone(), requires_grad=w.requires_grad)
    return True


def current_bias(root: nn.Module, site: Site, rows: int, like: torch.Tensor) -> torch.Tensor:
    if site.bias is not None and site.bias.source is not None:
        t = get_tensor(root, site.bias.source)
        if t is not None:
            return t.detach().double()
    return torch.zeros(rows, dtype=torch.float64, device=like.device)


def set_weight(root: nn.Module, site: Site, value: torch.Tensor) -> bool:
    assert site.weight.source is not None
    old = get_tensor(root, site.weight.source)
    if old is None or old.numel() != value.numel():
        return False
    new = value.reshape(old.shape).to(old.dtype) if site.linear_like else value.T.reshape(old.shape).to(old.dtype)
    owners = tensor_owners(root).get(id(old))
    if not owners:
        return False
    set_tensor(owners, new.contiguous(), isinstance(old, nn.Parameter), old.requires_grad)
    return True


def lsq_refit(
    site: Site, w_dense: torch.Tensor, b_dense: torch.Tensor | None, st: ChannelStats, coupling: Coupling,
    removed: np.ndarray, ridge: float, intercept: bool, factors: dict[Any, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(W' [out_kept, |K|], b' or None) by the closed form in the module docstring; None if unsupported.

    ``factors`` caches the Cholesky factor of ``G~[K~, K~] + lambda I`` across calls: consumers that
    share a Gram (one input tensor) and keep the same columns are solved with one factorization."""
    mat = as_matrix(site, w_dense.double())
    if mat is None or st.gram is None or st.gsum is None:
        return None
    ax = site.w_axis % w_dense.dim()
    kept_ch = coupling.kept(site.weight, ax, removed)
    per = mat.shape[1] // site.weight.shape[ax]  # kernel positions per channel (1 for linear)
    cols = (kept_ch[:, None] * per + np.arange(per)[None, :]).reshape(-1)
    rows = torch.as_tensor(coupling.kept(site.weight, _out_axis(site) % w_dense.dim(), removed))
    w = mat[rows]
    k = torch.as_tensor(cols)
    gk = st.gram.index_select(1, k)  # G[:, K]
    rhs = w @ gk  # [W, b] G~[:, K~], first |K| columns
    gkk = gk.index_select(0, k)
    if intercept:
        b = b_dense.double()[rows] if b_dense is not None else torch.zeros(len(rows), dtype=torch.float64)
        sk = st.gsum.index_select(0, k)
        rhs = torch.cat([rhs + b[:, None] * sk[None, :], (w @ st.gsum + b * float(st.gn))[:, None]], dim=1)
        n = len(cols)
        aug = torch.empty(n + 1, n + 1, dtype=torch.float64)
        aug[:n, :n], aug[:n, n], aug[n, :n], aug[n, n] = gkk, sk, sk, float(st.gn)
        gkk = aug
    key = (id(st.gram), cols.tobytes(), intercept, ridge)
    chol = factors.get(key) if factors is not None else None
    if chol is None:
        chol = _factor(gkk, len(cols), ridge)
        if chol is None:
            return None
        if factors is not None:
            factors[key] = chol
    sol = torch.cholesky_solve(rhs.T, chol).T  # (G~[K~,K~] + lambda I) is symmetric positive definite
    if intercept:
        return sol[:, :-1], sol[:, -1]
    return sol, None


def _factor(gkk: torch.Tensor, n_reg: int, ridge: float) -> torch.Tensor | None:
    """Lower Cholesky factor of ``gkk + lambda I`` (lambda on the first ``n_reg`` diagonal entries);
    the ridge is raised tenfold until the factorization succeeds (a rank-deficient G~ with ridge 0);
    None (the consumer is left as it is) if it never does."""
    lam = ridge * float(gkk.diagonal()[:n_reg].mean()) if n_reg else 0.0
    lam = max(lam, 1e-12)
    for _ in range(8):
        a = gkk.clone()
        a.diagonal()[:n_reg] += lam
        if n_reg < a.shape[0]:  # the intercept entry: unregularized but kept positive
            a.diagonal()[n_reg:] += 1e-12
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            return chol
        lam *= 10.0
    return None


def recalibrate_bn(model: nn.Module, calib: Iterable[ExampleInputs]) -> int:
    """Re-estimate BatchNorm running statistics on ``calib``; returns how many modules changed."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    was = model.training
    saved: list[Any] = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with torch.no_grad():
            for batch in calib:
                args, kwargs = as_args_kwargs(batch)
                model(*args, **kwargs)
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
        model.train(was)
    return len(bns)


# --------------------------------------------------------------------------------------------
# Refit against the dense outputs on the pruned model's own inputs (``reconstruct-lsq{rounds=k}``)
#
# The closed form above fits every consumer on the DENSE model's inputs, so the errors of earlier
# layers are not seen by later ones. A correction round runs the calibration data through the
# dense program and the current pruned model side by side; for every refit consumer with the
# pruned input rows z' (only kept channels; conv: patches at sampled positions) and the dense
# consumer's output rows t (kept output channels), with z~ = [z', 1] when there is an intercept,
#
#     A = sum z~ z~^T,   C = sum z~ t^T,   [W', b']^T = (A + lambda I) ^-1 C,
#     lambda = ridge * mean(diag A[:d', :d'])
#
# i.e. the kept weights that best reproduce the dense layer's output from what the pruned model
# actually feeds it (the SparseGPT / FLAP-style sequential target).


class _Outputs(torch.fx.Interpreter):
    """Runs the dense exported program, keeping this batch's outputs of the named nodes."""

    def __init__(self, gm: torch.fx.GraphModule, names: set[str]) -> None:
        super().__init__(gm)
        self.names = names
        self.out: dict[str, torch.Tensor] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        got = super().run_node(n)
        if n.name in self.names and isinstance(got, torch.Tensor):
            self.out[n.name] = got.detach()
        return got


def _consumer_module(root: nn.Module, site: Site) -> nn.Module | None:
    if site.weight.source is None or not site.linear_like:
        return None
    got = _module_of(root, site.weight.source)
    if got is None or got[1] != "weight":
        return None
    mod = got[0]
    if isinstance(mod, nn.Linear):
        return mod
    if isinstance(mod, nn.Conv2d) and mod.groups == 1 and not isinstance(mod.padding, str):
        return mod
    return None


def _target_rows(mod: nn.Module, x: torch.Tensor, t: torch.Tensor, out_rows: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], int, int, torch.Tensor]:
    """(index -> z' rows, n rows, d', t rows for all n) for one batch."""
    from ..analysis.calibration import conv_out_positions, conv_patches

    if isinstance(mod, nn.Conv2d):
        k = tuple(int(v) for v in mod.kernel_size)
        n = conv_out_positions(x, k, mod.stride, mod.padding, mod.dilation)
        tt = t.movedim(1, -1).reshape(-1, t.shape[1]).index_select(1, out_rows)
        return (lambda idx: conv_patches(x, k, mod.stride, mod.padding, mod.dilation, idx)), n, x.shape[1] * k[0] * k[1], tt
    flat = x.reshape(-1, x.shape[-1])
    return (lambda idx: flat.index_select(0, idx)), flat.shape[0], flat.shape[1], \
        t.reshape(-1, t.shape[-1]).index_select(1, out_rows)


def refit_on_pruned_inputs(
    program: Any, pruned: nn.Module, sites: list[Site], coupling: Coupling, removed: np.ndarray,
    calib: Iterable[ExampleInputs], ridge: float, rows_per_dim: int,
) -> list[Site]:
    """One correction round (see above) for ``sites`` (refit consumers); returns those updated."""
    from ..analysis.calibration import (
        drop_padding,
        flat_inputs,
        padding_keep_rows,
        padding_mask_index,
        run_program,
    )

    mods = {s.node: m for s in sites if (m := _consumer_module(pruned, s)) is not None}
    todo = [s for s in sites if s.node in mods]
    if not todo:
        return []
    acc: dict[str, list[Any]] = {s.node: [None, None, 0] for s in todo}  # A, C, n
    rows = {s.node: torch.as_tensor(coupling.kept(s.weight, _out_axis(s) % s.weight.rank, removed)) for s in todo}
    inputs: dict[str, torch.Tensor] = {}
    hooks = [mods[s.node].register_forward_pre_hook(
        lambda _m, args, name=s.node: inputs.__setitem__(name, args[0].detach())) for s in todo]
    dense = _Outputs(program.module(), {s.node for s in todo})
    mask_index = padding_mask_index(dense.module)
    intercept = {s.node: s.bias is not None or can_create_bias(pruned, s) or getattr(mods[s.node], "bias", None) is not None
                 for s in todo}
    try:
        with torch.no_grad():
            for b, batch in enumerate(calib):
                run_program(program, batch, dense)
                args, kwargs = as_args_kwargs(batch)
                pruned(*args, **kwargs)
                keep = padding_keep_rows(mask_index, flat_inputs(dense.module, batch))
                for s in todo:
                    x = inputs.pop(s.node).float()
                    t = dense.out.pop(s.node).float()
                    if isinstance(mods[s.node], nn.Linear):  # token rows: padding left out
                        x, t = drop_padding(x, x.dim() - 1, keep)[0], drop_padding(t, t.dim() - 1, keep)[0]
                    _accumulate_targets(acc[s.node], *_target_rows(mods[s.node], x, t, rows[s.node]),
                                        intercept[s.node], b, rows_per_dim)
    finally:
        for h in hooks:
            h.remove()
    done = []
    for s in todo:
        a, c, _ = acc[s.node]
        if a is None:
            continue
        n_reg = a.shape[0] - (1 if intercept[s.node] else 0)
        chol = _factor(a, n_reg, ridge)
        if chol is None:
            continue
        sol = torch.cholesky_solve(c, chol).T  # [out_kept, d' (+1)]
        w, bias = (sol[:, :-1], sol[:, -1]) if intercept[s.node] else (sol, None)
        if not set_weight(pruned, s, w):
            continue
        if bias is not None:
            set_bias(pruned, s, bias)
        done.append(s)
    return done


def _accumulate_targets(acc: list[Any], rows: Callable[[torch.Tensor], torch.Tensor], n: int, d: int, t: torch.Tensor,
                        intercept: bool, batch: int, rows_per_dim: int, chunk_elems: int = 1 << 23) -> None:
    cap = max(rows_per_dim * d, 1)
    if n > cap:
        index = torch.randperm(n, generator=torch.Generator().manual_seed(7_000_003 * (batch + 1)))[:cap].sort().values
        weight = n / cap
    else:
        index, weight = torch.arange(n), 1.0
    dd = d + (1 if intercept else 0)
    a = torch.zeros(dd, dd, dtype=torch.float64) if acc[0] is None else acc[0]
    c = torch.zeros(dd, t.shape[1], dtype=torch.float64) if acc[1] is None else acc[1]
    step = max(256, chunk_elems // max(dd, 1))
    for start in range(0, len(index), step):
        idx = index[start:start + step]
        z = rows(idx)
        if intercept:
            z = torch.cat([z, torch.ones(len(idx), 1, dtype=z.dtype)], dim=1)
        a.add_(torch.mm(z.T, z).double(), alpha=weight)
        c.add_(torch.mm(z.T, t.index_select(0, idx)).double(), alpha=weight)
    acc[0], acc[1], acc[2] = a, c, acc[2] + n
