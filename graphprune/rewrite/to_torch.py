"""Module route: a NEW nn.Module of the same classes with sliced weights and updated configs.

The input model is deep-copied, never mutated. Every weight tensor that loses channels is sliced
(shared parameters stay shared) and each module owning a changed tensor gets its config updated
by its class's updater (in/out channels, groups, num_features, ...). A group removed whole
(depth pruning) is refused with :class:`NotRewritable`: the module's code would still run the
emptied layers; the fx route drops them.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..analysis.coupling import Coupling
from ..analysis.depth import removed_whole
from .module_attrs import NotRewritable, update_module
from .slicing import kept_indices, set_tensor, slice_tensor, tensor_owners

__all__ = ["rewrite_module"]


def _lookup(root: nn.Module, fqn: str) -> torch.Tensor:
    mod_path, _, name = fqn.rpartition(".")
    mod = root.get_submodule(mod_path) if mod_path else root
    t = getattr(mod, name)
    if not isinstance(t, torch.Tensor):
        raise KeyError(fqn)
    return t


def rewrite_module(model: nn.Module, coupling: Coupling, removed: np.ndarray) -> nn.Module:
    whole = removed_whole(coupling, removed)
    if whole:
        g = whole[0]
        first = next((coupling.graph.value(n).source for n, _ in g.spaces if coupling.graph.value(n).source), g.spaces[0][0])
        raise NotRewritable(
            f"{len(whole)} group(s) removed whole (depth pruning), e.g. group {g.id} ({first}); the module route keeps "
            "every layer, so the fx route drops the emptied branch instead"
        )
    new = copy.deepcopy(model)
    owners = tensor_owners(new)
    touched: set[int] = set()
    with torch.no_grad():
        for k in kept_indices(coupling, removed):
            if k.value.source is None:
                continue
            old = _lookup(new, k.value.source)
            holders = owners.get(id(old), [])
            sliced = slice_tensor(old.detach(), k.axes)
            set_tensor(holders, sliced, isinstance(old, nn.Parameter), old.requires_grad)
            touched.update(id(m) for m, _ in holders)
    for mod in new.modules():
        if id(mod) in touched:
            update_module(mod)
    return new
