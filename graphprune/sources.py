"""Resolve a CLI SOURCE into ``(model, example_inputs)``: a built-in model name, or
``package.module:factory`` naming a callable that returns ``(model, example_inputs)``.

A source may bring more than a model: :class:`Source` adds a default calibration set and an
``evaluate(model) -> {metric: value}`` that scores a model against the source's dense one (1.0 =
no quality lost). Built-in *trained* sources (:data:`SOURCES`, e.g. ``minilm``) return one; a
``pkg.mod:factory`` may return one instead of the pair. :func:`load` gives the whole Source,
:func:`load_source` the ``(model, example_inputs)`` pair."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .errors import SourceError

__all__ = ["SOURCES", "Source", "load", "load_source"]


@dataclass(frozen=True)
class Source:
    """A model to prune, its example inputs, and optionally calibration batches and an evaluation."""

    model: Any
    example_inputs: Any
    calib: list[Any] | None = None  # default calibration batches (shaped like example_inputs)
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None  # quality kept vs the dense model
    about: str = ""  # one line: what the evaluation measures, on what data


def _minilm() -> Source:
    from graphprune.models.minilm import build_minilm

    return build_minilm()


# Built-in sources that ship trained weights through an optional package (pip extra).
SOURCES: dict[str, Callable[[], Source]] = {"minilm": _minilm}


def load(source: str) -> Source:
    """Like :func:`load_source`, keeping a source's calibration set and evaluation."""
    if source in SOURCES:
        return SOURCES[source]()
    got = _load(source)
    return got if isinstance(got, Source) else Source(*got)


def load_source(source: str) -> tuple[Any, Any]:
    """A built-in name or ``pkg.mod:factory`` -> (nn.Module, example_inputs); a ``.onnx`` path is
    returned as is (with no example inputs): the API loads and checks it."""
    got = load(source)
    return got.model, got.example_inputs


def _load(source: str) -> tuple[Any, Any] | Source:
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
            f"unknown model {source!r}: use a built-in name ({', '.join(sorted([*MODELS, *SOURCES]))}) "
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
    if isinstance(got, Source) and isinstance(got.model, nn.Module):
        return got
    if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], nn.Module)):
        raise SourceError(f"{source!r} must return (model, example_inputs) or a graphprune.sources.Source, "
                          f"got {type(got).__name__}")
    return got
