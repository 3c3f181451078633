"""The package's layers import downward only, and its import graph has no cycle.

Every import statement is read (at the top of a module and inside functions alike): the library
(``monteclora_pyro/*.py``, ``priors/``, ``guides/``, ``models/``) imports nothing above it; the runner
(``runner/``) imports the library; the task families (``tasks/<family>/``) import the runner and the
library, never each other; the benchmarks (``benchmarks/``) anything below them; the command lines
(``commands/``) anything in the package; the scripts (``experiments/``, ``benchmarks/*.py``) anything.
No module of the package imports the package's facade (``monteclora_pyro/__init__.py``, whose public names load lazily).

What is imported by name at run time is not an import statement and is not read: the facade's lazy
exports (checked below to come from the library and the runner) and the plugin discovery of
``priors/`` and ``guides/``, whose ``__init__`` imports every module of its folder (a family's module
imports the declarations, which look the family up in that registry).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

import monteclora_pyro

PACKAGE = "monteclora_pyro"
LAYERS = ("library", "runner", "tasks", "benchmarks", "commands", "scripts")


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    if relative.parts[0] != PACKAGE:
        return "/".join(relative.parts)  # a script
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def layer(module: str) -> str:
    if not module.startswith(PACKAGE):
        return "scripts"
    parts = module.split(".")
    return {"runner": "runner", "tasks": "tasks", "benchmarks": "benchmarks", "commands": "commands"}.get(
        parts[1] if len(parts) > 1 else "", "library")


def sources() -> dict[str, Path]:
    files = [*(REPO / PACKAGE).rglob("*.py"), *(REPO / "experiments").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]
    return {module_name(path): path for path in files if "__pycache__" not in path.parts}


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``module`` imports, wherever the statement stands."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # ``from package import submodule`` imports the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name.split(".")[0] == PACKAGE}


def graph() -> dict[str, set[str]]:
    files = sources()
    known = set(files)
    return {module: imports(module, path, known) for module, path in files.items()}


def test_every_import_points_down_or_sideways():
    edges = graph()
    assert len(edges) > 40 and sum(map(len, edges.values())) > 100  # the reader finds the package's imports
    upward = [f"{a} ({layer(a)}) -> {b} ({layer(b)})" for a, targets in edges.items() for b in targets
              if LAYERS.index(layer(b)) > LAYERS.index(layer(a))]
    assert upward == []
    facade = [a for a, targets in edges.items() if PACKAGE in targets and layer(a) != "scripts"]
    assert facade == []
    family = [f"{a} -> {b}" for a, targets in edges.items() for b in targets
              if layer(a) == layer(b) == "tasks" and a.split(".")[2] != b.split(".")[2]]
    assert family == []  # task families are independent of each other


def test_the_import_graph_has_no_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_facade_exports_from_the_library_and_the_runner():
    layers = {layer(f"{PACKAGE}.{module}") for module in monteclora_pyro._EXPORTS}
    assert layers <= {"library", "runner"}
    for name in monteclora_pyro.__all__:
        assert getattr(monteclora_pyro, name) is not None


def test_the_reader_sees_imports_inside_functions_and_relative_ones():
    """The checks above would miss an upward import if the reader did: it finds a deferred one."""
    edges = graph()
    assert "monteclora_pyro.runner.pipeline" in edges["monteclora_pyro.commands.glue"]  # imported inside main()
    assert "monteclora_pyro.commands.glue" in edges["experiments/svi_glue"]
    assert "monteclora_pyro.priors" in edges["monteclora_pyro.declarations"]  # inside a function, by name
    assert "monteclora_pyro.benchmarks.step_time" in edges["monteclora_pyro.benchmarks.scaling"]  # from . import
