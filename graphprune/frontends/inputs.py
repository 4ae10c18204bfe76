"""Example inputs in the three forms the API accepts: a tensor, a tuple of tensors, a dict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import OptionError

__all__ = ["ExampleInputs", "as_args_kwargs", "call_model"]

ExampleInputs = Any  # torch.Tensor | tuple | list | Mapping[str, Any]


def as_args_kwargs(example_inputs: ExampleInputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Normalize example inputs into ``(args, kwargs)`` for ``model(*args, **kwargs)``."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise OptionError(
        f"example_inputs must be a tensor, a tuple of tensors or a dict of keyword tensors, "
        f"not {type(example_inputs).__name__}"
    )


def call_model(model: torch.nn.Module, example_inputs: ExampleInputs) -> Any:
    args, kwargs = as_args_kwargs(example_inputs)
    with torch.no_grad():
        return model(*args, **kwargs)
