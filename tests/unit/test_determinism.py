"""Same model, inputs and options => byte-identical .pt / .onnx files and plan JSON, across runs and
processes (issue #11). Two fresh interpreters with different hash seeds (so set/dict iteration
orders that depend on string hashes differ) prune the same models through the module route, the fx
route and the ONNX route; every file they write must be identical byte for byte.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import sys
import torch
from torch import nn
import graphprune as gp
sys.path.insert(0, sys.argv[3])
from archgen import build, example_inputs

out, source = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                    nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10)).eval()
spec = {"input": "tokens", "c": 8, "vocab": 10, "len": 5, "head": "none", "extra_output": False,
        "blocks": [["attn", {"style": "sdpa", "heads": 2, "hd": 4, "residual": False}]]}
runs = {
    "module": (cnn, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))),
    "fx": (build(spec), example_inputs(spec)),
}
for name, (model, x) in runs.items():
    res = gp.prune(model, x, flops=0.5)
    assert res.report["route"] == name, res.report["route"]
    res.save(f"{out}/{name}.pt")
    res.save(f"{out}/{name}.onnx")
    open(f"{out}/{name}.plan.json", "w").write(res.plan.to_json())
res = gp.prune(source, flops=0.5)
res.save(f"{out}/onnx.onnx")
open(f"{out}/onnx.plan.json", "w").write(res.plan.to_json())
'''


def _run(tmp: Path, name: str, source: Path, hash_seed: str) -> dict[str, bytes]:
    out = tmp / name
    out.mkdir()
    script = tmp / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(out), str(source), str(ROOT / "tests" / "property")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_two_processes_write_identical_bytes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = tmp_path / "source.onnx"
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    torch.onnx.export(model, (torch.randn(1, 3, 12, 12),), str(source), dynamo=False, input_names=["x"])
    first = _run(tmp_path, "a", source, "0")
    second = _run(tmp_path, "b", source, "12345")
    assert sorted(first) == sorted([
        "fx.onnx", "fx.plan.json", "fx.pt", "module.onnx", "module.plan.json", "module.pt", "onnx.onnx", "onnx.plan.json",
    ])
    differ = [name for name in first if first[name] != second[name]]
    assert differ == []
