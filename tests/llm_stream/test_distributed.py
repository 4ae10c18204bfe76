"""Multi-process calibration (torch.distributed, gloo, 2 processes on CPU): each rank streams its
own batches through the consumer hooks of graphprune.stream; after all_reduce_stats every rank
holds exactly the sums one process takes over all batches (n, per-channel sums and squares, the
Gram matrix and its row sums)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from graphprune.analysis.calibration import ChannelStats
from graphprune.stream import _site_hooks, all_reduce_stats

BATCHES = 4


def _layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))


def _batch(i: int) -> torch.Tensor:
    return torch.randn(2, 5 + i, 6, generator=torch.Generator().manual_seed(100 + i))  # sequence lengths differ


def _collect(batches: list[int], gram: bool) -> dict[str, ChannelStats]:
    layer = _layer()
    site = SimpleNamespace(node="linear_1", a_axis=2, weight=SimpleNamespace(source="layers.0.2.weight"))
    stats = {"linear_1": ChannelStats()}
    counter = [0]
    for want_gram in ([False, True] if gram else [False]):
        hooks = _site_hooks(layer, "layers.0.", [site], stats, want_gram, counter)
        with torch.no_grad():
            for i in batches:
                counter[0] = i
                layer(_batch(i))
        for h in hooks:
            h.remove()
    return stats


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        stats = _collect(list(range(rank, BATCHES, 2)), gram=True)
        all_reduce_stats(stats)
        st = stats["linear_1"]
        torch.save({"n": st.n, "sum": st.sum, "sumsq": st.sumsq, "gram": st.gram, "gsum": st.gsum, "gn": st.gn},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_ranks_sum_to_single_process_statistics(tmp_path: Path) -> None:
    # fork: the children share the imported modules (a spawned interpreter re-imports torch, seconds each)
    mp.start_processes(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    single = _collect(list(range(BATCHES)), gram=True)["linear_1"]
    assert single.n == sum(2 * (5 + i) for i in range(BATCHES))
    for rank in (0, 1):
        got: dict[str, Any] = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert got["n"] == single.n and got["gn"] == single.gn
        np.testing.assert_allclose(got["sum"], single.sum, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got["sumsq"], single.sumsq, rtol=1e-12)
        torch.testing.assert_close(got["gram"], single.gram, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got["gsum"], single.gsum, rtol=1e-12, atol=1e-12)
