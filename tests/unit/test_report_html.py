"""The HTML report: one self-contained page with the sections a reader needs, rebuilt exactly
from the JSON report alone; the PNG figures; and the progress protocol the CLI draws."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
import torch

import graphprune as gp
from graphprune.cli import main
from graphprune.errors import SourceError
from graphprune.report_html import figures, load_report, render_html

SECTIONS = ("Where the cost went", "FLOPs per block", "MACs per block", "Layer widths",
            "Plan: units removed per group", "Barriers", "Options used")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("report")
    args = ["prune", "_cli_models:sort_mlp", "--flops", "0.7", "-o", str(d / "m.pt"), "--report", str(d / "r.json"),
            "--report", str(d / "r.html"), "--plots", str(d / "plots"), "--allow-miss"]
    assert main(args) == 0
    return d


def test_page_has_every_section_and_no_network_reference(written: Path) -> None:
    page = (written / "r.html").read_text()
    for title in SECTIONS:
        assert title in page, title
    assert "http" not in page.lower() and "<script" not in page and "<link" not in page and "@import" not in page
    assert page.count("<svg") == 3  # FLOPs, MACs, widths (no latency budget: no latency chart)
    rep = json.loads((written / "r.json").read_text())
    # the barrier and the --why chain of the channel it froze
    assert "aten.sort.default" in page
    chain = rep["barrier_why"]["aten.sort.default"]
    assert chain[0].endswith("aten.sort.default node 'sort' has no rule (barrier)")
    assert all(html.escape(line) in page for line in chain)
    # the options of the run and the verdict
    assert "allow_miss" in page and "--flops" not in page
    verdict = "Target met" if rep["target_met"] else "Target MISSED"
    assert verdict in page


def test_report_subcommand_rebuilds_the_same_page_from_json(written: Path) -> None:
    out = written / "again.html"
    assert main(["report", str(written / "r.json"), "-o", str(out)]) == 0
    assert out.read_text() == (written / "r.html").read_text()


def test_figures_add_up_to_the_report_totals(written: Path) -> None:
    rep = load_report(written / "r.json")
    figs = {f.key: f for f in figures(rep)}
    assert set(figs) == {"flops_per_block", "macs_per_block", "widths"}
    for key in ("flops", "macs"):
        before, after = figs[f"{key}_per_block"].series
        assert sum(before.values) == pytest.approx(rep[f"{key}_before"])
        assert sum(after.values) == pytest.approx(rep[f"{key}_after"])
    w = figs["widths"]
    assert w.categories == ("a", "b", "c")
    assert w.series[0].values == (16.0, 8.0, 8.0)
    # a is frozen by the sort barrier, c's output is the model output: only b shrinks
    assert "a.weight" not in rep["widths"] and "c.weight" in rep["widths"]
    assert w.series[1].values == (16.0, float(rep["widths"]["b.weight"]["after"][0]), 8.0)
    assert w.series[1].values[1] < 8


def test_plots_are_pngs_one_per_figure(written: Path) -> None:
    pngs = sorted((written / "plots").iterdir())
    assert [p.name for p in pngs] == ["flops_per_block.png", "macs_per_block.png", "widths.png"]
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_latency_charts_when_the_report_has_latency_rows(written: Path) -> None:
    rep = load_report(written / "r.json")
    for r in rep["layers"]:
        r["predicted_us_before"], r["predicted_us_after"] = 2.0, 1.0
    pred = {f.key: f for f in figures(rep)}["latency_predicted_per_block"]
    assert pred.categories == ("a", "(top level)", "b", "c")  # the relu and sort sit at top level
    assert pred.series[0].values == (2.0, 4.0, 2.0, 2.0) and pred.series[1].values == (1.0, 2.0, 1.0, 1.0)
    assert render_html(rep).count("<svg") == 4
    # per-layer profiles of both models (prune --layer-latency): predicted and measured, per block
    rep["latency"] = {
        "runtime": "onnxruntime", "threads": 1,
        "layers_before": [{"layer": "layer1.0.conv1", "predicted_us": 5.0, "measured_us": 6.0},
                          {"layer": "layer1.0.conv2", "predicted_us": 5.0, "measured_us": 4.0},
                          {"layer": "(unattributed)", "predicted_us": 0.0, "measured_us": 1.0}],
        "layers_after": [{"layer": "layer1.0.conv1", "predicted_us": 2.0, "measured_us": 3.0}],
    }
    figs = {f.key: f for f in figures(rep)}
    meas = figs["latency_measured_per_block"]
    assert meas.categories == ("layer1.0", "(unattributed)")
    assert meas.series[0].values == (10.0, 1.0) and meas.series[1].values == (3.0, 0.0)
    # the allocation's own prices stay the predicted chart
    got = figs["latency_predicted_per_block"]
    assert (got.categories, got.series) == (pred.categories, pred.series)
    assert render_html(rep).count("<svg") == 5
    for r in rep["layers"]:  # a FLOPs budget has no prices: the profiles' predictions are drawn
        del r["predicted_us_before"], r["predicted_us_after"]
    assert {f.key: f for f in figures(rep)}["latency_predicted_per_block"].categories == ("layer1.0",)


def test_bad_report_files_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.json"
    assert main(["report", str(missing), "-o", str(tmp_path / "r.html")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"graphprune: error: {missing}: no such report file (write one with graphprune prune ... --report none.json)")
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "x"}')
    with pytest.raises(SourceError, match=re.escape(f"{bad}: not a graphprune prune report (missing target, flops_before")):
        load_report(bad)
    assert main(["report", str(bad), "-o", str(tmp_path / "r.json")]) == 2
    assert "graphprune report writes an .html page" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


class _Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(8, 16)
        self.b = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_progress_reports_phases_and_steps() -> None:
    torch.manual_seed(0)
    calls: list[tuple[str, int | None, int | None]] = []
    batches = [torch.randn(4, 8) for _ in range(3)]
    gp.prune(_Mlp().eval(), torch.randn(4, 8), flops=0.5, criterion="wanda", calib=batches, reconstruct="lsq",
             progress=lambda name, done=None, total=None: calls.append((name, done, total)))
    phases = [c[0] for c in calls if c[1] is None]
    assert phases[:3] == ["capture", "couple", "score"] and "verify" in phases and "reconstruct-lsq" in phases
    # one stream: wanda's statistics and the Grams lsq needs are taken in the same pass over the data
    assert [c for c in calls if c[0] == "calibration"] == [("calibration", i, 3) for i in (1, 2, 3)]
    lsq = [c for c in calls if c[0] == "reconstruct-lsq" and c[1] is not None]
    assert lsq and [c[1] for c in lsq] == list(range(1, lsq[0][2] + 1))
    assert ("verify", 1, 2) in calls


def test_one_argument_progress_callbacks_still_work() -> None:
    names: list[str] = []
    gp.prune(_Mlp().eval(), torch.randn(4, 8), flops=0.5, progress=names.append)
    assert names == ["capture", "couple", "score", "allocate", "rewrite", "verify"]


def test_latency_budget_reports_profiling_steps_predicted_blocks_and_verdict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    calls: list[tuple[str, int | None, int | None]] = []
    res = gp.prune(_Mlp().eval(), torch.randn(4, 8), latency=0.8, runtime="torch", measure=False,
                   progress=lambda name, done=None, total=None: calls.append((name, done, total)))
    steps = [c for c in calls if c[0] == "latency profiling"]
    assert steps and steps[-1][1] == steps[-1][2] > 0  # every op signature measured, counted to the end
    rep = res.report
    lat = rep["latency"]
    target_ms = 0.8 * lat["measured_before_at_calibration_ms"]
    assert rep["miss"] == pytest.approx(lat["predicted_ms"] / target_ms - 1.0)
    assert rep["target_met"] is (rep["miss"] <= 0.05) and rep["tolerance"] == 0.05
    rows = rep["layers"]
    assert all(r["predicted_us_before"] >= 0 and r["predicted_us_after"] >= 0 for r in rows)
    # every node of this MLP is costed, so the rows add up to the calibrated totals (scale in, offset out)
    assert len(rows) == 3
    offset = lat["calibration"]["offset_ms"]
    assert sum(r["predicted_us_before"] for r in rows) / 1e3 + offset == pytest.approx(lat["predicted_before_ms"])
    assert sum(r["predicted_us_after"] for r in rows) / 1e3 + offset == pytest.approx(lat["predicted_ms"])
    page = render_html(rep)
    assert "Latency per block" in page and page.count("<svg") == 4


@pytest.mark.parametrize(("scope", "module", "block"), [
    ("layer1.0.conv1", "layer1.0.conv1", "layer1.0"),
    ("encoder.layer.3.attention.self", "encoder.layer.3.attention.self", "encoder.layer.3"),
    ("fc", "fc", "fc"),
    ("/layer2/layer2.0/downsample/downsample.0/Conv", "layer2.0.downsample.0", "layer2.0"),
    ("/conv1/Conv", "conv1", "conv1"),
    ("/Relu", "", "(top level)"),
])
def test_blocks_from_module_scopes_and_onnx_node_names(scope: str, module: str, block: str) -> None:
    from graphprune.api import block_of, module_path

    assert module_path(scope) == module
    assert block_of(scope) == block
