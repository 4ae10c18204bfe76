"""calib= batches of any batch size (and, for token models, any sequence length).

Oracle: forward hooks on the ORIGINAL model's nn.Linear layers record each input X; the per-channel
sums the calibration pass accumulates must equal the sums over the rows of all those inputs put
together (what one concatenated batch would give), whatever the batches' sizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import graphprune as gp
from graphprune.analysis.calibration import collect_stats, reader_sites
from graphprune.analysis.coupling import couple
from graphprune.errors import CalibrationError
from graphprune.frontends import capture
from graphprune.frontends.calib import check_batches


class TokenModel(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc1, self.fc2, self.head = nn.Linear(dim, 32), nn.Linear(32, dim), nn.Linear(dim, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(h).mean(1)


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 24), nn.Linear(24, 24), nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _hooked_sums(model: nn.Module, batches: list[Any]) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
    """Linear module name -> (rows, per-channel sum, per-channel sum of squares) of its inputs."""
    rows: dict[str, list[torch.Tensor]] = {}
    handles = [
        m.register_forward_hook(lambda mod, inp, out, name=name: rows.setdefault(name, []).append(
            inp[0].detach().reshape(-1, inp[0].shape[-1]).double()))
        for name, m in model.named_modules() if isinstance(m, nn.Linear)
    ]
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in handles:
        h.remove()
    out = {}
    for name, parts in rows.items():
        x = torch.cat(parts).double()  # the reference sums in float64, as the accumulators do
        out[name] = (x.shape[0], x.sum(0).numpy(), (x * x).sum(0).numpy())
    return out


def _stats(model: nn.Module, example: Any, batches: list[Any]) -> dict[str, Any]:
    cap = capture(model, example)
    sites = reader_sites(couple(cap.graph), prunable_only=False)
    stats = collect_stats(cap.program, sites, batches)
    return {s.weight.source.rsplit(".", 1)[0]: stats[s.node] for s in sites if s.op == "linear"}


def _assert_same(model: nn.Module, example: Any, batches: list[Any]) -> None:
    got = _stats(model, example, batches)
    want = _hooked_sums(model, batches)
    assert set(got) == set(want)
    for name, (n, s, q) in want.items():
        st = got[name]
        assert st.n == n
        # float32 activations: the captured program and the hooked module may round the last bit
        # differently (squares are taken in float32 before the float64 sum); a dropped or repeated
        # row would be off by O(1)
        np.testing.assert_allclose(st.sum, s, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(st.sumsq, q, rtol=1e-6, atol=1e-6)


def test_batches_of_size_3_and_5_give_the_concatenated_statistics() -> None:
    torch.manual_seed(0)
    model = Mlp().eval()
    _assert_same(model, torch.randn(4, 12), [torch.randn(3, 12), torch.randn(5, 12)])


def test_token_batches_of_two_sequence_lengths() -> None:
    torch.manual_seed(0)
    model = TokenModel().eval()
    batches = [torch.randint(0, 50, (3, 7)), torch.randint(0, 50, (5, 4)), torch.randint(0, 50, (1, 11))]
    _assert_same(model, torch.randint(0, 50, (2, 6)), batches)


def test_example_of_batch_one_takes_larger_batches() -> None:
    torch.manual_seed(0)
    model = Mlp().eval()
    _assert_same(model, torch.randn(1, 12), [torch.randn(4, 12), torch.randn(1, 12)])


def test_prune_with_wanda_and_taylor_on_batches_of_several_sizes() -> None:
    torch.manual_seed(0)
    model = TokenModel().eval()
    calib = [torch.randint(0, 50, (3, 7)), torch.randint(0, 50, (5, 4))]
    for criterion in ("wanda", "taylor"):
        res = gp.prune(model, torch.randint(0, 50, (2, 6)), flops=0.6, criterion=criterion, calib=calib)
        assert res.report["verification"]["ok"]
        assert res.report["widths"]["fc1.weight"]["after"][0] < 32


def test_feature_dim_must_match() -> None:
    with pytest.raises(CalibrationError) as err:
        check_batches([torch.randn(3, 12), torch.randn(5, 11)], torch.randn(4, 12))
    assert str(err.value) == (
        "calib= batch 1 has tensor shapes [(5, 11)], but calibration batches must have the example inputs' "
        "shapes [*, 12] (* = any size: batch, and sequence for token inputs)"
    )


def test_a_dim_the_model_specializes_is_named() -> None:
    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(x))).reshape(2, 3, 6).sum(1)  # the code assumes 2 x 3 rows

    model = FixedBatch().eval()
    with pytest.raises(CalibrationError) as err:
        gp.prune(model, torch.randn(6, 6), flops=0.5, criterion="wanda", calib=[torch.randn(6, 6), torch.randn(4, 6)])
    assert str(err.value) == (
        "calib= batch 1: input 'x' has size 4 in dim 0, but the model was captured with that dim fixed at 6 "
        "(the model's code specializes it); give batches of size 6 in that dim"
    )
