"""tools/import_graph.py: edges by kind, cycles (function-level imports counted), and the package's own graph."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "import_graph.py"


def _graph(*args: str) -> dict:
    out = subprocess.run([sys.executable, str(TOOL), "--format", "json", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_cycles_edges_and_kinds(tmp_path: Path) -> None:
    pkg = tmp_path / "src" / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.a import f\n")
    (pkg / "sub" / "a.py").write_text("from . import b\n\ndef f():\n    return b\n")
    (pkg / "sub" / "b.py").write_text("def g():\n    from pkg.sub.a import f\n    return f\n")  # closes a cycle
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nfrom pkg.sub import a\nif TYPE_CHECKING:\n    from pkg import d\n"
    )
    (pkg / "d.py").write_text("import pkg.c\n")  # a cycle only through a type-checking import: none
    report = _graph("--src", str(tmp_path / "src"), "--package", "pkg")
    kinds = {(e["source"], e["target"]): e["kind"] for e in report["edges"]}
    assert kinds[("pkg.sub.a", "pkg.sub.b")] == "top" and kinds[("pkg.sub.b", "pkg.sub.a")] == "function"
    assert kinds[("pkg.c", "pkg.d")] == "type-checking" and kinds[("pkg.sub", "pkg.sub.a")] == "top"
    assert [c["members"] for c in report["module_cycles"]] == [["pkg.sub.a", "pkg.sub.b"]]
    assert ["pkg.sub.b", "pkg.sub.a", "function:2"] in report["module_cycles"][0]["edges"]
    assert report["package_cycles"] == []  # c -> sub only; d -> c is within no cycle
    assert report["packages"]["pkg.sub"] == {"files": 3, "lines": 8, "imports": []}
    assert subprocess.run([sys.executable, str(TOOL), "--src", str(tmp_path / "src"), "--package", "pkg",
                           "--fail-on-cycles"], capture_output=True).returncode == 1


def test_skinlesion_imports_point_down_outside_the_known_delivery_explain_cycle() -> None:
    report = _graph()
    known = {"skinlesion.delivery.engine", "skinlesion.explain.pipeline"}  # being untangled separately
    assert all(set(c["members"]) <= known for c in report["module_cycles"]), report["module_cycles"]
    assert report["package_cycles"] == [], report["package_cycles"]  # e.g. inference -> ensemble -> train -> inference
