"""A source that brings calibration data and an evaluation: the CLI prunes with the calibrated
recipe and prints the quality kept next to FLOPs and the latency measured on the target runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graphprune.cli import main
from graphprune.cost.runtimes import physical_cores


def test_cli_prints_quality_and_deployed_latency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rep = tmp_path / "r.json"
    code = main(["prune", "_cli_models:evaluated_mlp", "--flops", "0.6", "-o", str(tmp_path / "m.onnx"),
                 "--report", str(rep), "--allow-miss"])
    assert code == 0
    data = json.loads(rep.read_text())
    assert data["criterion"] == "wanda" and data["allocation"] == "global"  # calib from the source: the recipe
    assert data["calibration"] == "the source's 4 calibration batches"
    q = data["quality"]
    assert q["dense"] == {"cosine": pytest.approx(1.0)} and 0.0 < q["pruned"]["cosine"] <= 1.0 + 1e-6
    lat = q["latency_ms"]
    assert (lat["runtime"], lat["threads"]) == ("onnxruntime", physical_cores())
    assert lat["before"] > 0 and lat["after"] > 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "quality kept: cosine" in printed and f"latency ms (onnxruntime, {physical_cores()} thr)" in printed
