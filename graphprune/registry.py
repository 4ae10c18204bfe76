"""One helper behind every name-keyed table (coupling/cost rules, ATen and ONNX lowerings, fx and
ONNX rewriters): ``register = registrar(TABLE)`` gives a decorator factory ``@register("a", "b")``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["registrar"]

F = TypeVar("F", bound=Callable)


def registrar(table: dict[str, F], *, unique: bool = False) -> Callable[..., Callable[[F], F]]:
    """Decorator factory registering a function under names in ``table``; with ``unique`` a name
    registered twice is an error (rules), otherwise the later registration wins (lowering tables
    that refine an alias)."""

    def register(*names: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            for name in names:
                if unique and name in table:
                    raise ValueError(f"{name!r} registered twice ({table[name].__name__}, {fn.__name__})")
                table[name] = fn
            return fn

        return deco

    return register
