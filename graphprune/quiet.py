"""Silence third-party loggers for the length of a block (torch.export and the ONNX exporters log
expected specializations and registry chatter at WARNING)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

__all__ = ["quiet_loggers", "quiet_stderr"]


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise the named loggers to ``level`` inside the block, restoring their levels after."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


@contextlib.contextmanager
def quiet_stderr(log_as: str = "graphprune") -> Iterator[None]:
    """Keep what the block writes to ``sys.stderr`` off the terminal, as one DEBUG record of the
    logger ``log_as``: a failed ``torch.export`` prints the whole partial graph there
    (``print(e.partial_fx_graph, file=sys.stderr)``), pages for a detector; the error itself still
    propagates and is reported in one line."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            yield
    finally:
        text = buf.getvalue().strip()
        if text:
            logging.getLogger(log_as).debug("stderr inside the block:\n%s", text)
