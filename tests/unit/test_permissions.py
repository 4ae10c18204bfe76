"""Written files get the mode a plain open() gives (0o666 & ~umask), not mkstemp's 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from graphprune.cli import main
from graphprune.export import default_file_mode, save_model, write_atomic


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_default_mode_follows_the_umask() -> None:
    old = os.umask(0o027)
    try:
        assert default_file_mode() == 0o640
        os.umask(0o022)
        assert default_file_mode() == 0o644
    finally:
        os.umask(old)


def test_saved_models_are_0644_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.randn(2, 4)
    for name in ("m.pt", "m.onnx"):
        save_model(model, tmp_path / name, x)
        assert _mode(tmp_path / name) == 0o644, name
    write_atomic(tmp_path / "t.json", lambda tmp: tmp.write_text("{}"))
    assert _mode(tmp_path / "t.json") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.pt", "t.json"]  # no temporaries left


def test_failed_write_leaves_the_target_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "keep.json"
    target.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_cli_outputs_are_0644_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    out = tmp_path / "m.onnx"
    args = ["prune", "_cli_models:convnet", "--flops", "0.5", "-o", str(out), "--report", str(tmp_path / "r.json"),
            "--report", str(tmp_path / "r.html"), "--plots", str(tmp_path / "plots")]
    assert main(args) == 0
    files = [out, tmp_path / "r.json", tmp_path / "r.html", *sorted((tmp_path / "plots").iterdir())]
    assert {p.suffix for p in files} == {".onnx", ".json", ".html", ".png"}
    for p in files:
        assert _mode(p) == 0o644, p
