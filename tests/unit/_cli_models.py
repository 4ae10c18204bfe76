"""Small models for the CLI tests, given as ``_cli_models:factory`` sources (pytest puts this
directory on sys.path, as it has no __init__.py)."""

from __future__ import annotations

import torch
from torch import nn


class SortMLP(nn.Module):
    """torch.sort has no coupling rule: a barrier that freezes the first layer's outputs, so
    flops=0.6 is out of reach (the target is missed)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 8)
        self.c = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sort(torch.relu(self.a(x)), dim=-1).values
        return self.c(torch.relu(self.b(h)))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


def sort_mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return SortMLP().eval(), torch.randn(2, 8)


def convnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return ConvNet().eval(), torch.randn(2, 3, 8, 8)


def evaluated_mlp():  # type: ignore[no-untyped-def]
    """A Source with its own calibration batches and an evaluation (cosine to the dense outputs)."""
    from graphprune.sources import Source

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    held_out = torch.randn(32, 16)
    with torch.no_grad():
        ref = model(held_out)

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"cosine": float(torch.nn.functional.cosine_similarity(m(held_out), ref).mean())}

    return Source(model, (torch.randn(4, 16),), calib=[(torch.randn(4, 16),) for _ in range(4)], evaluate=evaluate,
                  about="output cosine to the dense model on 32 held-out rows")
