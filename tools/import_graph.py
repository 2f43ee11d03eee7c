"""Import graph of a package: which module imports which, the cycles, and the lines per package.

Reads the source with :mod:`ast` only (nothing is imported or run), so it works on any checkout::

    python tools/import_graph.py                      # text, src/skinlesion
    python tools/import_graph.py --format json
    python tools/import_graph.py --src /tmp/old/src   # another tree (e.g. ``git archive REV src``)

Every ``import``/``from ... import`` between modules of the package is an edge, tagged by where it
sits: ``top`` (runs when the module is imported), ``function`` (inside a function or method body:
runs when called, still a dependency) or ``type-checking`` (under ``if TYPE_CHECKING:``, never
runs). ``from pkg import name`` points at ``pkg/name.py`` when that module exists, else at
``pkg/__init__.py``. Cycles are the strongly connected components (Tarjan) of the module graph
counting every edge, listed with the edges that close them; a second list does the same one level
up, between sub-packages (``skinlesion.data``, ``skinlesion.metrics``, ...; a top-level module is
its own node). Exit status 1 when ``--fail-on-cycles`` is given and a module cycle exists.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

KINDS = ("top", "function", "type-checking")


@dataclass(frozen=True)
class Edge:
    """One import statement from ``source`` to ``target`` (module names)."""

    source: str
    target: str
    line: int
    kind: str  # one of KINDS


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Map dotted module names to their files (``pkg/__init__.py`` is ``pkg``)."""
    root = src / package
    if not root.is_dir():
        raise SystemExit(f"No package folder {root}: pass --src and --package.")
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import node with its kind (top / function / type-checking)."""
    found: list[tuple[ast.Import | ast.ImportFrom, str]] = []

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, kind))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, "function" if kind == "top" else kind)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), "type-checking")
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), kind)
            else:
                visit(child, kind)

    visit(tree, "top")
    return found


def _resolve_base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _deepest(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def collect_edges(modules: dict[str, Path]) -> list[Edge]:
    """All import edges between modules of the package, self-imports dropped."""
    edges: list[Edge] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, kind in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve_base(module, is_package, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for name in targets:
                target = _deepest(name, modules)
                if target is not None and target != module:
                    edges.append(Edge(module, target, node.lineno, kind))
    return sorted(set(edges), key=lambda e: (e.source, e.target, e.line))


def sccs(nodes: list[str], adjacency: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(adjacency.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(adjacency.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return sorted(result)


def package_of(module: str) -> str:
    """The sub-package a module belongs to (``root.data``), or the top-level module itself."""
    return ".".join(module.split(".")[:2])


def _cycle_report(components: list[list[str]], edges: list[tuple[str, str, str]]) -> list[dict]:
    report = []
    for component in components:
        members = set(component)
        inside = sorted({e for e in edges if e[0] in members and e[1] in members})
        report.append({"members": component, "edges": [list(e) for e in inside]})
    return report


def analyse(src: Path, package: str) -> dict:
    """The whole report as plain data (what ``--format json`` prints)."""
    modules = module_files(src, package)
    edges = collect_edges(modules)
    runtime = [e for e in edges if e.kind != "type-checking"]

    adjacency: dict[str, set[str]] = defaultdict(set)
    for e in runtime:
        adjacency[e.source].add(e.target)
    module_cycles = _cycle_report(
        sccs(sorted(modules), adjacency),
        [(e.source, e.target, f"{e.kind}:{e.line}") for e in runtime],
    )

    packages = {m: package_of(m) for m in modules}
    pkg_edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for e in runtime:
        a, b = packages[e.source], packages[e.target]
        if a != b:
            pkg_edges[(a, b)].add(e.kind)
    pkg_adjacency: dict[str, set[str]] = defaultdict(set)
    for a, b in pkg_edges:
        pkg_adjacency[a].add(b)
    pkg_nodes = sorted(set(packages.values()))
    package_cycles = _cycle_report(
        sccs(pkg_nodes, pkg_adjacency),
        [(a, b, "+".join(sorted(k))) for (a, b), k in pkg_edges.items()],
    )

    lines: dict[str, int] = defaultdict(int)
    files: dict[str, int] = defaultdict(int)
    module_lines = {}
    for module, path in modules.items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        module_lines[module] = n
        lines[packages[module]] += n
        files[packages[module]] += 1

    return {
        "package": package,
        "modules": len(modules),
        "lines": sum(module_lines.values()),
        "packages": {
            p: {
                "files": files[p],
                "lines": lines[p],
                "imports": sorted(b for (a, b) in pkg_edges if a == p),
            }
            for p in pkg_nodes
        },
        "module_lines": module_lines,
        "edges": [asdict(e) for e in edges],
        "module_cycles": module_cycles,
        "package_cycles": package_cycles,
    }


def _short(name: str, package: str) -> str:
    return name[len(package) + 1 :] if name.startswith(package + ".") else name


def render_text(report: dict) -> str:
    """Human-readable summary: packages with lines and imports, then the cycles."""
    pkg = report["package"]
    s = lambda name: _short(name, pkg)  # noqa: E731
    out = [f"{pkg}: {report['modules']} modules, {report['lines']} lines", ""]
    out.append("Packages (files, lines) -> sub-packages/modules they import")
    for name, info in report["packages"].items():
        imports = ", ".join(s(i) for i in info["imports"]) or "-"
        out.append(f"  {s(name):<28} {info['files']:>3} files {info['lines']:>6} lines -> {imports}")
    out.append("")
    out.append("Module import graph (kind:line; kind is top, function or type-checking)")
    by_source: dict[str, list[dict]] = defaultdict(list)
    for e in report["edges"]:
        by_source[e["source"]].append(e)
    for source in sorted(by_source):
        targets = ", ".join(
            f"{s(e['target'])}" + ("" if e["kind"] == "top" else f" [{e['kind']}:{e['line']}]")
            for e in by_source[source]
        )
        out.append(f"  {s(source)} -> {targets}")
    for title, key in (("Module cycles", "module_cycles"), ("Package cycles", "package_cycles")):
        cycles = report[key]
        out.append("")
        out.append(f"{title} (strongly connected components, function-level imports counted): {len(cycles)}")
        for i, cycle in enumerate(cycles, 1):
            out.append(f"  {i}. " + " <-> ".join(s(m) for m in cycle["members"]))
            for source, target, how in cycle["edges"]:
                out.append(f"       {s(source)} -> {s(target)}  ({how})")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--package", default="skinlesion")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--fail-on-cycles", action="store_true")
    args = parser.parse_args(argv)
    report = analyse(args.src, args.package)
    if args.format == "json":
        sys.stdout.write(json.dumps(report, indent=1) + "\n")
    else:
        sys.stdout.write(render_text(report))
    return 1 if args.fail_on_cycles and report["module_cycles"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
