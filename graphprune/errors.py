"""User-facing errors. Each message names the thing (op, node, file, option) and what to do.

The CLI turns any :class:`GraphpruneError` into one line on stderr and exit status 2.
"""

from __future__ import annotations

__all__ = [
    "BudgetError",
    "CalibrationError",
    "CaptureError",
    "ExportError",
    "GraphpruneError",
    "InternalError",
    "OptionError",
    "PlanError",
    "SourceError",
    "VerificationError",
    "exception_line",
]


def exception_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters of it), for one-line errors
    that quote an exception raised by the user's model or a library."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


class GraphpruneError(Exception):
    """Base class for errors meant for a person, not a traceback."""


class SourceError(GraphpruneError):
    """The model source (a name, a ``module:factory`` spec or a file) cannot be loaded."""


class CaptureError(GraphpruneError):
    """The model could not be traced into the IR."""


class CalibrationError(GraphpruneError):
    """Calibration data is missing, unreadable, or does not match the example inputs."""


class OptionError(GraphpruneError):
    """An option or pipeline string is invalid."""


class PlanError(GraphpruneError):
    """A pruning plan cannot be read, or was made for a different graph than the one it is applied to."""


class BudgetError(GraphpruneError):
    """A FLOPs/params budget is out of range or cannot be reached."""


class VerificationError(GraphpruneError):
    """The pruned model does not match the masked original."""


class ExportError(GraphpruneError):
    """Writing the pruned model (``.pt`` / ``.onnx``) failed."""


class InternalError(GraphpruneError):
    """Something failed inside graphprune (an op it mishandles, a model forward that broke after
    rewriting): the original exception is the ``__cause__``; the message names where it happened.
    The CLI exits 1 for it (a bug to report), not 2 (bad input)."""
