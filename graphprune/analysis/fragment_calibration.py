"""Calibration statistics for a model captured as fragments (``frontends/fragments.py``).

There is no one program to stream the calibration data through, so the user's model runs itself
on each batch (its glue, NMS and decoding included) with a forward hook on every fragment's
module. At the fragment's call (its ``occurrence``-th call in the forward) the hook runs that
fragment's exported program under the same statistics interpreter as a whole-model capture
(:class:`graphprune.analysis.calibration.StatsRecorder`), on the arguments the module was called
with, for the sites inside it (IR node names are the program's with the fragment's prefix). The
statistics are those of the real inputs each fragment sees, in the same float64 sums, shared
Grams and memory bounds; each fragment's arithmetic runs twice per batch (the model's own call,
then the interpreter's).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sized
from typing import Any

import torch
from torch import nn

from ..errors import CalibrationError, exception_line
from ..frontends.inputs import ExampleInputs, as_args_kwargs
from ..memory import reuse_freed_memory
from .calibration import ChannelStats, Site, StatsRecorder, book_timings, flat_call_inputs, pending_sites

__all__ = ["collect_fragment_stats"]

log = logging.getLogger(__name__)


def collect_fragment_stats(
    model: nn.Module,
    fragments: Any,
    sites: list[Site],
    calib: Iterable[ExampleInputs],
    gram_for: set[str] | frozenset[str] = frozenset(),
    stats: dict[str, ChannelStats] | None = None,
    progress: Callable[[int, int], None] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, ChannelStats]:
    """:func:`graphprune.analysis.calibration.collect_stats` for a fragment capture
    (``fragments``: its :class:`~graphprune.frontends.fragments.FragmentCapture`)."""
    out = dict(stats or {})
    n_batches = len(calib) if isinstance(calib, Sized) else 1
    recorders: list[tuple[Any, StatsRecorder]] = []
    todo_names: list[str] = []
    for frag in fragments.fragments:
        mine = pending_sites((s for s in sites if s.node.startswith(frag.prefix)), out, gram_for)
        todo_names += list(mine)
        if mine:  # the fragment's program names its nodes without the prefix
            todo = {name[len(frag.prefix):]: pairs for name, pairs in mine.items()}
            recorders.append((frag, StatsRecorder(frag.program.module(), todo, n_batches)))
    if not recorders:
        return out
    calls: dict[str, int] = {}
    current = [0]

    def hook(frag: Any, rec: StatsRecorder) -> Callable[..., None]:
        def fn(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            n = calls.get(frag.prefix, 0)
            calls[frag.prefix] = n + 1
            if n != frag.occurrence:
                return
            rec.batch = current[0]
            try:
                rec.run(*flat_call_inputs(rec.module, args, kwargs))
            except Exception as exc:  # the fragment's program cannot take this call's inputs
                raise CalibrationError(
                    f"calib= batch {current[0]}: fragment {frag.path or '(root)'} (captured on the example inputs) "
                    f"could not run on this batch's inputs ({exception_line(exc)}); "
                    "give calibration batches the example inputs' shapes") from exc
        return fn

    total = n_batches if isinstance(calib, Sized) else 0
    handles = [model.get_submodule(frag.path).register_forward_hook(hook(frag, rec), with_kwargs=True)
               for frag, rec in recorders]
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), reuse_freed_memory():
            for i, batch in enumerate(calib):
                current[0] = i
                calls.clear()
                args, kwargs = as_args_kwargs(batch)
                try:
                    model(*args, **kwargs)
                except CalibrationError:
                    raise
                except Exception as exc:
                    raise CalibrationError(
                        f"calib= batch {i} could not be run through {type(model).__name__} ({exception_line(exc)}); "
                        "batches must be what the model takes, "
                        "like the example inputs") from exc
                if progress is not None:
                    progress(i + 1, total)
    finally:
        for h in handles:
            h.remove()
    seconds = {"sums": 0.0, "gram": 0.0}
    for _, rec in recorders:
        rec.finish()
        for k in seconds:
            seconds[k] += rec.seconds[k]
        for pairs in rec.sites.values():
            for site, st in pairs:
                out[site.node] = st
    if timings is not None:
        book_timings(timings, time.perf_counter() - t0, seconds)
    missing = [name for name in todo_names if out.get(name) is None or out[name].n == 0]
    if missing:
        raise CalibrationError(f"calib=: {len(missing)} consumers inside fragments saw no calibration data "
                               f"(first: {missing[0]}); the model did not call their modules on these batches")
    log.debug("calibration: statistics for %d sites in %d fragments", len(todo_names), len(recorders))
    return out
