"""Exit statuses a pipeline can trust: 0 ok, 1 internal error, 2 bad input, 3 target missed
(model still written and verified; --allow-miss exits 0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import graphprune.sources
from graphprune.cli import EXIT_MISSED, main


def test_met_target_exits_0_and_reports_it(tmp_path: Path) -> None:
    rep = tmp_path / "r.json"
    assert main(["prune", "_cli_models:convnet", "--flops", "0.5", "-o", str(tmp_path / "m.pt"), "--report", str(rep)]) == 0
    data = json.loads(rep.read_text())
    assert data["target_met"] is True
    assert data["miss"] == pytest.approx(data["achieved"]["flops"] / 0.5 - 1.0)
    assert data["miss"] <= 0.01 and data["tolerance"] == 0.01
    assert data["budget"]["metric"] == "flops"


def test_missed_target_exits_3_but_writes_the_verified_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, rep = tmp_path / "m.pt", tmp_path / "r.json"
    code = main(["prune", "_cli_models:sort_mlp", "--flops", "0.6", "-o", str(out), "--report", str(rep)])
    assert code == EXIT_MISSED == 3
    assert out.exists()
    data = json.loads(rep.read_text())
    assert data["target_met"] is False
    assert data["miss"] == pytest.approx(data["achieved"]["flops"] / 0.6 - 1.0)
    assert data["miss"] > 0.01
    assert data["verification"]["ok"] is True
    err = capsys.readouterr().err
    assert "graphprune: target missed: flops 0.6" in err and "--allow-miss" in err


def test_allow_miss_exits_0(tmp_path: Path) -> None:
    args = ["prune", "_cli_models:sort_mlp", "--flops", "0.6", "-o", str(tmp_path / "m.pt"), "--allow-miss"]
    assert main(args) == 0
    assert (tmp_path / "m.pt").exists()


def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pt"
    assert main(["prune", "_cli_models:convnet", "--flops", "0.5", "-o", str(out), "--report", str(tmp_path / "r.txt")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"graphprune: error: --report {tmp_path / 'r.txt'}: use a .json (data) or .html (page) file name")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as exc:
        main(["prune", "_cli_models:convnet", "--macs", "1.5", "-o", str(out)])
    assert exc.value.code == 2
    assert "--macs: 1.5 is out of range" in capsys.readouterr().err


def _boom(source: str) -> None:
    raise RuntimeError("something broke inside\nsecond line")


def test_internal_error_is_one_line_exit_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(graphprune.sources, "load", _boom)
    assert main(["prune", "convnet", "--flops", "0.5", "-o", str(tmp_path / "m.pt")]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "graphprune: error: internal error in prune (RuntimeError: something broke inside); "
        "rerun with -v for the traceback and please report it"]
    assert main(["-v", "prune", "convnet", "--flops", "0.5", "-o", str(tmp_path / "m.pt")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "_boom" in err
    assert err.strip().splitlines()[-1].startswith("graphprune: error: internal error in prune (RuntimeError")
    assert list(tmp_path.iterdir()) == []


def test_help_documents_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for line in ("0  done", "1  internal error", "2  bad input", "3  target missed", "--allow-miss exits 0"):
        assert line in out


def test_pipeline_carries_the_budget_without_a_budget_flag(tmp_path: Path) -> None:
    """--pipeline alone is enough when its allocate pass names the budget (issue 11)."""
    rep = tmp_path / "r.json"
    code = main(["prune", "_cli_models:convnet", "--pipeline", "couple,score,allocate{flops=0.5},rewrite,verify",
                 "-o", str(tmp_path / "m.pt"), "--report", str(rep)])
    assert code == 0
    data = json.loads(rep.read_text())
    assert data["achieved"]["flops"] == pytest.approx(0.5, abs=0.01)
    assert data["verification"]["ok"] is True
