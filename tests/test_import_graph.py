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
import pkgutil
import sys

import drn_jax

from package_imports import (DEFERRED_THIRD_PARTY, PACKAGE, Import, walk_imports, collect_imports, is_deferred,
                             package_modules)


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
             for node, in_function, type_checking in walk_imports(tree)
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
