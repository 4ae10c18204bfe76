"""The API boundary: only graphprune's own error types leave ``prune``, ``apply`` and ``analyze``.

An exception that is not a :class:`~graphprune.errors.GraphpruneError` (a RuntimeError from a
model's forward after rewriting, an op a rule mishandles) becomes an
:class:`~graphprune.errors.InternalError` whose message names the call, the exception and the
innermost frame outside torch's dispatch code: for a captured graph that is the generated line
with the node's name (``reshape_1 = torch.ops.aten.reshape.default(...)``), for a module its
source file, line and function (``modeling_falcon.py:319 in forward``). The original is kept as
``__cause__``. ``KeyboardInterrupt`` and ``MemoryError`` pass through unchanged.
"""

from __future__ import annotations

import functools
import linecache
import os
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import GraphpruneError, InternalError

__all__ = ["own_errors", "where"]

F = TypeVar("F", bound=Callable[..., Any])

_INTERNAL = (os.sep + "torch" + os.sep, os.sep + "graphprune" + os.sep, os.sep + "passes" + os.sep)


def where(exc: BaseException) -> str:
    """The innermost traceback frame that is model code (not torch, not graphprune), as
    ``file:line in function: source``; the innermost frame of all when every frame is internal."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown location"
    pick = next((f for f in reversed(frames) if not any(s in f.filename for s in _INTERNAL)), frames[-1])
    line = (pick.line or linecache.getline(pick.filename, pick.lineno or 0)).strip()
    name = os.path.basename(pick.filename)
    return f"{name}:{pick.lineno} in {pick.name}" + (f": {line[:160]}" if line else "")


def own_errors(call: str) -> Callable[[F], F]:
    """Decorate a public entry point so any foreign exception leaves it as an InternalError."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (GraphpruneError, MemoryError):
                raise
            except Exception as exc:
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                raise InternalError(f"{call} failed: {type(exc).__name__}: {first} (at {where(exc)}); "
                                    "graphprune mishandled this model here: please report it with the "
                                    "traceback (CLI: -v)") from exc

        return wrapped  # type: ignore[return-value]

    return deco
