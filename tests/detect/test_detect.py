"""Detectors torch.export cannot capture whole (issue #13), on models/yolo.py (NMS and data-dependent
glue in plain torch): capture as fragments, heads kept without configuration, the oracle before
the barriers and on the final outputs, other image sizes, and one-line errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from graphprune.models.yolo import YOLO, build_yolo

import graphprune as gp
from graphprune.cli import main
from graphprune.errors import CaptureError
from graphprune.frontends import capture
from graphprune.verification import masked_original

NUM_CLASSES = 20


@pytest.fixture(scope="module")
def pruned() -> tuple[YOLO, Any, gp.PruneResult]:
    model, example = build_yolo(image_size=64, width=0.5)
    return model, example, gp.prune(model, example, flops=0.5)


def _head_outputs(model: YOLO, images: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t for pair in model.head(model.neck(model.backbone(model.batch_images(images)))) for t in pair]


def test_capture_falls_back_to_fragments_linked_by_identity(pruned: tuple[YOLO, Any, gp.PruneResult]) -> None:
    _, _, res = pruned
    info = res.report["capture"]
    assert info["method"] == "fragments"
    assert info["fragments"] == ["backbone", "neck", "head"]
    assert info["not_captured"] == []
    assert "data-dependent" in info["reason"]
    graph = res.coupling.graph
    # one graph input (the padded batch glue built); neck and head read earlier fragments' outputs
    assert [v.shape for v in graph.inputs] == [(1, 3, 64, 64)]
    # the pinned outputs are exactly the six head convs' outputs (box distances, class logits per level)
    shapes = sorted(v.shape for v in graph.outputs)
    assert shapes == sorted([(1, 4, s, s) for s in (8, 4, 2)] + [(1, NUM_CLASSES, s, s) for s in (8, 4, 2)])
    # each head output is read by decode glue, a barrier named by its function
    assert {n.op for n in graph.nodes if n.op.startswith("glue.")} == {"glue.softplus", "glue.flatten"}
    assert info["glue_barriers"] == {"softplus": 3, "flatten": 3}


def test_prune_keeps_class_and_heads_and_meets_budget(pruned: tuple[YOLO, Any, gp.PruneResult]) -> None:
    model, _, res = pruned
    assert type(res.model) is YOLO and res.model is not model
    assert res.report["route"] == "module"
    assert res.report["kept"]["flops"] == pytest.approx(0.5, abs=0.01)
    assert res.report["verification"]["ok"] is True
    for box, cls in zip(res.model.head.box, res.model.head.cls, strict=True):
        assert box[-1].weight.shape[0] == 4 and cls[-1].weight.shape[0] == NUM_CLASSES
    # something inside was pruned, and the original is untouched
    assert res.model.neck.bu5.cv3.conv.weight.shape[0] < model.neck.bu5.cv3.conv.weight.shape[0]
    assert model.neck.bu5.cv3.conv.weight.shape[0] == build_yolo(image_size=64, width=0.5)[0].neck.bu5.cv3.conv.weight.shape[0]
    cap = res.report["capture"]
    assert cap["pre_barrier_check"]["ok"] is True and cap["pre_barrier_check"]["tensors"] == 6
    assert cap["pre_barrier_check"]["skipped"] == []
    assert set(res.report["barriers"]) == {"glue.softplus", "glue.flatten"}


def test_head_outputs_match_masked_original_at_other_sizes(pruned: tuple[YOLO, Any, gp.PruneResult]) -> None:
    model, _, res = pruned
    masked = masked_original(model, res.coupling, res.removed)
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 80, 100, generator=g)]
    ref, got = _head_outputs(masked, images), _head_outputs(res.model, images)
    assert [t.shape for t in got] == [t.shape for t in ref]
    assert ref[0].shape == (2, 4, 12, 16)
    for r, p in zip(ref, got, strict=True):
        torch.testing.assert_close(p, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))


def test_final_outputs_keep_structure_and_values(pruned: tuple[YOLO, Any, gp.PruneResult]) -> None:
    model, _, res = pruned
    masked = masked_original(model, res.coupling, res.removed)
    g = torch.Generator().manual_seed(4)
    images = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 64, 64, generator=g)]
    with torch.no_grad():
        ref, got = masked(images), res.model(images)
    assert len(got) == 2
    for r, p in zip(ref, got, strict=True):
        assert set(p) == {"boxes", "scores", "labels"}
        assert p["boxes"].shape[1] == 4 and 0 < p["boxes"].shape[0] <= model.detections_per_img
        torch.testing.assert_close(p["labels"], r["labels"])
        torch.testing.assert_close(p["boxes"], r["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(p["scores"], r["scores"], rtol=1e-4, atol=1e-5)


def test_batch_tensor_gets_the_models_own_message_in_one_line() -> None:
    model, _ = build_yolo(image_size=64, width=0.5)
    with pytest.raises(CaptureError) as exc:
        gp.prune(model, (torch.rand(2, 3, 64, 64),), flops=0.5)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg == ("could not capture YOLO: YOLO expects a list of 3-D images [3, H, W], got a Tensor of shape "
                   "(2, 3, 64, 64); pass list(batch) (YOLO raised ValueError on the example inputs; pass inputs its "
                   "forward accepts)")


def test_nothing_capturable_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    from _detect_models import all_glue

    model, example = all_glue()
    with pytest.raises(CaptureError) as exc:
        gp.prune(model, example, flops=0.5)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("torch.export could not capture AllGlue (")
    assert msg.endswith("and no sub-module with parameters could be captured either -- move the data-dependent "
                        "code out of forward() into a wrapper, or export the model to ONNX and prune the .onnx file")
    out = tmp_path / "m.pt"
    assert main(["prune", "_detect_models:all_glue", "--flops", "0.5", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("graphprune: error: torch.export could not capture AllGlue (")
    assert not out.exists()


def test_pre_barrier_check_skips_fragments_fed_by_glue_that_differs() -> None:
    """Regression (Faster R-CNN R50): RoI heads read proposals that top-k/NMS glue chose; equal up
    to float rounding, they can differ between the masked and the pruned model, and comparing the
    RoI heads' outputs then failed a correct pruning. Such a fragment is skipped, the rest compared."""
    import copy

    from _detect_models import NoisyGlue

    from graphprune.frontends.fragments import check_pre_barrier

    torch.manual_seed(0)
    model = NoisyGlue().eval()
    x = torch.randn(1, 3, 4, 4)
    cap = capture(model, (x,), dynamic=False)
    assert [f.path for f in cap.fragments.fragments] == ["a", "b", "c"]
    assert [f.inputs_from for f in cap.fragments.fragments] == [[None], [None], [1]]
    same = check_pre_barrier(model, copy.deepcopy(model), cap.fragments, (x,), {})
    # b's input differs (glue noise); c reads b, so it is not comparable either
    assert same["ok"] and same["skipped"] == ["b", "c"] and same["tensors"] == 1
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.a.weight[0] += 1.0
    bad = check_pre_barrier(model, broken, cap.fragments, (x,), {})
    assert not bad["ok"] and bad["detail"].startswith("max abs error") and bad["detail"].endswith("(fragment a)")


def test_cli_writes_a_detector_onnx_with_calib_advice(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI on a detector factory: exit 0, the .onnx written (checked in onnxruntime by the
    writer), the report names the fragments, and, as for any model pruned without calibration
    data, the note saying what that costs and how to pass --calib (fragment captures take it)."""
    import json

    from graphprune.api import NO_CALIB_NOTE

    rc = main(["prune", "graphprune.models.yolo:build_yolo", "--flops", "0.6", "-o", str(tmp_path / "y.onnx"),
               "--report", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0 and (tmp_path / "y.onnx").stat().st_size > 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["capture"]["fragments"] and rep["verification"]["ok"]
    assert NO_CALIB_NOTE in rep["notes"] and "--calib" in out
