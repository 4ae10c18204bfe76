"""'Why was this channel not pruned?': Coupling.explain walks from a frozen channel to its pin."""

from __future__ import annotations

import torch
from torch import nn

import graphprune as gp
from graphprune.cli import main


class _NormedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x + self.down(torch.relu(self.up(x)))))


def test_explain_names_the_pinning_node_and_the_chain() -> None:
    model = _NormedMLP().eval()
    a = gp.analyze(model, torch.randn(2, 8))
    down = next(v for v in a.graph.weights() if v.source == "down.weight")
    lines = a.coupling.explain(down, 0, 2)
    # down's output joins the residual stream, which the model input pins (and LayerNorm keeps whole)
    assert lines[0].startswith(f"{down.name}[0][2] is frozen: ")
    assert "keeps" in lines[0]
    assert all("->" in step for step in lines[1:])
    assert "linear" in lines[1]
    up = next(v for v in a.graph.weights() if v.source == "up.weight")
    assert "is prunable" in a.coupling.explain(up, 0, 5)[0]


class _Doubled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        return h + h  # the add ties h to its output twice: duplicate edges in the trace


def test_explain_through_a_tie_declared_twice() -> None:
    a = gp.analyze(_Doubled().eval(), torch.randn(2, 8))
    up = next(v for v in a.graph.weights() if v.source == "up.weight")
    lines = a.coupling.explain(up, 0, 15)
    assert lines[0] == f"{up.name}[0][15] is frozen: model output {a.graph.outputs[0].name!r} keeps its shape"
    assert len(lines) == 3 and "(tied by linear node" in lines[1] and "(tied by add node" in lines[2], lines


def test_cli_why_prints_the_explanation(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["analyze", "resnet18_w050", "--why", "fc.weight:0"]) == 0
    out = capsys.readouterr().out
    assert "model output" in out and "is frozen" in out
    assert main(["analyze", "resnet18_w050", "--why", "no.such.weight"]) == 2
    assert "no weight named 'no.such.weight'" in capsys.readouterr().err
