"""Loss-gradient statistics per unit, for the Taylor and Fisher criteria.

For each calibration batch b, with g = dL_b/dw for every weight element w of a unit u:

    t_u(b) = sum over every element of u in every tensor slice:  w * g
             (first-order change of L_b when u is removed, i.e. its weights set to zero, is -t_u)
    f_u(b) = sum over the same elements:  w^2 * g^2

    taylor(u) = mean_b t_u(b)^2          (Molchanov et al. 2019, squared group Taylor)
    fisher(u) = mean_b f_u(b)            (OBD saliency w^2 F_ii / 2 with the empirical Fisher diagonal)

Default loss. The output-distillation MSE to the dense model, L = 1/2 ||f(x) - f_dense(x)||^2,
has zero gradient at the dense model itself, so its Taylor term vanishes; its curvature there is
the Gauss-Newton matrix J^T J. We estimate it with random probes: L_b = <f(x_b), r_b>,
r_b ~ N(0, I), for which E_r[t_u^2] = ||J w_u||^2, i.e. the squared first-order change of the
outputs when u is removed (twice the second-order change of the distillation MSE), and
E_r[g^2] = diag(J^T J) (the Fisher diagonal of a unit-variance Gaussian output model). A user loss
``loss(outputs, batch) -> scalar`` replaces the probe (e.g. cross-entropy on labelled data).

Gradients are taken on the exported program's module with its parameters replaced by fresh
leaves sharing storage, so the user's model (its ``requires_grad`` flags, ``.grad``) is untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..errors import CalibrationError
from ..frontends.calib import check_program_batch
from ..frontends.inputs import ExampleInputs, as_args_kwargs
from ..rewrite.slicing import set_tensor, tensor_owners
from .coupling import Coupling

__all__ = ["GradientScores", "LossFn", "gradient_scores"]

LossFn = Callable[[Any, ExampleInputs], torch.Tensor]


@dataclass(frozen=True)
class GradientScores:
    taylor: np.ndarray  # per unit
    fisher: np.ndarray  # per unit
    batches: int


def _slice_sums(t: torch.Tensor, axis: int) -> np.ndarray:
    dims = [d for d in range(t.dim()) if d != axis]
    return (t.sum(dim=dims) if dims else t).detach().double().numpy()


def _probe_loss(out: Any, gen: torch.Generator) -> torch.Tensor:
    leaves = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not leaves:
        raise CalibrationError("taylor/fisher: the model has no floating-point output to probe; pass loss=")
    total = leaves[0].new_zeros(())
    for t in leaves:
        total = total + (t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum()
    return total


def gradient_scores(
    program: Any, coupling: Coupling, calib: Iterable[ExampleInputs], loss: LossFn | None = None, seed: int = 0
) -> GradientScores:
    gm = program.module()
    owners = tensor_owners(gm)
    entries: list[tuple[torch.Tensor, list[tuple[int, np.ndarray, np.ndarray]]]] = []
    for v in coupling.graph.weights():
        if v.kind != "param" or v.source is None:
            continue
        axes = []
        for ax in range(v.rank):
            units = coupling.units_of(v, ax)
            ok = units >= 0
            if ok.any():
                axes.append((ax, units, ok))
        if not axes:
            continue
        mod_path, _, name = v.source.rpartition(".")
        mod = gm.get_submodule(mod_path) if mod_path else gm
        old = getattr(mod, name)
        if not isinstance(old, nn.Parameter):
            continue
        set_tensor(owners.get(id(old), [(mod, name)]), old.detach(), True, True)
        entries.append((getattr(mod, name), axes))
    taylor = np.zeros(coupling.n_units)
    fisher = np.zeros(coupling.n_units)
    gen = torch.Generator().manual_seed(seed)
    nb = 0
    for i, batch in enumerate(calib):
        check_program_batch(program, batch, i)
        args, kwargs = as_args_kwargs(batch)
        with torch.enable_grad():
            try:
                out = gm(*args, **kwargs)
            except Exception as exc:
                raise CalibrationError(
                    f"calib= batch {i} could not be run through the captured graph ({type(exc).__name__}); "
                    "batches must match the example inputs except in the dims the capture kept symbolic"
                ) from exc
            value = _probe_loss(out, gen) if loss is None else loss(out, batch)
            grads = torch.autograd.grad(value, [p for p, _ in entries], allow_unused=True)
        t = np.zeros(coupling.n_units)
        for (p, axes), g in zip(entries, grads, strict=True):
            if g is None:
                continue
            w = p.detach()
            wg, wg2 = w * g, (w * g) ** 2
            for ax, units, ok in axes:
                np.add.at(t, units[ok], _slice_sums(wg, ax)[ok])
                np.add.at(fisher, units[ok], _slice_sums(wg2, ax)[ok])
        taylor += t * t
        nb += 1
    if nb == 0:
        raise CalibrationError("calib= holds no batch; taylor/fisher need at least one")
    return GradientScores(taylor / nb, fisher / nb, nb)
