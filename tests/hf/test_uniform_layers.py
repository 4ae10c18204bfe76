"""uniform=True on a plain PyTorch model: groups of one layer kind share a width (no transformers)."""

from __future__ import annotations

import torch
from torch import nn

import graphprune as gp
from graphprune.analysis import couple
from graphprune.analysis.allocation import layer_kinds
from graphprune.frontends import capture


class Block(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.up = nn.Linear(d, h)
        self.down = nn.Linear(h, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([Block(16, 40) for _ in range(3)])
        self.head = nn.Linear(16, 4)
        with torch.no_grad():  # very different magnitudes per layer: per-layer allocation would differ
            self.blocks[0].up.weight.mul_(torch.linspace(0.1, 3, 40)[:, None])
            self.blocks[2].up.weight.mul_(torch.linspace(3, 0.1, 40)[:, None] ** 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def test_layer_kinds_strip_layer_indices() -> None:
    coupling = couple(capture(Net(), torch.randn(2, 16)).graph)
    kinds = layer_kinds(coupling)
    assert len(kinds) == 1 and len(kinds[0]) == 3
    names = [sorted(coupling.graph.value(n).source for n, _ in coupling.groups[g].spaces
                    if coupling.graph.value(n).is_weight) for g in kinds[0]]
    assert names == [[f"blocks.{i}.down.weight", f"blocks.{i}.up.bias", f"blocks.{i}.up.weight"] for i in range(3)]


def test_uniform_equal_widths_on_target() -> None:
    x = torch.randn(2, 16)
    for frac in (0.4, 0.63):
        res = gp.prune(Net(), x, flops=frac, uniform=True, allocation="uniform", round_to=1)
        widths = {res.model.blocks[i].up.out_features for i in range(3)}
        assert len(widths) == 1, widths
        assert abs(res.report["achieved"]["flops"] - frac) <= 0.03, res.report["achieved"]
    per_layer = gp.prune(Net(), x, flops=0.4, allocation="global", round_to=1)
    assert len({per_layer.model.blocks[i].up.out_features for i in range(3)}) > 1  # the tie is what equalizes


def test_uniform_in_the_pipeline_string() -> None:
    res = gp.prune(Net(), torch.randn(2, 16), pipeline="couple,score,allocate{flops=0.5,uniform-layers=true},rewrite,verify")
    assert len({res.model.blocks[i].up.out_features for i in range(3)}) == 1


def test_cli_uniform(tmp_path, monkeypatch) -> None:
    from graphprune.cli import main

    (tmp_path / "netmod.py").write_text(
        "import torch\nfrom test_uniform_layers import Net\n\ndef make():\n    return Net(), torch.randn(2, 16)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "small.pt"
    assert main(["prune", "netmod:make", "--flops", "0.5", "--uniform", "--allow-miss", "-o", str(out)]) == 0
    m = torch.load(out, weights_only=False)
    assert len({m.blocks[i].up.out_features for i in range(3)}) == 1


def test_cli_uniform_with_another_allocation_is_one_line_exit_2(tmp_path, monkeypatch, capsys) -> None:
    from graphprune.cli import main

    (tmp_path / "netmod2.py").write_text(
        "import torch\nfrom test_uniform_layers import Net\n\ndef make():\n    return Net(), torch.randn(2, 16)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "small.pt"
    code = main(["prune", "netmod2:make", "--flops", "0.5", "--uniform", "--allocation", "global", "-o", str(out)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "uniform=True needs allocation='uniform'" in err[0], err
