"""Frontends lower models into the IR: PyTorch via torch.export, ONNX via onnx."""

from __future__ import annotations

from .inputs import ExampleInputs, as_args_kwargs, call_model
from .onnx import lower_onnx
from .onnx_model import PreparedOnnx, load_onnx, prepare
from .torch_export import Captured, capture, lower_exported

__all__ = ["Captured", "ExampleInputs", "PreparedOnnx", "as_args_kwargs", "call_model", "capture", "load_onnx",
           "lower_exported", "lower_onnx", "prepare"]
