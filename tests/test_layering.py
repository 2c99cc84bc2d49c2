"""The import graph: packages import only the packages below them, and no modules import each other in a circle.

Read from the source with `ast`, over the same scalelab.<name> -> <folder> mapping that pyproject.toml installs,
so a new package or import is checked the moment it is written.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest first: a package may import itself and what stands before it, never what stands after.
LAYERS = (
    "scalelab",
    "scalelab.errors",
    "scalelab.units",
    "scalelab.files",
    "scalelab.configs",
    "scalelab.runtime",
    "scalelab.model",
    "scalelab.parallel",
    "scalelab.data",
    "scalelab.train",
    "scalelab.inference",
    "scalelab.posttrain",
    "scalelab.scaling",
    "scalelab.bench",
    "scalelab.cli",
    "scalelab.__main__",
)


def installed_modules() -> dict[str, Path]:
    """{module name: source file} for every module pyproject.toml installs."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = setuptools["package-dir"]
    modules = {}
    for package in setuptools["packages"]:
        top = max((name for name in folders if package == name or package.startswith(name + ".")), key=len)
        folder = ROOT / folders[top] / package[len(top) :].lstrip(".").replace(".", "/")
        for path in folder.glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def imports(path: Path, modules: dict[str, Path], top_level_only: bool) -> set[str]:
    """The scalelab modules a file imports (at import time only, or anywhere in it)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # statements at module level, including those nested in if/try blocks
        nodes = [
            n for stmt in tree.body for n in ast.walk(stmt) if not isinstance(stmt, ast.FunctionDef | ast.ClassDef)
        ]
    found = set()
    for node in nodes:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            if name in modules:
                found.add(name)
                break
    return found


def layer(module: str) -> int:
    return max(i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + "."))


def test_every_module_imports_only_its_own_layer_or_lower() -> None:
    modules = installed_modules()
    assert "scalelab.model.config" in modules and "scalelab.cli" in modules  # the mapping was read
    upward = [
        f"{module} imports {target}"
        for module, path in modules.items()
        for target in imports(path, modules, top_level_only=False)
        if layer(target) > layer(module)
    ]
    assert upward == []


def test_no_import_cycle_among_modules() -> None:
    modules = installed_modules()
    graph = {module: imports(path, modules, top_level_only=True) - {module} for module, path in modules.items()}
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in graph[node]:
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert cycles == []


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower.py", tmp_path / "upper.py"
    lower.write_text("from scalelab.train import loop\n")
    upper.write_text("import scalelab.model.config\n")
    modules = {"scalelab.model.config": lower, "scalelab.train.loop": upper}
    assert imports(lower, modules, top_level_only=True) == {"scalelab.train.loop"}
    assert layer("scalelab.model.config") < layer("scalelab.train.loop")
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from scalelab.train import loop\n")
    assert imports(lazy, modules, top_level_only=True) == set()
    assert imports(lazy, modules, top_level_only=False) == {"scalelab.train.loop"}
