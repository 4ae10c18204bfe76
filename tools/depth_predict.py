"""Depth pruning on the built-in models, *predicted* only (nothing is timed).

For each architecture: how many groups are depth-eligible, and the greedy latency allocation at a
fraction of the measured latency with and without depth -- predicted latency (the calibrated
table model) and importance kept (L2, group-normalized). The latency model comes from an existing
cache (copied to a temporary directory, never written back); an architecture whose signatures or
calibration the cache lacks is skipped rather than measured.

    python tools/depth_predict.py --cache /work/main/.bench-cache/latency-v1.json [--fraction 0.5] [names...]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from graphprune.models import build
from graphprune.passes.score import weights_of

from graphprune.analysis import couple, normalize_per_group
from graphprune.analysis.allocation import ShapeTable
from graphprune.analysis.depth import depth_eligible, removed_whole
from graphprune.analysis.importance import CRITERIA, CriterionInputs
from graphprune.analysis.knapsack import allocate_greedy
from graphprune.cost import predict
from graphprune.cost.latency import MODEL_VERSION
from graphprune.cost.profile import _specs, graph_key
from graphprune.cost.runtimes import make_runtime
from graphprune.cost.table import TableCache
from graphprune.frontends import capture
from graphprune.latency_source import make_timer
from graphprune.latency_target import setup_latency

NAMES = ["resnet18_w050", "resnet50_w025", "mobilenet_v2", "vit_tiny", "unet"]


def run(name: str, cache: TableCache, fraction: float) -> str:
    model, x = build(name)
    model.eval()
    cap = capture(model, x)
    graph, coupling = cap.graph, couple(cap.graph)
    eligible = depth_eligible(coupling)
    rt = make_runtime("onnxruntime", 1)
    fp = rt.fingerprint()
    missing = sum(cache.get(fp, s.key) is None for s in _specs(graph))
    if missing or cache.calibration(fp, f"{graph_key(graph)}-{MODEL_VERSION}") is None:
        return f"{name}: {len(eligible)}/{len(coupling.groups)} groups depth-eligible; cache lacks {missing} signature(s) " \
               "or the calibration: skipped (would measure)"
    timer = make_timer(rt, graph, coupling, model=model, example_inputs=x, program=cap.program)
    setup = setup_latency(graph, coupling, timer, cache=cache)
    assert setup.measured_now == 0
    scores = normalize_per_group(coupling, CRITERIA["l2"](CriterionInputs(coupling, weights_of(graph, model))))
    lm, table, cal = setup.model, ShapeTable(coupling), setup.model.calibration
    target = fraction * setup.base_measured
    out = [f"{name}: {len(eligible)}/{len(coupling.groups)} groups depth-eligible; measured {setup.base_measured * 1e3:.3f} ms, "
           f"predicted {predict(lm, graph).total * 1e3:.3f} ms, target {target * 1e3:.3f} ms"]
    for depth in (frozenset(), eligible):
        t0 = time.perf_counter()
        res = allocate_greedy(coupling, scores, lm.node_latency, target, step=rt.step, scale=cal.scale,
                              offset=cal.offset, depth=depth)
        secs = time.perf_counter() - t0
        m = res.removed
        whole = removed_whole(coupling, m)
        out.append(f"    depth {'on ' if depth else 'off'}: predicted {predict(lm, graph, table.shapes(m)).total * 1e3:.3f} ms, "
                   f"importance kept {float(scores[~m].sum() / scores.sum()):.3f}, groups removed whole {len(whole)}"
                   + (f" ({', '.join(_name(coupling, g) for g in whole)})" if whole else "") + f" [{secs:.1f}s]")
    return "\n".join(out)


def _name(coupling, g) -> str:  # type: ignore[no-untyped-def]
    for n, ax in g.spaces:
        v = coupling.graph.value(n)
        if v.source and ax == 0:
            return f"{v.source}[{g.size}]"
    return f"group {g.id}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=NAMES)
    ap.add_argument("--cache", required=True, help="latency cache JSON to read (copied, never written)")
    ap.add_argument("--fraction", type=float, default=0.5, help="latency budget as a fraction of the measured latency")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "latency-v1.json"
        shutil.copy(args.cache, path)
        cache = TableCache(path)
        for name in args.names:
            print(run(name, cache, args.fraction), flush=True)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
