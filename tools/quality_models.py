"""Small trained models for the retraining-free quality benchmark, rebuilt with a fixed seed.

    python tools/quality_models.py [cnn] [lm]   # trains (both by default), writes models/checkpoints/*.pt

cnn   3 conv-BN-ReLU blocks + linear on scikit-learn's 8x8 digits (70/30 stratified split, seed 0)
lm    byte-level LLaMA-style decoder (graphprune.models.llama: 4 layers, D=128, 4 heads / 2 KV
      heads, SwiGLU 352) on CPython's pydoc_data topics text (first 90% train, last 10% eval)

``load_cnn`` / ``load_lm`` return the model with its data splits, training it first if the
checkpoint is missing. Only tools/ imports this module.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CKPT = Path(__file__).resolve().parent.parent / "models" / "checkpoints"
LM_CFG = {"vocab_size": 256, "hidden_size": 128, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
          "head_dim": 32, "intermediate_size": 352, "max_position": 128}
LM_SEQ = 64

__all__ = ["DigitsCNN", "digits", "load_cnn", "load_lm", "text_bytes"]


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

        self.b1, self.b2, self.b3 = block(1, 32), block(32, 64), block(64, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.b2(self.b1(x)), 2)
        return self.fc(self.b3(x).mean(dim=(2, 3)))


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.3, random_state=0, stratify=d.target)
    return x[tr], y[tr], x[te], y[te]


def load_cnn(retrain: bool = False) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    data = digits()
    path = CKPT / "digits_cnn.pt"
    torch.manual_seed(0)
    model = DigitsCNN()
    if path.exists() and not retrain:
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), data
    xtr, ytr, _, _ = data
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        model.train()
        for idx in torch.randperm(len(ytr), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    CKPT.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), data


def text_bytes() -> tuple[torch.Tensor, torch.Tensor]:
    from pydoc_data.topics import topics

    raw = "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")
    t = torch.tensor(list(raw), dtype=torch.long)
    cut = int(0.9 * len(t))
    return t[:cut], t[cut:]


def load_lm(retrain: bool = False, steps: int = 500) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    from graphprune.models.llama import llama_tiny

    data = text_bytes()
    path = CKPT / "bytes_lm.pt"
    torch.manual_seed(0)
    model = llama_tiny(**LM_CFG)
    if path.exists() and not retrain:
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), data
    train, _ = data
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    for step in range(steps):
        lr = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(train) - LM_SEQ - 1, (32,), generator=g)
        batch = torch.stack([train[s : s + LM_SEQ + 1] for s in starts])
        model.train()
        loss = F.cross_entropy(model(batch[:, :-1]).reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"lm step {step} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    CKPT.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), data


if __name__ == "__main__":
    import sys

    torch.set_num_threads(1)
    which = sys.argv[1:] or ["cnn", "lm"]
    if "cnn" in which:
        cnn, (_, _, xte, yte) = load_cnn(retrain=True)
        with torch.no_grad():
            print("cnn test accuracy", float((cnn(xte).argmax(1) == yte).float().mean()))
    if "lm" in which:
        load_lm(retrain=True)
