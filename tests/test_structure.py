"""The package's shape, checked so it does not drift: no import cycle, short functions and modules, public shared names.

Imports are read from the syntax tree, inside functions too (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("captioner", "workers")
MAX_FUNCTION_LINES = 80  # a CLI command's option declarations do not count: its body does
MAX_MODULE_LINES = 450
# Modules that are mostly data tables (vocabulary, column lists), allowed past MAX_MODULE_LINES.
DATA_TABLES: set[str] = set()


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def imported(module: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
    """(project module, imported name or None) for each name `node` imports; others' modules are left out."""
    if isinstance(node, ast.Import):
        targets = [(alias.name, None) for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        targets = []
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            targets.append((submodule, None) if submodule in MODULES else (base, alias.name))
    resolved = []
    for target, name in targets:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != module:
            resolved.append((target, name))
    return resolved


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its file."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(target for target, _ in imported(name, node))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_counting_imports_inside_functions():
    assert cycles(import_graph()) == []


def test_the_library_never_imports_the_deployment_entry_point():
    graph = import_graph()
    assert [name for name, targets in graph.items() if name.startswith("captioner") and any(
        t.startswith("workers") for t in targets)] == []  # fmt: skip


def test_no_underscore_name_is_imported_across_modules():
    shared = [
        f"{name} imports {target}.{imported_name}"
        for name, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for target, imported_name in imported(name, node)
        if imported_name and imported_name.startswith("_") and not imported_name.startswith("__")
    ]
    assert shared == []


def is_cli_command(node: ast.FunctionDef) -> bool:
    """A Typer command (`@app.command(...)`): its signature is option declarations."""
    return any("command" in ast.unparse(decorator) for decorator in node.decorator_list)


def function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of the function; of its body only for a CLI command."""
    start = node.body[0].lineno if is_cli_command(node) else node.lineno
    return node.end_lineno - start + 1


@pytest.mark.parametrize("limit", [MAX_FUNCTION_LINES])
def test_no_long_function(limit):
    long = [
        f"{name}.{node.name}: {function_lines(node)} lines"
        for name, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and function_lines(node) > limit
    ]
    assert long == []


def test_no_long_module():
    long = [
        f"{name}: {len(path.read_text(encoding='utf-8').splitlines())} lines"
        for name, path in MODULES.items()
        if name not in DATA_TABLES and len(path.read_text(encoding="utf-8").splitlines()) > MAX_MODULE_LINES
    ]
    assert long == []


def test_every_error_a_person_can_fix_shares_one_base():
    from captioner.errors import CaptionerError

    bases = {
        f"{name}.{node.name}"
        for name, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and not node.name.startswith("_")
        and node.name != CaptionerError.__name__
        and any(ast.unparse(base) in ("Exception", "ValueError", "RuntimeError") for base in node.bases)
        and not any(
            ast.unparse(base).endswith("Error") and ast.unparse(base) not in ("ValueError", "RuntimeError")
            for base in node.bases
        )
    }
    assert bases == set(), f"derive these from {CaptionerError.__name__}"
