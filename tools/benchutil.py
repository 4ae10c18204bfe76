"""Helpers the comparison benchmarks share: a per-call time limit and one-line error text."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

__all__ = ["ToolTimeout", "short_error", "time_limit"]


class ToolTimeout(Exception):
    """Raised by SIGALRM when one tool runs past ``--timeout`` on one model."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`ToolTimeout` in the block after ``seconds`` (no limit for 0, or without SIGALRM)."""
    if not seconds or seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise ToolTimeout(f"timed out after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def short_error(exc: BaseException) -> str:
    """The first three lines of ``Type: message``, joined, at most 500 characters."""
    lines = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return " ".join(line.strip() for line in lines[:3])[:500]
