"""The prune report as one self-contained HTML page: inline CSS and SVG drawn here, no scripts, no
network, no matplotlib. ``graphprune prune ... --report r.html`` writes it; ``graphprune report
r.json -o r.html`` rebuilds it from the JSON report alone (everything drawn is in the JSON).

Reading order (what a person should see in ten seconds): the verdict (target met or missed, by
how much, verified or not) and the kept fractions of FLOPs, MACs, params and latency; then where
the cost went (FLOPs and MACs per block, latency per block predicted and measured when the report
has them); then per-layer widths before/after; the plan (units removed per group); barriers with
the ``--why`` chain of one channel each froze; the options and timings of the run.

:func:`figures` is the data of every chart, shared with the PNG writer (:mod:`.report_plots`).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OptionError, SourceError

__all__ = ["Figure", "Series", "figures", "load_report", "render_html", "unreachable_text", "write_html"]

BEFORE_COLOR = "#c9ced6"
AFTER_COLOR = "#2f6fb3"
MEASURED_COLOR = "#d9822b"
REQUIRED = ("model", "target", "flops_before", "flops_after", "params_before", "params_after")


@dataclass(frozen=True)
class Series:
    label: str
    values: tuple[float, ...]
    color: str


@dataclass(frozen=True)
class Figure:
    """Horizontal bars: one row per category; ``overlay`` draws the first series as the backdrop
    and the second inside it (before/after), else the series sit side by side."""

    key: str  # file stem for the PNG
    title: str
    unit: str
    categories: tuple[str, ...]
    series: tuple[Series, ...]
    overlay: bool = True
    note: str = ""
    normalize: bool = False  # bars as a fraction of the row's first series (widths of unlike layers)

    def scaled(self) -> list[list[float]]:
        """Bar lengths per series and row, in [0, 1] of the longest bar (or of each row's first value)."""
        if self.normalize:
            base = [v or 1.0 for v in self.series[0].values]
            return [[v / b for v, b in zip(s.values, base, strict=True)] for s in self.series]
        top = max((v for s in self.series for v in s.values), default=0.0) or 1.0
        return [[v / top for v in s.values] for s in self.series]


def load_report(path: str | Path) -> dict[str, Any]:
    """A JSON prune report; errors name the file and what is wrong with it."""
    p = Path(path)
    try:
        rep = json.loads(p.read_text())
    except FileNotFoundError:
        raise SourceError(f"{p}: no such report file (write one with graphprune prune ... --report {p.name})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{p}: cannot read the report ({exc})") from None
    except json.JSONDecodeError as exc:
        raise SourceError(f"{p}: not JSON (line {exc.lineno}: {exc.msg}); give a report from graphprune prune --report") from None
    if not isinstance(rep, dict) or any(k not in rep for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(rep, dict) or k not in rep]
        raise SourceError(f"{p}: not a graphprune prune report (missing {', '.join(missing)})")
    return rep


# ---------------------------------------------------------------- figure data


def _blocks(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[str], list[float], list[float]]:
    order: list[str] = []
    before: dict[str, float] = {}
    after: dict[str, float] = {}
    for r in rows:
        b = r["block"]
        if b not in before:
            order.append(b)
            before[b], after[b] = 0.0, 0.0
        before[b] += float(r.get(f"{key}_before", 0.0))
        after[b] += float(r.get(f"{key}_after", 0.0))
    keep = [b for b in order if before[b] > 0 or after[b] > 0]
    return keep, [before[b] for b in keep], [after[b] for b in keep]


def _profile_blocks(rows: Sequence[dict[str, Any]], key: str, order: list[str]) -> dict[str, float]:
    """Per-layer profile rows (``layer``, ``predicted_us``, ``measured_us``) summed per block;
    blocks not yet in ``order`` are appended to it."""
    from .api import block_of

    out: dict[str, float] = {}
    for r in rows:
        label = str(r["layer"])
        b = block_of(label) if not label.startswith("(") else label
        if b not in order:
            order.append(b)
        out[b] = out.get(b, 0.0) + float(r.get(key, 0.0))
    return out


def _latency_figures(rep: dict[str, Any]) -> list[Figure]:
    """Predicted latency per block: the allocation's own prices (``layers`` rows, latency budgets),
    else the per-layer profiles' predictions; measured per block from the profiles (--layer-latency)."""
    lat = rep.get("latency") or {}
    before, after = lat.get("layers_before"), lat.get("layers_after")
    where = f"{lat.get('runtime', 'the runtime')}, {lat.get('threads', 1)} thread(s)"
    rows = rep.get("layers") or []
    priced = any("predicted_us_before" in r for r in rows)
    figs: list[Figure] = []
    if priced:
        cats, b, a = _blocks(rows, "predicted_us")
        figs.append(Figure(
            "latency_predicted_per_block", "Latency per block, predicted (microseconds)", "us", tuple(cats),
            (Series("predicted before", tuple(b), BEFORE_COLOR), Series("predicted after", tuple(a), AFTER_COLOR)),
            note="priced on the original graph at the pruned widths (as a latency budget's allocation prices them): "
                 "calibrated per-op latency tables, calibration scale applied, offset left out"
                 + ("" if before else "; --layer-latency adds measured per-layer times")))
    if before and after:  # graphprune prune --layer-latency: both models profiled per layer
        for key, what, note in (
            ("predicted_us", "predicted", "per-layer profiles' predictions (each model priced on its own graph), "
                                          "calibration scale applied, offset left out"),
            ("measured_us", "measured", f"median per-layer time over profiled runs on {where}"),
        ):
            if what == "predicted" and priced:
                continue
            order: list[str] = []
            b = _profile_blocks(before, key, order)
            a = _profile_blocks(after, key, order)
            cats = [c for c in order if b.get(c, 0.0) > 0 or a.get(c, 0.0) > 0]
            figs.append(Figure(f"latency_{what}_per_block", f"Latency per block, {what} (microseconds)", "us",
                               tuple(cats), (Series(f"{what} before", tuple(b.get(c, 0.0) for c in cats), BEFORE_COLOR),
                                             Series(f"{what} after", tuple(a.get(c, 0.0) for c in cats),
                                                    AFTER_COLOR if what == "predicted" else MEASURED_COLOR)),
                               note=note))
    return figs


def _layer_label(row: dict[str, Any]) -> str:
    """A layer's name: its weight's module path, else (anonymous ONNX initializers such as
    ``onnx::Conv_193``) the module path its node name spells, else the node name."""
    w = str(row["weight"])
    if not w.startswith("onnx::"):
        return w.removesuffix(".weight")
    return str(row.get("module") or row["node"])


def figures(rep: dict[str, Any]) -> list[Figure]:
    """The report's charts as data (empty parts of the report give no figure)."""
    rows = rep.get("layers") or []
    figs: list[Figure] = []
    for key, name in (("flops", "FLOPs"), ("macs", "MACs")):
        cats, b, a = _blocks(rows, key)
        if cats:
            figs.append(Figure(f"{key}_per_block", f"{name} per block, before and after", name, tuple(cats),
                               (Series("before", tuple(b), BEFORE_COLOR), Series("after", tuple(a), AFTER_COLOR))))
    figs += _latency_figures(rep)
    wrows = [r for r in rows if r.get("weight") and r["op"] in ("conv", "linear", "matmul", "addmm", "gemm", "einsum")]
    if wrows:
        figs.append(Figure("widths", "Output width per layer, after as a share of before", "fraction of channels kept",
                           tuple(_layer_label(r) for r in wrows),
                           (Series("before", tuple(float(r["width_before"]) for r in wrows), BEFORE_COLOR),
                            Series("after", tuple(float(r["width_after"]) for r in wrows), AFTER_COLOR)),
                           normalize=True, note="bars: channels kept / channels before, per layer; numbers: after / before"))
    return figs


# ---------------------------------------------------------------- SVG


def _num(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def svg_figure(fig: Figure, width: int = 1060) -> str:
    """Horizontal bar chart as inline SVG (no xmlns needed inside HTML)."""
    label_w, value_w, row_h, top = 230, 190, 20 if fig.overlay else 10 + 9 * len(fig.series), 26
    plot_w = width - label_w - value_w
    scaled = fig.scaled()
    height = top + row_h * len(fig.categories) + 8
    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{_e(fig.title)}">']
    x = label_w
    for s in fig.series:  # legend
        out.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{s.color}"/>'
                   f'<text x="{x + 16}" y="16" class="lg">{_e(s.label)}</text>')
        x += 24 + 7 * len(s.label)
    for i, cat in enumerate(fig.categories):
        y = top + i * row_h
        short = cat if len(cat) <= 34 else "..." + cat[-31:]
        out.append(f'<text x="{label_w - 8}" y="{y + row_h * 0.68:.1f}" class="cat" text-anchor="end">'
                   f'<title>{_e(cat)}</title>{_e(short)}</text>')
        vals = [s.values[i] for s in fig.series]
        lens = [plot_w * sc[i] for sc in scaled]
        if fig.overlay and len(fig.series) == 2:
            b, a = vals
            out.append(f'<rect x="{label_w}" y="{y + 2}" width="{lens[0]:.1f}" height="{row_h - 4}" '
                       f'fill="{fig.series[0].color}"/>')
            out.append(f'<rect x="{label_w}" y="{y + 5}" width="{lens[1]:.1f}" height="{row_h - 10}" '
                       f'fill="{fig.series[1].color}"/>')
            kept = f" ({100 * a / b:.0f}%)" if b else ""
            out.append(f'<text x="{label_w + plot_w + 6}" y="{y + row_h * 0.68:.1f}" class="val">'
                       f'{_num(a)} / {_num(b)}{kept}</text>')
        else:
            bh = (row_h - 6) / max(1, len(vals))
            for j, (s, v) in enumerate(zip(fig.series, vals, strict=True)):
                out.append(f'<rect x="{label_w}" y="{y + 3 + j * bh:.1f}" width="{lens[j]:.1f}" '
                           f'height="{bh - 1:.1f}" fill="{s.color}"><title>{_e(s.label)}: {_num(v)}</title></rect>')
            out.append(f'<text x="{label_w + plot_w + 6}" y="{y + row_h * 0.6:.1f}" class="val">'
                       f'{" / ".join(_num(v) for v in vals)}</text>')
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------- page

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#1d2330;padding:0 16px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e3e6eb;padding-bottom:4px}
.sub{color:#5b6475;margin-bottom:14px}
.verdict{display:inline-block;padding:6px 14px;border-radius:6px;font-weight:600;font-size:16px;margin:6px 0 12px}
.ok{background:#e3f4e8;color:#17603a;border:1px solid #9fd5b1} .bad{background:#fdecea;color:#9b1c1c;border:1px solid #f1a7a0}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.card{border:1px solid #e3e6eb;border-radius:8px;padding:8px 14px;min-width:150px}
.card .k{color:#5b6475;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:600} .card .d{color:#5b6475;font-size:12px}
table{border-collapse:collapse;margin:6px 0;font-size:13px} td,th{border-bottom:1px solid #eef0f3;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{color:#5b6475;font-weight:600} td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f7f9;border:1px solid #e3e6eb;border-radius:6px;padding:8px 10px;font-size:12px;overflow-x:auto;white-space:pre-wrap}
.chart text{font:12px system-ui,sans-serif;fill:#1d2330} .chart .val{fill:#5b6475} .note{color:#5b6475;font-size:12px}
.mini{display:inline-block;height:9px;background:#c9ced6;position:relative;vertical-align:middle}
.mini span{position:absolute;left:0;top:0;bottom:0;background:#2f6fb3}
"""


def _card(key: str, value: str, detail: str = "") -> str:
    return f'<div class="card"><div class="k">{_e(key)}</div><div class="v">{_e(value)}</div><div class="d">{_e(detail)}</div></div>'


def unreachable_text(rep: dict[str, Any]) -> str:
    """Why a target is out of reach, in the words of what the report holds."""
    if rep.get("barriers"):
        return "not reachable: barriers freeze channels (see Barriers) and every group keeps at least one unit"
    return "not reachable: even at the narrowest widths allowed (at least one unit per group) it stays above"


def _budget_text(rep: dict[str, Any]) -> str:
    metric, value = next(iter(rep["target"].items()))
    if metric == "latency":
        return f"Budget: {100 * value:.0f}% of the measured latency (speedup x{1 / value:.2f})"
    if metric == "latency_ms":
        return f"Budget: {value:g} ms latency"
    return f"Budget: keep {100 * value:g}% of {metric}"


def _verdict(rep: dict[str, Any]) -> str:
    metric, value = next(iter(rep["target"].items()))
    ver = rep.get("verification") or {}
    verified = "verified" if ver.get("ok") else ("NOT verified" if ver else "verification not run")
    met = rep.get("target_met")
    if met is None:
        return f'<div class="verdict ok">target {metric}={value:g}; {verified}</div>'
    miss = 100 * float(rep.get("miss", 0.0))
    tol = 100 * float(rep.get("tolerance", 0.0))
    if met:
        return f'<div class="verdict ok">Target met: {_e(metric)}={value:g} ({miss:+.1f}%, tolerance {tol:.0f}%); {verified}</div>'
    why = "" if rep.get("target_reachable", True) else f" - {unreachable_text(rep)}"
    return (f'<div class="verdict bad">Target MISSED: {_e(metric)}={value:g}, {miss:+.1f}% above it '
            f'(tolerance {tol:.0f}%){why}; {verified}</div>')


def _cards(rep: dict[str, Any]) -> str:
    cards = []
    for key, name in (("flops", "FLOPs"), ("macs", "MACs"), ("params", "Params")):
        b, a = rep.get(f"{key}_before"), rep.get(f"{key}_after")
        if b:
            cards.append(_card(f"{name} kept", f"{100 * a / b:.1f}%", f"{_num(a)} of {_num(b)}"))
    lat = rep.get("latency") or {}
    if "measured_ms" in lat:
        cards.append(_card("Measured speedup", f"x{lat['measured_speedup']:.2f}",
                           f"{lat['original_ms']:.3f} -> {lat['measured_ms']:.3f} ms on {lat.get('runtime', '')}"))
    elif "predicted_ms" in lat:
        cards.append(_card("Predicted latency", f"{lat['predicted_ms']:.3f} ms", f"from {lat['predicted_before_ms']:.3f} ms"))
    cards.append(_card("Units removed", f"{rep.get('units_removed', 0)}/{rep.get('units', 0)}", f"in {rep.get('groups', 0)} groups"))
    ver = rep.get("verification") or {}
    if ver:
        cards.append(_card("Max abs error", f"{ver.get('max_abs_err', float('nan')):.2g}", "vs the masked original"))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(
            f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _plan(rep: dict[str, Any], limit: int = 40) -> str:
    groups = rep.get("group_plan") or []
    if not groups:
        return "<p>no group plan in this report</p>"
    ordered = sorted(groups, key=lambda g: (-(g["units"] - g["kept"]), g["id"]))
    rows = []
    for g in ordered[:limit]:
        frac = g["kept"] / g["units"] if g["units"] else 1.0
        bar = f'<span class="mini" style="width:80px"><span style="width:{80 * frac:.0f}px"></span></span>'
        rows.append([str(g["id"]), f"{g['units'] - g['kept']}", f"{g['kept']}/{g['units']}", bar, str(g["width"]),
                     _e(", ".join(g["weights"]) or "-")])
    more = f'<p class="note">{len(ordered) - limit} more groups in the JSON report</p>' if len(ordered) > limit else ""
    return _table(["group", "units removed", "kept", "", "unit width", "weights"], rows, numeric=(1, 2, 4)) + more


def _barriers(rep: dict[str, Any]) -> str:
    bars = rep.get("barriers") or {}
    if not bars:
        return "<p>none: every op had a rule, nothing was frozen by an unknown op</p>"
    why = rep.get("barrier_why") or {}
    parts = ['<p class="note">an op without a rule pins every tensor it touches; one frozen channel each, explained '
             '(as <code>graphprune analyze --why</code> does):</p>']
    for op, nodes in bars.items():
        shown = ", ".join(nodes[:6]) + (f" and {len(nodes) - 6} more" if len(nodes) > 6 else "")
        parts.append(f"<h3>{_e(op)} &times;{len(nodes)}</h3><p>{_e(shown)}</p>")
        if why.get(op):
            parts.append("<pre>" + _e("\n".join(why[op])) + "</pre>")
    return "".join(parts)


def _options(rep: dict[str, Any]) -> str:
    opts = dict(rep.get("options") or {})
    for k in ("criterion", "allocation", "route", "route_reason"):
        if rep.get(k):
            opts.setdefault(k, rep[k])
    rows = [[_e(k), _e(json.dumps(v) if not isinstance(v, str) else v)] for k, v in opts.items()]
    timings = rep.get("timings") or {}
    t = ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
    saved = rep.get("saved") or {}
    extra = f"<p>time: {_e(t)}</p>" if t else ""
    if saved:
        extra += f"<p>written: {_e(saved.get('path', ''))} ({_e(saved.get('format', ''))})</p>"
    for note in rep.get("notes") or []:
        extra += f'<p class="note">{_e(note)}</p>'
    return _table(["option", "value"], rows) + extra


def render_html(rep: dict[str, Any]) -> str:
    """The whole page as a string (self-contained: no scripts, links or fonts fetched)."""
    budget = rep.get("budget") or {}
    sections = [
        f"<h1>graphprune: {_e(rep['model'])}</h1>",
        f'<div class="sub">{_e(_budget_text(rep))}. The budget counts {_e(budget.get("counts", "?"))}.</div>',
        _verdict(rep), _cards(rep),
    ]
    figs = {f.key: f for f in figures(rep)}
    sections.append("<h2>Where the cost went</h2>")
    for key in ("flops_per_block", "macs_per_block", "latency_predicted_per_block", "latency_measured_per_block"):
        if key in figs:
            f = figs[key]
            sections.append(f"<h3>{_e(f.title)}</h3>{svg_figure(f)}" + (f'<p class="note">{_e(f.note)}</p>' if f.note else ""))
    if "widths" in figs:
        f = figs["widths"]
        sections.append(f"<h2>Layer widths</h2>{svg_figure(f)}<p class=\"note\">{_e(f.note)}</p>")
    sections.append(f"<h2>Plan: units removed per group</h2>{_plan(rep)}")
    sections.append(f"<h2>Barriers</h2>{_barriers(rep)}")
    sections.append(f"<h2>Options used</h2>{_options(rep)}")
    title = f"graphprune report: {rep['model']}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")


def write_html(rep: dict[str, Any], path: str | Path) -> None:
    """Write the page atomically (mode as ``open()`` gives)."""
    from .export import write_atomic

    if Path(path).suffix.lower() not in (".html", ".htm"):
        raise OptionError(f"{path}: an HTML report needs a .html file name")
    text = render_html(rep)
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
