"""Fuzz graphprune with generated architectures (issue #11).

    python tools/fuzz.py --n 1000 --seed 0 --out fuzz-out [--no-onnx] [--regressions tests/property/regressions]

Draws ``--n`` architecture specs with hypothesis (tests/property/archgen.py), prunes each at a
random FLOPs budget and checks the properties of tests/property/propcheck.py. Prints a table
(graphs tried, failures per property, notes) and writes ``DIR/fuzz.json`` with every failing spec.
Each failure of a kind not seen before in this run (property + exception type) is shrunk by
hypothesis to a minimal spec and saved as a regression test file in ``--regressions`` (one file per
failure kind; the test fails until the bug is fixed). Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "property"))

from archgen import spec_json, specs  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hyp_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from propcheck import check  # noqa: E402

BUDGETS = (0.3, 0.5, 0.7, 0.9)

TEMPLATE = '''"""Regression found by tools/fuzz.py --seed {seed} and shrunk by hypothesis.

Failed property {prop!r}: {detail}
"""

from __future__ import annotations

from propcheck import check

SPEC = {spec}
BUDGET = {budget!r}


def test_{name}() -> None:
    out = check(SPEC, BUDGET)
    assert out.failures == [], out.failures
'''


class NewFailure(Exception):
    pass


def kind(prop: str, detail: str) -> str:
    """A failure's kind: the property, plus the exception type when the detail names one."""
    head = detail.split(":")[0]
    return f"{prop}:{head}" if head.isidentifier() and head.endswith(("Error", "Exception")) else prop


def _campaign(state: dict[str, Any], rows: list[dict[str, Any]], shrunk: dict[str, dict[str, Any]],
              derived_seed: int, left: int, onnx: bool, max_blocks: int) -> Any:
    """One hypothesis run over at most ``left`` specs; raises NewFailure at the first new kind of
    failure, after hypothesis has shrunk it (``state["last"]`` is then the shrunk example)."""

    @hyp_seed(derived_seed)
    @settings(max_examples=left, deadline=None, database=None, report_multiple_bugs=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])
    @given(specs(max_blocks=max_blocks), st.sampled_from(BUDGETS))
    def one(spec: dict[str, Any], budget: float) -> None:
        if state["shrinking"] is None:
            state["generated"] += 1
        try:
            out = check(spec, budget, onnx_route=onnx)
            fails, notes, info = out.failures, out.notes, {"route": out.route, "groups": out.groups,
                                                           "units_removed": out.units_removed}
        except Exception as exc:  # a crash in graphprune is a failure like any other
            fails, notes, info = [("crash", f"{type(exc).__name__}: {str(exc)[:200]}")], [], {"route": ""}
        hit = False
        if state["shrinking"] is None:
            rows.append({"spec": spec, "budget": budget, "failures": fails, "notes": notes, **info})
            new = [f for f in fails if kind(*f) not in shrunk]
            if new:
                state["shrinking"], hit = kind(*new[0]), True
        else:
            hit = any(kind(*f) == state["shrinking"] for f in fails)
        if hit:  # one raise site: hypothesis shrinks toward smaller specs failing the same way
            state["last"] = (spec, budget, fails)
            raise NewFailure(state["shrinking"])

    return one


def run(n: int, seed: int, onnx: bool, max_blocks: int) -> dict[str, Any]:
    """Generate ``n`` specs; shrink each new kind of failure (hypothesis re-runs the test after a
    raise, so the generation restarts with the remaining count and a derived seed)."""
    rows: list[dict[str, Any]] = []
    shrunk: dict[str, dict[str, Any]] = {}
    left, attempt = n, 0
    while left > 0:
        state: dict[str, Any] = {"generated": 0, "shrinking": None, "last": None}
        one = _campaign(state, rows, shrunk, seed * 1000 + attempt, left, onnx, max_blocks)
        try:
            one()
            left = 0
        except Exception:  # NewFailure, or hypothesis's report of it (FlakyFailure, an exception group)
            if state["last"] is None:
                raise
            spec, budget, fails = state["last"]
            k = state["shrinking"]
            shrunk[k] = {"spec": spec, "budget": budget, "failure": next(f for f in fails if kind(*f) == k)}
            left -= state["generated"]
            attempt += 1
    return {"rows": rows, "shrunk": shrunk}


def save_regressions(shrunk: dict[str, dict[str, Any]], seed: int, where: Path) -> list[Path]:
    where.mkdir(parents=True, exist_ok=True)
    paths = []
    for _kind, item in sorted(shrunk.items()):
        digest = hashlib.sha1(spec_json(item["spec"]).encode()).hexdigest()[:8]
        name = f"{item['failure'][0]}_{digest}"
        path = where / f"test_{name}.py"
        text = TEMPLATE.format(seed=seed, prop=item["failure"][0], detail=item["failure"][1].replace('"""', "'''"),
                               spec=repr(item["spec"]), budget=item["budget"], name=name)
        path.write_text(text)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="graphs to generate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("fuzz-out"), help="folder for fuzz.json")
    ap.add_argument("--regressions", type=Path, default=ROOT / "tests" / "property" / "regressions",
                    help="folder for the shrunk failures as test files")
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX-export route (faster)")
    ap.add_argument("--max-blocks", type=int, default=8)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    t0 = time.perf_counter()
    result = run(args.n, args.seed, not args.no_onnx, args.max_blocks)
    rows = result["rows"]
    by_prop: dict[str, int] = {}
    notes: dict[str, int] = {}
    for r in rows:
        for p in {f[0] for f in r["failures"]}:
            by_prop[p] = by_prop.get(p, 0) + 1
        for p in {f[0] for f in r["notes"]}:
            notes[p] = notes.get(p, 0) + 1
    failed = sum(bool(r["failures"]) for r in rows)
    paths = save_regressions(result["shrunk"], args.seed, args.regressions)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "n": args.n, "seed": args.seed, "onnx_route": not args.no_onnx, "graphs_tried": len(rows),
        "graphs_failed": failed, "failures_by_property": by_prop, "notes_by_kind": notes,
        "routes": {k: sum(r["route"] == k for r in rows) for k in sorted({r["route"] for r in rows})},
        "graphs_pruned": sum(r.get("units_removed", 0) > 0 for r in rows),
        "blocks": {op: sum(op in {b[0] for b in r["spec"]["blocks"]} for r in rows)
                   for op in sorted({b[0] for r in rows for b in r["spec"]["blocks"]})},
        "seconds": round(time.perf_counter() - t0, 1),
        "regressions": [str(p) for p in paths],
        "failing": [r for r in rows if r["failures"]],
        "noted": [r for r in rows if r["notes"] and not r["failures"]],
    }
    (args.out / "fuzz.json").write_text(json.dumps(summary, indent=1, sort_keys=True, default=str))
    print(f"{'graphs tried':<28}{len(rows)}")
    print(f"{'graphs pruned (units > 0)':<28}{summary['graphs_pruned']}")
    print(f"{'graphs failed':<28}{failed}")
    for p, c in sorted(by_prop.items()):
        print(f"  failed {p:<19}{c}")
    for p, c in sorted(notes.items()):
        print(f"  note {p:<21}{c}")
    for p in paths:
        print(f"regression test: {p}")
    print(f"{'seconds':<28}{summary['seconds']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
