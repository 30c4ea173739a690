"""The package's shape: imports point one way (no cycle, none hidden in a function), and
files and functions stay small. Read from the source with ast; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lapsv"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The lapsv modules an import statement names (the deepest existing module of each)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if MODULES[module].name != "__init__.py":
                package = package[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("lapsv") and name != module:
            found.append(name)
    return found


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    """module -> the lapsv modules it imports (anywhere in it), and the imports of lapsv
    modules made inside a function (``file:line module``)."""
    edges: dict[str, set[str]] = {}
    hidden: list[str] = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        edges[module] = set()
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    hidden += [f"{path.name}:{node.lineno} {t}" for t in _imported(module, node)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _imported(module, node):
                    # a submodule importing its own package's __init__ is Python's doing
                    if not module.startswith(target + "."):
                        edges[module].add(target)
    return edges, hidden


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return components


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_lapsv_modules():
    edges, _ = _graph()
    assert len(edges) > 50 and "lapsv.speaker" in edges["lapsv.scoring.evaluate"]
    assert _cycles(edges) == []


def test_no_lapsv_import_inside_a_function():
    """Lazy imports are only for heavy third-party packages (transformers, onnxruntime,
    matplotlib); an import of lapsv inside a function would hide a cycle."""
    _, hidden = _graph()
    assert hidden == []


def test_the_model_core_does_not_import_the_layers_above_it():
    edges, _ = _graph()
    above = {"lapsv.speaker", "lapsv.cli", "lapsv.demo", "lapsv.training", "lapsv.identification"}
    for module in ("lapsv.model", "lapsv.modeldir", "lapsv.backend", "lapsv.inference"):
        reach, todo = set(), [module]
        while todo:
            for target in edges[todo.pop()] - reach:
                reach.add(target)
                todo.append(target)
        assert not any(m.startswith(tuple(above)) for m in reach), (module, sorted(reach))


@pytest.mark.parametrize("path", sorted(MODULES.values()), ids=lambda p: p.name)
def test_files_and_functions_are_small(path):
    source = path.read_text()
    assert source.count("\n") <= 500
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno - node.lineno + 1 <= 80, f"{path.name}: {node.name}"
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            assert node.end_lineno - node.lineno + 1 <= 300
