"""Per-class attribute updaters: after slicing, make a module's config match its new weights.

Registered by nn.Module class (most specific first). An updater that cannot express the new
shapes raises :class:`NotRewritable`, which sends the rewrite to the fx route.

Classes of optional libraries (transformers) are registered by qualified name in
``NAMED_UPDATERS`` ("module.QualName", matched along the class's MRO), so registering them never
imports the library; :mod:`graphprune.rewrite.hf_attrs` fills it. A named updater runs on every
module of its class (attention modules own no tensor themselves: their children's shapes changed),
so named updaters derive everything from the current weights and are idempotent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from torch import nn

from .slicing import scaled_groups

T = TypeVar("T")

__all__ = ["NAMED_UPDATERS", "UPDATERS", "NotRewritable", "by_class_name", "named_updater", "update_module"]


class NotRewritable(Exception):
    """This module's Python code cannot follow the new shapes; use the fx route."""


Updater = Callable[[nn.Module], None]
UPDATERS: list[tuple[type[nn.Module], Updater]] = []
NAMED_UPDATERS: dict[str, Updater] = {}


def _register(cls: type[nn.Module]) -> Callable[[Updater], Updater]:
    def deco(fn: Updater) -> Updater:
        UPDATERS.append((cls, fn))
        return fn

    return deco


def by_class_name(table: Mapping[str, T], mod: nn.Module) -> T | None:
    """``table``'s entry for ``mod``'s class or its nearest base class, keyed by qualified name
    (``module.QualName``: no import of the library that defines the class)."""
    for cls in type(mod).__mro__:
        got = table.get(f"{cls.__module__}.{cls.__qualname__}")
        if got is not None:
            return got
    return None


def named_updater(mod: nn.Module) -> Updater | None:
    """The updater registered by qualified class name for ``mod``'s class or a base class."""
    return by_class_name(NAMED_UPDATERS, mod)


def update_module(mod: nn.Module) -> None:
    fn = named_updater(mod)
    if fn is not None:
        fn(mod)
        return
    for cls, fn in UPDATERS:
        if isinstance(mod, cls):
            fn(mod)
            return


@_register(nn.MultiheadAttention)
def _mha(m: nn.Module) -> None:
    w = m.in_proj_weight if m.in_proj_weight is not None else m.q_proj_weight
    assert w is not None
    rows = w.shape[0] // (3 if m.in_proj_weight is not None else 1)
    if rows != m.embed_dim:
        raise NotRewritable("nn.MultiheadAttention needs num_heads * head_dim == embed_dim")


@_register(nn.modules.conv._ConvTransposeNd)
def _conv_t(m: nn.Module) -> None:
    old_in = m.in_channels
    m.in_channels = m.weight.shape[0]
    m.groups = scaled_groups(m.groups, old_in, m.in_channels)
    m.out_channels = m.weight.shape[1] * m.groups


@_register(nn.modules.conv._ConvNd)
def _conv(m: nn.Module) -> None:
    old_out = m.out_channels
    m.out_channels = m.weight.shape[0]
    m.groups = scaled_groups(m.groups, old_out, m.out_channels)
    m.in_channels = m.weight.shape[1] * m.groups


@_register(nn.Linear)
def _linear(m: nn.Module) -> None:
    m.out_features, m.in_features = m.weight.shape


@_register(nn.modules.batchnorm._NormBase)
def _bn(m: nn.Module) -> None:
    ref = m.weight if m.weight is not None else m.running_mean
    if ref is not None:
        m.num_features = ref.shape[0]


@_register(nn.GroupNorm)
def _gn(m: nn.Module) -> None:
    if m.weight is not None:
        new = m.weight.shape[0]
        m.num_groups = scaled_groups(m.num_groups, m.num_channels, new)
        m.num_channels = new


@_register(nn.LayerNorm)
def _ln(m: nn.Module) -> None:
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


@_register(nn.Embedding)
def _emb(m: nn.Module) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


@_register(nn.PReLU)
def _prelu(m: nn.Module) -> None:
    m.num_parameters = m.weight.numel()
