"""Module route: a NEW nn.Module of the same classes with sliced weights and updated configs.

The input model is deep-copied, never mutated. Every weight tensor that loses channels is sliced
(shared parameters stay shared) and each module owning a changed tensor gets its config updated
by its class's updater (in/out channels, groups, num_features, ...). A group removed whole
(depth pruning) is refused with :class:`NotRewritable`: the module's code would still run the
emptied layers; the fx route drops them.

Modules with an updater registered by qualified name (transformers attention, which owns no
tensor itself) are updated whether touched or not, and a transformers model's config gets the new
widths (:func:`graphprune.rewrite.hf_attrs.update_config`). The transformers support is imported
only when ``transformers`` already is: the core never needs it.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import torch
from torch import nn

from ..analysis.coupling import Coupling
from ..analysis.depth import removed_whole
from .hidden import rescale_statistics
from .module_attrs import NotRewritable, named_updater, update_module
from .slicing import kept_indices, set_tensor, slice_tensor, tensor_owners
from .std_conv import fold_std_convs

__all__ = ["refresh_modules", "rewrite_module"]


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
        rescale_statistics(new, coupling, removed)  # hidden-size pruning: RMSNorm eps and weight
    refresh_modules(new, touched)
    fold_std_convs(model, new, coupling, removed)  # weight-standardized convs that lost inputs -> nn.Conv2d
    return new


def refresh_modules(model: nn.Module, touched: set[int]) -> None:
    """Run the attribute updaters on the modules whose tensors changed (ids in ``touched``) and on
    every module with a named updater, then write a transformers model's config."""
    hf = "transformers" in sys.modules
    if hf:
        from . import hf_attrs  # registers the transformers updaters
    for mod in reversed(list(model.modules())):  # children first: parents read their children's sizes
        if id(mod) in touched or (hf and named_updater(mod) is not None):
            update_module(mod)
    if hf:
        for mod in model.modules():
            if hf_attrs.hf_config(mod) is not None and mod is not model and hf_attrs.hf_config(mod) is hf_attrs.hf_config(model):
                continue
            if hf_attrs.spec_for(mod) is not None:
                hf_attrs.update_config(mod)
