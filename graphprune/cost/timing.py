"""Robust wall-clock timing of several callables on a shared, noisy machine.

Each callable is warmed up, then timed in ``rounds`` interleaved rounds (the order is shuffled
every round, so slow drift and bursts from other processes hit every candidate alike). A round
runs a callable ``inner`` times back to back, with ``inner`` chosen so one round lasts at least
``min_round_s``; the round's time is the mean over those calls. The result per callable is

    t = quantile_q over rounds r of ( (1/inner) * sum_{i<inner} t_{r,i} )

with q = 0.25 by default: on a shared machine other processes steal whole time slices, which
inflate some rounds and never deflate one, so a low quantile of short rounds estimates the
undisturbed time and is far more repeatable than the mean (q = 0.5 gives the median).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["TimingConfig", "time_interleaved"]


@dataclass(frozen=True)
class TimingConfig:
    warmup: int = 3
    rounds: int = 15
    min_round_s: float = 1e-3
    max_inner: int = 2000
    quantile: float = 0.25
    seed: int = 0


def _one(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_interleaved(fns: Sequence[Callable[[], object]], cfg: TimingConfig | None = None) -> list[float]:
    """Median-of-rounds seconds per call for each of ``fns`` (see the module docstring)."""
    cfg = cfg or TimingConfig()
    if not fns:
        return []
    inner: list[int] = []
    for fn in fns:
        for _ in range(cfg.warmup):
            fn()
        probe = min(_one(fn) for _ in range(3))
        inner.append(int(min(cfg.max_inner, max(1, math.ceil(cfg.min_round_s / max(probe, 1e-7))))))
    rng = random.Random(cfg.seed)
    samples: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for _ in range(cfg.rounds):
        rng.shuffle(order)
        for i in order:
            fn, n = fns[i], inner[i]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[i].append((time.perf_counter() - t0) / n)
    return [float(np.quantile(s, cfg.quantile)) for s in samples]
