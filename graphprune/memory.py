"""Keep freed memory in the process for the length of a block (glibc only; elsewhere a no-op).

A calibration forward allocates and frees activation-sized tensors (hundreds of MB for a
detector batch) at every layer. glibc serves each such block with its own ``mmap`` and returns it
to the OS on ``free``, so the next one faults in and the kernel zeroes every page again: on the
reconstruction benchmark (``tools/bench_reconstruct_speed.py``) that was 23 s of system time in a
65 s prune. Inside :func:`reuse_freed_memory` large blocks come from the heap instead
(``M_MMAP_MAX = 0``) and freed memory is not trimmed (``M_TRIM_THRESHOLD``), so later blocks reuse
pages already mapped. On exit the defaults are restored and ``malloc_trim(0)`` hands the retained
pages back, so the cost is a higher peak resident set inside the block (3.5 GB to 4.5 GB on that
benchmark), not after it. Nested blocks are counted; only the outermost one sets and restores.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import platform
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["reuse_freed_memory"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# glibc's documented defaults (mallopt(3)); the trim threshold is set back to its static default
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: its largest value stands for "never"

_lock = threading.Lock()
_depth = 0


def _libc() -> Any | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def _set(libc: Any, retain: bool) -> None:
    trim = _NEVER_TRIM if retain else _DEFAULT_TRIM_THRESHOLD
    ok = libc.mallopt(_M_TRIM_THRESHOLD, trim) and libc.mallopt(_M_MMAP_MAX, 0 if retain else _DEFAULT_MMAP_MAX)
    if not ok:
        log.debug("mallopt refused the %s settings", "retaining" if retain else "default")


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Inside the block, freed large blocks stay mapped for reuse (see the module docstring)."""
    global _depth
    libc = _LIBC
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _set(libc, retain=True)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(libc, retain=False)
                libc.malloc_trim(0)
