"""Frontends lower models into the IR."""

from __future__ import annotations

from .inputs import ExampleInputs, as_args_kwargs, call_model
from .torch_export import Captured, capture, lower_exported

__all__ = ["Captured", "ExampleInputs", "as_args_kwargs", "call_model", "capture", "lower_exported"]
