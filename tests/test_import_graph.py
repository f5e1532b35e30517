"""The drn_jax package's import structure: no import cycles, no hidden (function-level) imports.

Every module of the package is parsed (not imported) with ``ast``; every import of a drn_jax
module at any depth (module level, inside functions, classes and conditionals; absolute and
relative) is an edge of the graph. Only imports under ``if TYPE_CHECKING:`` are left out of the
graph: they never run.

* The graph has no cycle: a cycle means some module only works through a deferred import.
* drn_jax modules are imported at module top level only, never inside a function, so that
  what a module depends on is visible at its top and import errors surface at import time.
* Inside functions, only the standard library and the few slow or optional third-party
  packages of ``DEFERRED_THIRD_PARTY`` may be imported.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import pkgutil
import sys

import drn_jax

PACKAGE = "drn_jax"
# Third-party packages (or modules of them) that may be imported inside functions: slow to import
# (TensorFlow and TFDS for the input pipeline, Matplotlib for plots), only needed by one command
# (tqdm), or optional, for the export formats that use them (jax2tf, which imports TensorFlow;
# jax2onnx, onnx and onnxruntime from the `export` extra).
DEFERRED_THIRD_PARTY = frozenset({"tensorflow", "tensorflow_datasets", "matplotlib", "tqdm",
                                  "jax.experimental.jax2tf", "jax2onnx", "onnx", "onnxruntime"})


def is_deferred(name: str) -> bool:
    """Whether the module `name` (dotted) is, or is inside, one of `DEFERRED_THIRD_PARTY`."""
    return any(name == allowed or name.startswith(allowed + ".") for allowed in DEFERRED_THIRD_PARTY)


@dataclasses.dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module's full name
    file: str
    line: int
    in_function: bool
    type_checking: bool

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def package_modules() -> dict[str, pathlib.Path]:
    """Every module and subpackage of drn_jax (the package itself included) -> its source file.

    ``pkgutil.iter_modules`` folder by folder, which (unlike ``walk_packages``) imports nothing,
    so a subpackage that fails to import is still parsed.
    """
    modules: dict[str, pathlib.Path] = {}

    def visit(name: str, folder: pathlib.Path) -> None:
        modules[name] = folder / "__init__.py"
        for info in pkgutil.iter_modules([str(folder)]):
            full = f"{name}.{info.name}"
            if info.ispkg:
                visit(full, folder / info.name)
            elif (folder / f"{info.name}.py").is_file():
                modules[full] = folder / f"{info.name}.py"

    for folder in drn_jax.__path__:
        visit(PACKAGE, pathlib.Path(folder))
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _walk(node: ast.AST, in_function: bool = False, type_checking: bool = False):
    """Yields (node, in_function, type_checking) for every node below ``node``."""
    for child in ast.iter_child_nodes(node):
        child_in_function = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield child, in_function, type_checking
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, in_function, True
                yield from _walk(stmt, child_in_function, True)
            for stmt in child.orelse:
                yield stmt, in_function, type_checking
                yield from _walk(stmt, child_in_function, type_checking)
            continue
        yield from _walk(child, child_in_function, type_checking)


def collect_imports(modules: dict[str, pathlib.Path]) -> tuple[list[Import], list[tuple[str, str, int, bool]]]:
    """(imports of drn_jax modules, (dotted module name, file, line, in_function) of every other
    import)."""
    root = pathlib.Path(drn_jax.__file__).parent.parent
    internal: list[Import] = []
    external: list[tuple[str, str, int, bool]] = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        file = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        for node, in_function, type_checking in _walk(tree):
            targets: list[str] = []
            others: list[str] = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    (targets if alias.name.split(".")[0] == PACKAGE else others).append(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolved against this module's package
                    package_parts = module.split(".") if is_package else module.split(".")[:-1]
                    base_parts = package_parts[: len(package_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base.split(".")[0] != PACKAGE:
                    # `from a.b import c` may import the module a.b.c: keep the full name.
                    others.extend(f"{base}.{alias.name}" for alias in node.names)
                else:
                    for alias in node.names:
                        # `from drn_jax import x` / `from drn_jax.x import y`: the submodule when
                        # the name is one, else the module the name comes from.
                        candidate = f"{base}.{alias.name}"
                        targets.append(candidate if candidate in modules else base)
            else:
                continue
            for target in targets:
                # `import drn_jax.x.y` imports drn_jax.x.y; an unknown name maps to its package.
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                internal.append(Import(module, target, file, node.lineno, in_function, type_checking))
            for name in others:
                external.append((name, file, node.lineno, in_function))
    return internal, external


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path a -> ... -> a) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def strongconnect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                strongconnect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in index:
            strongconnect(node)

    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        if len(component) == 1 and start not in edges.get(start, ()):
            continue
        # Shortest path from start back to start inside the component (breadth-first).
        previous: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            next_frontier = []
            for node in frontier:
                for succ in sorted(edges.get(node, ())):
                    if succ not in members:
                        continue
                    if succ == start:
                        found = node
                        break
                    if succ not in previous:
                        previous[succ] = node
                        next_frontier.append(succ)
                if found is not None:
                    break
            frontier = next_frontier
        path = [start]
        node = found
        while node != start:
            path.append(node)
            node = previous[node]
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


def runtime_graph(internal: list[Import]) -> tuple[dict[str, set[str]], dict[tuple[str, str], Import]]:
    edges: dict[str, set[str]] = {}
    where: dict[tuple[str, str], Import] = {}
    for imp in internal:
        if imp.type_checking or imp.target == imp.source:
            continue
        edges.setdefault(imp.source, set()).add(imp.target)
        where.setdefault((imp.source, imp.target), imp)
    return edges, where


# ----------------------------------------------------------------------------------------------
# The checks of the helpers themselves
# ----------------------------------------------------------------------------------------------


def test_cycle_finder_reports_a_closed_path():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    cycles = find_cycles(edges)
    assert sorted(cycles) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_walk_sees_imports_at_every_depth():
    tree = ast.parse(
        "import os\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from drn_jax import models\n"
        "class C:\n    import json\n    def m(self):\n        from drn_jax import losses\n"
        "def f():\n    if True:\n        def g():\n            import drn_jax.training\n"
    )
    found = {(ast.unparse(node), in_function, type_checking)
             for node, in_function, type_checking in _walk(tree)
             if isinstance(node, (ast.Import, ast.ImportFrom))}
    assert found == {
        ("import os", False, False),
        ("from typing import TYPE_CHECKING", False, False),
        ("from drn_jax import models", False, True),
        ("import json", False, False),
        ("from drn_jax import losses", True, False),
        ("import drn_jax.training", True, False),
    }


def test_the_package_is_found_and_parsed():
    modules = package_modules()
    walked = {info.name for info in pkgutil.walk_packages(drn_jax.__path__, prefix=f"{PACKAGE}.")}
    assert walked <= set(modules), sorted(walked - set(modules))
    assert {"drn_jax.models", "drn_jax.losses", "drn_jax.training"} <= set(modules)
    internal, _ = collect_imports(modules)
    assert any(imp.target == "drn_jax.models" for imp in internal)  # e.g. training -> models


# ----------------------------------------------------------------------------------------------
# The package
# ----------------------------------------------------------------------------------------------


def test_no_import_cycles():
    internal, _ = collect_imports(package_modules())
    edges, where = runtime_graph(internal)
    cycles = find_cycles(edges)
    if cycles:
        lines = []
        for cycle in cycles:
            hops = [f"{a} -> {b} ({where[a, b].where()}{', in a function' if where[a, b].in_function else ''})"
                    for a, b in zip(cycle, cycle[1:])]
            lines.append(" -> ".join(cycle) + "\n      " + "\n      ".join(hops))
        raise AssertionError(f"{len(cycles)} import cycle(s) among drn_jax modules:\n  " + "\n  ".join(lines))


def test_drn_jax_modules_are_imported_at_module_top_level_only():
    internal, _ = collect_imports(package_modules())
    offending = sorted({(imp.file, imp.line, imp.target) for imp in internal if imp.in_function})
    assert not offending, (f"{len(offending)} import(s) of drn_jax modules inside functions:\n  "
                           + "\n  ".join(f"{file}:{line}: {target}" for file, line, target in offending))


def test_only_allowed_third_party_packages_are_imported_inside_functions():
    _, external = collect_imports(package_modules())
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    offending = sorted({(file, line, name) for name, file, line, in_function in external
                        if in_function and name.split(".")[0] not in stdlib and not is_deferred(name)})
    assert not offending, (
        f"{len(offending)} third-party import(s) inside functions outside the allow-list "
        f"{sorted(DEFERRED_THIRD_PARTY)}:\n  "
        + "\n  ".join(f"{file}:{line}: {name}" for file, line, name in offending))
