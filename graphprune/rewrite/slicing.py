"""Kept indices per weight axis and tensor slicing, shared by both PyTorch rewriters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..analysis.coupling import Coupling
from ..ir import Value

__all__ = ["KeptIndices", "kept_indices", "kept_position", "new_shapes", "pruned_shape", "scaled_groups", "set_tensor",
           "slice_tensor", "tensor_owners"]


@dataclass(frozen=True)
class KeptIndices:
    """For one weight: its source FQN, kind, and the kept indices of each axis that shrinks."""

    value: Value
    axes: dict[int, np.ndarray]


def kept_indices(coupling: Coupling, removed: np.ndarray) -> list[KeptIndices]:
    out = []
    for v in coupling.graph.weights():
        axes = {}
        for ax in range(v.rank):
            k = coupling.kept(v, ax, removed)
            if len(k) != v.shape[ax]:
                axes[ax] = k
        if axes:
            out.append(KeptIndices(v, axes))
    return out


def pruned_shape(coupling: Coupling, v: Value, removed: np.ndarray) -> tuple[int, ...]:
    """The shape of ``v`` once the units in ``removed`` are gone."""
    return tuple(len(coupling.kept(v, ax, removed)) for ax in range(v.rank))


def kept_position(kept: np.ndarray, index: int) -> int:
    """Where original index ``index`` lands on an axis that keeps ``kept`` (sorted): the number of
    kept indices below it. Remaps slice bounds after pruning."""
    return int(np.searchsorted(kept, index))


def scaled_groups(groups: int, old: int, new: int) -> int:
    """A grouped op's group count after whole groups were removed: channels ``old`` -> ``new``."""
    return max(1, groups * new // old)


def new_shapes(coupling: Coupling, removed: np.ndarray) -> dict[str, tuple[int, ...]]:
    """The pruned shape of every value whose shape changes."""
    out = {}
    for v in coupling.graph.values:
        shape = pruned_shape(coupling, v, removed)
        if shape != v.shape:
            out[v.name] = shape
    return out


def slice_tensor(t: torch.Tensor, axes: dict[int, np.ndarray]) -> torch.Tensor:
    for ax, idx in axes.items():
        t = t.index_select(ax, torch.as_tensor(idx, dtype=torch.long, device=t.device))
    return t.contiguous()


def tensor_owners(root: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(tensor) -> every (module, attribute) holding it, shared parameters included."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for mod in root.modules():
        for name, p in mod._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((mod, name))
        for name, b in mod._buffers.items():
            if b is not None:
                owners.setdefault(id(b), []).append((mod, name))
    return owners


def set_tensor(owners: list[tuple[nn.Module, str]], new: torch.Tensor, is_param: bool, requires_grad: bool) -> None:
    value: torch.Tensor = nn.Parameter(new, requires_grad=requires_grad) if is_param else new
    for mod, name in owners:
        if is_param:
            mod._parameters[name] = value  # type: ignore[assignment]
        else:
            mod._buffers[name] = value
