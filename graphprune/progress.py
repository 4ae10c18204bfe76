"""The progress protocol: ``progress(name, done=None, total=None)``.

A run calls ``progress(name)`` when a phase starts (``capture``, ``score``, ``verify``, ...) and,
inside the long phases, ``progress(name, done, total)`` after each step: calibration batches,
reconstructed consumers, profiled op signatures, verification inputs. The library never prints;
the CLI draws these with rich on stderr.

A callback written for the older one-argument form (``progress(name)``) keeps working:
:func:`as_progress` wraps it so that it hears only phase starts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["ProgressFn", "as_progress", "step"]

ProgressFn = Callable[..., None]


def _takes_steps(fn: Callable[..., Any]) -> bool:
    try:
        inspect.signature(fn).bind("phase", done=0, total=1)
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): assume the full protocol
        return True
    return True


class _Progress:
    """A user's callback behind the full protocol (phase starts only for a one-argument one)."""

    __slots__ = ("fn", "steps")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.steps = _takes_steps(fn)

    def __call__(self, name: str, done: int | None = None, total: int | None = None) -> None:
        if self.steps:
            self.fn(name, done=done, total=total)
        elif done is None:
            self.fn(name)


def as_progress(fn: Callable[..., Any] | None) -> ProgressFn | None:
    """``fn`` as a full-protocol callback; a one-argument ``fn`` is called on phase starts only."""
    if fn is None or isinstance(fn, _Progress):
        return fn
    return _Progress(fn)


def step(progress: ProgressFn | None, name: str, done: int, total: int) -> None:
    """Report step ``done`` of ``total`` in phase ``name`` (no-op without a callback)."""
    if progress is not None:
        progress(name, done=done, total=total)
