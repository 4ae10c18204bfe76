"""The bad-input matrix: every bad input tried, its one-line message and exit status.

    python tools/bad_input_matrix.py            # run every row, rewrite docs/BAD_INPUT.md
    python tools/bad_input_matrix.py --check    # exit 1 if docs/BAD_INPUT.md is out of date

One table (``ROWS``) drives both the document and tests/unit/test_bad_input_matrix.py, so they
cannot drift: each row is a ``graphprune`` command line run in a scratch folder holding the files
``make_files`` writes (bad models, a helper module of model factories, calibration files). Every
row must exit with its status, print exactly one ``graphprune: error: ...`` line that contains
``expect``, print no traceback, and write no output file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BAD_INPUT.md"

__all__ = ["DOC", "ROWS", "Row", "error_lines", "make_files", "render", "run_rows"]


@dataclass(frozen=True)
class Row:
    id: str
    category: str
    what: str
    argv: tuple[str, ...]
    expect: str  # a substring of the one-line message
    status: int = 2
    known_issue: str = ""  # a defect owned elsewhere: the row then checks the LAST stderr line only


FACTORIES = '''
import torch
from torch import nn


def good():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval(), torch.randn(2, 3, 8, 8)


class DataDependent(nn.Module):
    """No sub-module either: the capture fallback (frontends/fragments.py) finds nothing to export."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, 1, 1))

    def forward(self, x):
        y = torch.nn.functional.conv2d(x, self.w)
        if y.sum() > 0:  # control flow on tensor values: torch.export cannot capture it
            return y
        return -y


def data_dependent():
    return DataDependent().eval(), torch.randn(2, 3, 8, 8)


def wrong_inputs():
    return nn.Conv2d(3, 8, 3).eval(), torch.randn(2, 5, 8, 8)


def raises():
    raise RuntimeError("no weights here")


def not_a_pair():
    return nn.Conv2d(3, 8, 3)


nothing = 3
'''


def make_files(d: Path) -> None:
    """The bad (and good) inputs the rows refer to, by relative name inside ``d``."""
    import torch

    (d / "factories.py").write_text(FACTORIES)
    (d / "notes.onnx").write_text("this is a text file, not a protobuf\n")
    (d / "empty.onnx").write_bytes(b"")
    (d / "folder.onnx").mkdir()
    (d / "notes.pt").write_text("not a tensor file\n")
    (d / "calib.txt").write_text("1 2 3\n")
    torch.save(torch.randn(4, 5, 8, 8), d / "calib_wrong_channels.pt")
    torch.save({"weights": "no tensors"}, d / "calib_not_tensors.pt")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), str(d / "good.onnx"), dynamo=False)
    data = (d / "good.onnx").read_bytes()
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    _checkpoints(d)


def _checkpoints(d: Path) -> None:
    """Tiny LLaMA checkpoint directories (graphprune.stream): good, without config.json, with a
    shard missing, in float64; and calibration ids outside the vocabulary."""
    import torch
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=1,
                                   intermediate_size=48, vocab_size=50, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(d / "ckpt")
    model.save_pretrained(d / "ckpt_missing_shard", max_shard_size="20KB")
    shards = sorted((d / "ckpt_missing_shard").glob("model-*.safetensors"))
    shards[1].unlink()
    model.save_pretrained(d / "ckpt_no_config")
    (d / "ckpt_no_config" / "config.json").unlink()
    model.to(torch.float64).save_pretrained(d / "ckpt_float64")
    torch.save([torch.tensor([[1, 2, 3, 50]])], d / "ids_out_of_vocab.pt")


P = ("prune", "factories:good")
OUT = ("-o", "out.pt")
ROWS: tuple[Row, ...] = (
    # -- files -------------------------------------------------------------------------------------
    Row("missing_onnx", "files", "an .onnx path that does not exist",
        ("prune", "missing.onnx", "--flops", "0.5", "-o", "out.onnx"), "'missing.onnx': no such file"),
    Row("text_as_onnx", "files", "a text file named .onnx", ("prune", "notes.onnx", "--flops", "0.5", "-o", "out.onnx"),
        "notes.onnx"),
    Row("empty_onnx", "files", "an empty .onnx file", ("prune", "empty.onnx", "--flops", "0.5", "-o", "out.onnx"),
        "empty.onnx"),
    Row("truncated_onnx", "files", "an .onnx file cut in half",
        ("prune", "truncated.onnx", "--flops", "0.5", "-o", "out.onnx"), "truncated.onnx"),
    Row("directory_onnx", "files", "a directory named .onnx",
        ("prune", "folder.onnx", "--flops", "0.5", "-o", "out.onnx"), "folder.onnx"),
    Row("onnx_to_pt", "files", "an ONNX source written as .pt", ("prune", "good.onnx", "--flops", "0.5", "-o", "out.pt"),
        "an ONNX model is written as .onnx"),
    Row("output_suffix", "files", "an output name that is neither .pt nor .onnx", (*P, "--flops", "0.5", "-o", "out.txt"),
        "use a .pt or .onnx file name"),
    Row("unknown_model", "files", "a source that is no built-in name, module:factory or .onnx",
        ("prune", "resnet9000", "--flops", "0.5", *OUT), "unknown model 'resnet9000'"),
    Row("import_fails", "files", "module:factory whose module does not import",
        ("prune", "no_such_module:good", "--flops", "0.5", *OUT), "cannot import 'no_such_module'"),
    Row("factory_missing", "files", "module:factory naming something not callable",
        ("prune", "factories:nothing", "--flops", "0.5", *OUT), "factories has no callable 'nothing'"),
    Row("factory_raises", "files", "a factory that raises", ("prune", "factories:raises", "--flops", "0.5", *OUT),
        "the factory raised RuntimeError: no weights here"),
    Row("checkpoint_no_config", "files", "a checkpoint directory without config.json",
        ("prune", "ckpt_no_config", "--flops", "0.5", "-o", "out_dir"), "ckpt_no_config: no config.json"),
    Row("checkpoint_missing_shard", "files", "a checkpoint directory with a shard missing",
        ("prune", "ckpt_missing_shard", "--flops", "0.5", "-o", "out_dir"), "listed in model.safetensors.index.json is missing"),
    Row("checkpoint_float64", "files", "a checkpoint directory in an unsupported dtype (float64)",
        ("prune", "ckpt_float64", "--flops", "0.5", "-o", "out_dir"), "has dtype F64"),
    Row("checkpoint_to_pt", "files", "a checkpoint directory written as a .pt file",
        ("prune", "ckpt", "--flops", "0.5", "-o", "out.pt"), "is written as a directory"),
    Row("factory_not_pair", "files", "a factory that returns a module alone",
        ("prune", "factories:not_a_pair", "--flops", "0.5", *OUT), "must return (model, example_inputs)"),
    # -- budgets -----------------------------------------------------------------------------------
    Row("flops_zero", "budgets", "--flops 0", (*P, "--flops", "0", *OUT), "0 is out of range"),
    Row("flops_above_one", "budgets", "--flops 1.5", (*P, "--flops", "1.5", *OUT), "1.5 is out of range"),
    Row("flops_text", "budgets", "--flops half", (*P, "--flops", "half", *OUT), "'half' is not a number"),
    Row("two_budgets", "budgets", "--flops and --params together", (*P, "--flops", "0.5", "--params", "0.5", *OUT),
        "not allowed with argument"),
    Row("no_budget", "budgets", "no budget at all", (*P, *OUT),
        "one of the arguments --flops --macs --params --latency --speedup --latency-ms is required"),
    Row("speedup_below_one", "budgets", "--speedup 0.5", (*P, "--speedup", "0.5", *OUT), "must be > 1"),
    Row("latency_ms_negative", "budgets", "--latency-ms -1", (*P, "--latency-ms", "-1", *OUT), "must be > 0"),
    # -- options -----------------------------------------------------------------------------------
    Row("criterion_unknown", "options", "--criterion that does not exist", (*P, "--flops", "0.5", "--criterion", "nope", *OUT),
        "nope"),
    Row("reconstruct_unknown", "options", "--reconstruct that does not exist",
        (*P, "--flops", "0.5", "--reconstruct", "nope", *OUT), "reconstruct='nope' is unknown"),
    Row("steps_zero", "options", "--steps 0", (*P, "--flops", "0.5", "--steps", "0", *OUT), "steps=0 must be an integer >= 1"),
    Row("round_to_zero", "options", "--round-to 0", (*P, "--flops", "0.5", "--round-to", "0", *OUT), "--round-to: 0 must be an integer >= 1"),
    Row("threads_zero", "options", "--threads 0", (*P, "--speedup", "2", "--threads", "0", *OUT), "0 must be >= 1"),
    Row("runtime_unknown", "options", "--runtime that does not exist", (*P, "--speedup", "2", "--runtime", "tpu", *OUT),
        "invalid choice: 'tpu'"),
    Row("depth_not_greedy", "options", "--depth with --allocation uniform",
        (*P, "--flops", "0.5", "--depth", "--allocation", "uniform", *OUT), "depth=True needs allocation='greedy'"),
    Row("pipeline_unknown_pass", "options", "--pipeline naming a pass that does not exist",
        (*P, "--flops", "0.5", "--pipeline", "couple,bogus", *OUT), "unknown pass 'bogus'"),
    Row("pipeline_bad_value", "options", "--pipeline with an option value of the wrong type",
        (*P, "--flops", "0.5", "--pipeline", "couple,score,allocate{flops=lots},rewrite,verify", *OUT), "cannot read 'lots' as float"),
    Row("pipeline_unknown_option", "options", "--pipeline with an option the pass does not have",
        (*P, "--flops", "0.5", "--pipeline", "couple,verify{colour=red}", *OUT), "has no option 'colour=red'"),
    Row("pipeline_incomplete", "options", "--pipeline that never rewrites", (*P, "--flops", "0.5", "--pipeline", "couple,score", *OUT),
        "did not produce a model"),
    Row("pipeline_without_budget", "options", "--pipeline whose allocate pass has no budget (and no budget flag)",
        (*P, "--pipeline", "couple,score,allocate,rewrite,verify", *OUT), "give exactly one budget"),
    Row("input_shape_syntax", "options", "--input-shape without NAME=",
        ("prune", "good.onnx", "--flops", "0.5", "--input-shape", "1,3,8,8", "-o", "out.onnx"), "use NAME=D0,D1,..."),
    Row("input_shape_unknown", "options", "--input-shape for an input the model does not have",
        ("prune", "good.onnx", "--flops", "0.5", "--input-shape", "nope=1,3,8,8", "-o", "out.onnx"), "nope"),
    # -- models that fail to export / capture ----------------------------------------------------------
    Row("data_dependent_control_flow", "models",
        "forward branches on tensor values and has no sub-module torch.export can capture",
        ("prune", "factories:data_dependent", "--flops", "0.5", *OUT), "torch.export could not capture DataDependent"),
    Row("example_inputs_wrong_shape", "models", "example inputs the model cannot run",
        ("prune", "factories:wrong_inputs", "--flops", "0.5", *OUT), "could not capture Conv2d: Given groups=1"),
    # -- calibration sets ----------------------------------------------------------------------------------
    Row("calib_missing", "calibration", "--calib file that does not exist",
        (*P, "--flops", "0.5", "--criterion", "wanda", "--calib", "nothing.pt", *OUT), "--calib nothing.pt: no such file"),
    Row("calib_suffix", "calibration", "--calib file that is neither .pt nor .npz",
        (*P, "--flops", "0.5", "--criterion", "wanda", "--calib", "calib.txt", *OUT), "use a .pt or .npz file"),
    Row("calib_corrupt", "calibration", "--calib .pt that is not a torch file",
        (*P, "--flops", "0.5", "--criterion", "wanda", "--calib", "notes.pt", *OUT),
        "--calib notes.pt: cannot read it as a torch.save file of tensors (UnpicklingError); is it truncated"),
    Row("calib_wrong_shape", "calibration", "--calib batches whose shape differs from the example inputs",
        (*P, "--flops", "0.5", "--criterion", "wanda", "--calib", "calib_wrong_channels.pt", *OUT), "calib"),
    Row("calib_not_tensors", "calibration", "--calib file holding no tensors",
        (*P, "--flops", "0.5", "--criterion", "wanda", "--calib", "calib_not_tensors.pt", *OUT), "calib_not_tensors.pt"),
    Row("calib_ids_outside_vocab", "calibration", "--calib token ids outside a checkpoint's vocabulary",
        ("prune", "ckpt", "--flops", "0.5", "--calib", "ids_out_of_vocab.pt", "-o", "out_dir"),
        "token id 50 is outside the vocabulary [0, 50)"),
    Row("calib_for_onnx", "calibration", "--reconstruct with an .onnx source",
        ("prune", "good.onnx", "--flops", "0.5", "--reconstruct", "bias", "-o", "out.onnx"), "need the PyTorch model"),
)

# one process runs every row (a Python with torch per row costs seconds); fd 2 is redirected per
# row so everything printed to stderr is caught, and an exception escaping main() prints the
# traceback ``python -m graphprune.cli`` would show (status 1)
_LAUNCHER = r"""
import json, os, sys, traceback
from graphprune.cli import main
results = {}
for key, argv, errpath in json.loads(sys.argv[1]):
    fd = os.open(errpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            rc = 1
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
    results[key] = rc
print(json.dumps(results))
"""


def run_rows(rows: tuple[Row, ...], work: Path) -> dict[str, tuple[int, str, list[str]]]:
    """Run every row in ``work`` (which must hold make_files' files): id -> (status, stderr, new files)."""
    logs = work / "_logs"
    logs.mkdir(exist_ok=True)
    before = {p.name for p in work.iterdir()}
    jobs = [(r.id, list(r.argv), str(logs / f"{r.id}.stderr")) for r in rows]
    env = {**os.environ, "COLUMNS": "400", "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", _LAUNCHER, json.dumps(jobs)], cwd=work, env=env, capture_output=True,
                       text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"the CLI launcher crashed:\n{p.stderr[-3000:]}")
    codes = json.loads(p.stdout.strip().splitlines()[-1])
    after = sorted({q.name for q in work.iterdir()} - before - {"__pycache__"})
    return {r.id: (codes[r.id], (logs / f"{r.id}.stderr").read_text().replace(str(work), "."), after) for r in rows}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _cmd(row: Row) -> str:
    return "graphprune " + " ".join(a if a and " " not in a and "{" not in a else f"'{a}'" for a in row.argv)


def render(results: dict[str, tuple[int, str, list[str]]]) -> str:
    lines = [
        "# Bad inputs: what graphprune says",
        "",
        "Generated by `python tools/bad_input_matrix.py` from the table in that file; each row is also a",
        "case of `tests/unit/test_bad_input_matrix.py` (exit status, exactly one `graphprune: error:` line",
        "containing the expected text, no traceback, no file written). The files the rows name (bad",
        "models, `factories.py` with model factories, calibration files) are made by `make_files`.",
        "A row marked **Known issue** is a defect owned by another part of the code: its test checks the",
        "exit status, the absence of a traceback and of any written file, and that the LAST line is the",
        "message shown.",
        "",
    ]
    for cat in dict.fromkeys(r.category for r in ROWS):
        lines += [f"## {cat}", "", "| input | command | exit | message |", "|---|---|---|---|"]
        for r in ROWS:
            if r.category != cat:
                continue
            status, err, _ = results[r.id]
            last = (error_lines(err) or [""])[-1]
            msg = last.replace("|", "\\|") + (f" **Known issue:** {r.known_issue}" if r.known_issue else "")
            lines.append(f"| {r.what} | `{_cmd(r)}` | {status} | {msg} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the document is out of date")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_files(work)
        text = render(run_rows(ROWS, work))
    if args.check:
        same = DOC.exists() and DOC.read_text() == text
        print("docs/BAD_INPUT.md is " + ("up to date" if same else "out of date: run tools/bad_input_matrix.py"))
        return 0 if same else 1
    DOC.write_text(text)
    print(f"wrote {DOC} ({len(ROWS)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
