"""Every row of the bad-input matrix (tools/bad_input_matrix.py, docs/BAD_INPUT.md) holds.

All rows run once, in one CLI process in a scratch folder; each row then checks: the exit
status, exactly one ``graphprune: error:`` line on stderr containing the expected text, no
traceback, and no file written. Rows with a known issue (owned elsewhere, named in the doc)
check the last line instead of "exactly one". The document must equal what the table renders.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from bad_input_matrix import DOC, ROWS, Row, error_lines, make_files, render, run_rows  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, list[str]]]:
    work = tmp_path_factory.mktemp("bad_inputs")
    make_files(work)
    return run_rows(ROWS, work)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row(row: Row, results: dict[str, tuple[int, str, list[str]]]) -> None:
    status, stderr, written = results[row.id]
    assert status == row.status
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    if not row.known_issue:
        assert len(lines) == 1, lines
    assert lines[-1].startswith("graphprune: error: ")
    assert row.expect in lines[-1]
    assert not [w for w in written if w.startswith("out")]


def test_rows_have_unique_ids_and_every_category() -> None:
    assert len({r.id for r in ROWS}) == len(ROWS)
    assert {r.category for r in ROWS} == {"files", "budgets", "options", "models", "calibration"}


def test_document_is_generated_from_the_table(results: dict[str, tuple[int, str, list[str]]]) -> None:
    assert DOC.read_text() == render(results), "docs/BAD_INPUT.md is stale: run python tools/bad_input_matrix.py"
