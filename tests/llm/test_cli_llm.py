"""CLI: --hidden prunes the residual stream of an RMSNorm model; a bad --layers is one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graphprune.cli import main


def test_cli_hidden_shrinks_the_stream(tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    assert main(["prune", "graphprune.models.llama:build_llama_tiny", "--flops", "0.7", "--hidden", "--round-to", "8",
                 "--allocation", "uniform", "-o", str(out)]) == 0
    model = torch.load(out, weights_only=False)
    assert model.embed.weight.shape[1] < 64  # the default hidden size of build_llama_tiny is 64


def test_cli_bad_layers_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pt"
    with pytest.raises(SystemExit) as exc:  # argparse: usage error, exit 2
        main(["prune", "graphprune.models.llama:build_llama_tiny", "--flops", "0.7", "--layers", "two", "-o", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'two' is not a number of layers or a fraction" in err[0]
    assert not out.exists()
