"""Resolve a CLI SOURCE into ``(model, example_inputs)``: a built-in model name, or
``package.module:factory`` naming a callable that returns ``(model, example_inputs)``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from torch import nn

from .errors import SourceError

__all__ = ["load_source"]


def load_source(source: str) -> tuple[Any, Any]:
    """A built-in name or ``pkg.mod:factory`` -> (nn.Module, example_inputs); a ``.onnx`` path is
    returned as is (with no example inputs): the API loads and checks it."""
    from graphprune.models import MODELS, RENAMED, unknown_model_message

    if source in MODELS:
        return MODELS[source]()
    if source in RENAMED:
        raise SourceError(unknown_model_message(source))
    if source.lower().endswith(".onnx"):
        if not Path(source).exists():
            raise SourceError(f"{source!r}: no such file")
        return source, None
    if ":" not in source:
        raise SourceError(
            f"unknown model {source!r}: use a built-in name ({', '.join(sorted(MODELS))}) "
            "or package.module:factory returning (model, example_inputs)"
        )
    mod_name, _, attr = source.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(mod_name)
    except Exception as exc:
        raise SourceError(f"cannot import {mod_name!r} from {source!r}: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SourceError(f"{source!r}: {mod_name} has no callable {attr!r}")
    try:
        got = factory()
    except Exception as exc:
        raise SourceError(f"{source!r}: the factory raised {type(exc).__name__}: {exc}") from exc
    if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], nn.Module)):
        raise SourceError(f"{source!r} must return (model, example_inputs), got {type(got).__name__}")
    return got
