"""Measured latency tables and their on-disk cache.

For one op signature (see :mod:`.signature`) the table holds latencies ``T[i, j]`` measured on a
grid of widths ``a_i`` (and ``b_j``); between grid points the latency is interpolated
multilinearly (``scipy.interpolate.RegularGridInterpolator``), beyond them extrapolated linearly
from the nearest cell and clamped at zero:

    T(w) = sum_corners  prod_d (1 - |w_d - c_d| / h_d) * T(c)

The cache is one JSON file, ``$GRAPHPRUNE_CACHE/latency-v1.json`` (default
``$XDG_CACHE_HOME/graphprune`` or ``~/.cache/graphprune``), keyed first by a *device fingerprint*
(CPU model, core count, runtime name and version, thread count) and then by op signature, so
tables from another machine, runtime or thread count are never mixed. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.interpolate import RegularGridInterpolator

from ..errors import OptionError

__all__ = ["OpTable", "TableCache", "cache_dir", "cpu_model", "fingerprint_key"]

log = logging.getLogger(__name__)

CACHE_FILE = "latency-v1.json"


def cache_dir() -> Path:
    """``$GRAPHPRUNE_CACHE`` if set, else the user cache dir."""
    env = os.environ.get("GRAPHPRUNE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "graphprune"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint_key(fp: dict[str, Any]) -> str:
    """Short stable hash of a device fingerprint dict."""
    return hashlib.sha1(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class OpTable:
    """Latency (seconds) of one op signature on a grid of widths."""

    axes: list[list[int]]
    values: np.ndarray  # shape = tuple(len(a) for a in axes)
    _interp: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64).reshape([len(a) for a in self.axes])

    def __call__(self, widths: tuple[int, ...]) -> float:
        if len(widths) != len(self.axes):
            raise ValueError(f"table has {len(self.axes)} width axes, got {len(widths)} widths")
        live = [d for d, a in enumerate(self.axes) if len(a) > 1]
        if not live:
            return float(self.values.reshape(-1)[0])
        if self._interp is None:
            vals = self.values[tuple(slice(None) if d in live else 0 for d in range(len(self.axes)))]
            self._interp = RegularGridInterpolator(
                [np.asarray(self.axes[d], dtype=np.float64) for d in live], vals,
                method="linear", bounds_error=False, fill_value=None,
            )
        pt = np.array([[float(widths[d]) for d in live]])
        return max(0.0, float(self._interp(pt)[0]))

    def to_json(self) -> dict[str, Any]:
        return {"axes": self.axes, "values": [float(v) for v in self.values.reshape(-1)]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OpTable:
        return cls([list(map(int, a)) for a in d["axes"]], np.asarray(d["values"], dtype=np.float64))


class TableCache:
    """The JSON cache file: per device fingerprint, op tables and whole-model calibrations."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / CACHE_FILE
        self.data: dict[str, Any] = {"version": 1, "devices": {}}
        if self.path.exists():
            try:
                loaded = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise OptionError(
                    f"latency cache {str(self.path)!r} is unreadable ({exc}); delete it or set GRAPHPRUNE_CACHE"
                ) from exc
            if loaded.get("version") == 1:
                self.data = loaded
            else:
                log.warning("latency cache %s has another version; starting a new one", self.path)

    def device(self, fp: dict[str, Any]) -> dict[str, Any]:
        dev = self.data["devices"].setdefault(fingerprint_key(fp), {"fingerprint": fp, "ops": {}, "calibration": {}})
        return dev

    def get(self, fp: dict[str, Any], key: str) -> OpTable | None:
        d = self.data["devices"].get(fingerprint_key(fp), {}).get("ops", {}).get(key)
        return OpTable.from_json(d) if d is not None else None

    def put(self, fp: dict[str, Any], key: str, table: OpTable) -> None:
        self.device(fp)["ops"][key] = table.to_json()

    def calibration(self, fp: dict[str, Any], model_key: str) -> dict[str, float] | None:
        return self.data["devices"].get(fingerprint_key(fp), {}).get("calibration", {}).get(model_key)

    def put_calibration(self, fp: dict[str, Any], model_key: str, cal: dict[str, float]) -> None:
        self.device(fp)["calibration"][model_key] = dict(cal)

    def save(self) -> None:
        from ..export import write_atomic

        write_atomic(self.path, lambda tmp: tmp.write_text(json.dumps(self.data)))
