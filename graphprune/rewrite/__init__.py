"""Rewriters: build a NEW, physically smaller model; never mutate the input."""

from __future__ import annotations

from .module_attrs import NotRewritable
from .slicing import kept_indices, new_shapes
from .to_fx import rewrite_fx
from .to_onnx import NotDynamic, rewrite_onnx
from .to_torch import rewrite_module

__all__ = ["NotDynamic", "NotRewritable", "kept_indices", "new_shapes", "rewrite_fx", "rewrite_module", "rewrite_onnx"]
