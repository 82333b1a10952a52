"""The package's shape: imports go one way (no cycle, counting imports inside functions),
docs/architecture.md lists exactly the modules there are, and `budgetnet --help` does not
import torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import budgetnet

PACKAGE = Path(budgetnet.__file__).parent
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package at `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, package: str, known: set[str]) -> set[str]:
    """Modules of `package` that `tree` imports anywhere (module level or in functions),
    leaving out `if TYPE_CHECKING:` blocks, which never run."""
    found: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from pkg import sub` imports the submodule pkg.sub as well.
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
        pending.extend(ast.iter_child_nodes(node))
    return {name for name in found if name == package or name.startswith(package + ".")}


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules that importing it runs. Importing a.b.c runs the packages a and
    a.b first, so those are edges too, except for the importer's own packages (already
    running by then)."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own = {name, *_ancestors(name)}
        edges: set[str] = set()
        for target in _imported(ast.parse(path.read_text(), str(path)), root.name, set(modules)):
            assert target in modules, f"{name} imports {target}, which is not a module of {root.name}"
            edges.update(t for t in (*_ancestors(target), target) if t not in own)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 30 and graph["budgetnet.train.engine"] >= {"budgetnet.config", "budgetnet.evaluate"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


def test_the_cycle_check_sees_imports_in_functions_and_through_packages(tmp_path: Path) -> None:
    in_function = _write(tmp_path / "a", {
        "pkg/__init__.py": "",
        "pkg/low.py": "def f():\n    from pkg.high import g\n",
        "pkg/high.py": "from pkg.low import f\n",
    })
    assert find_cycle(import_graph(in_function)) == ["pkg.high", "pkg.low", "pkg.high"]
    # sub/__init__ imports top, so importing sub.leaf from top runs top again.
    through_package = _write(tmp_path / "b", {
        "pkg/__init__.py": "",
        "pkg/top.py": "from pkg.sub.leaf import x\n",
        "pkg/sub/__init__.py": "from pkg.top import y\n",
        "pkg/sub/leaf.py": "x = 1\n",
    })
    assert find_cycle(import_graph(through_package)) == ["pkg.sub", "pkg.top", "pkg.sub"]
    type_only = _write(tmp_path / "c", {
        "pkg/__init__.py": "",
        "pkg/low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import g\n",
        "pkg/high.py": "from pkg.low import f\n",
    })
    assert find_cycle(import_graph(type_only)) is None


def documented_modules(text: str) -> set[str]:
    """Module paths (relative to src/budgetnet) in the first column of the doc's tables."""
    found: set[str] = set()
    for line in text.splitlines():
        if line.startswith("|"):
            found.update(re.findall(r"`([\w/]+\.py)`", line.split("|")[1]))
    return found


def test_the_architecture_doc_lists_every_module_and_only_those() -> None:
    documented = documented_modules(ARCHITECTURE.read_text())
    actual = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    assert not documented - actual, f"docs/architecture.md lists modules that do not exist: {sorted(documented - actual)}"
    assert not actual - documented, f"modules missing from docs/architecture.md: {sorted(actual - documented)}"


@pytest.mark.parametrize("argv", [["--help"], ["zoo", "--help"], ["train", "--help"]])
def test_help_does_not_import_torch(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "budgetnet", *argv],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Usage:" in proc.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "budgetnet.cli" in imported  # the import log is read right
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
