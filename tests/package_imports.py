"""The drn_jax package's imports, read with ``ast`` (never imported): every module's imports at any
depth, split into the package's own and third-party ones. tests/test_import_graph.py checks
their graph, tests/test_dependencies.py maps the third-party ones to distributions."""

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


def walk_imports(node: ast.AST, in_function: bool = False, type_checking: bool = False):
    """Yields (node, in_function, type_checking) for every node below ``node``."""
    for child in ast.iter_child_nodes(node):
        child_in_function = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield child, in_function, type_checking
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, in_function, True
                yield from walk_imports(stmt, child_in_function, True)
            for stmt in child.orelse:
                yield stmt, in_function, type_checking
                yield from walk_imports(stmt, child_in_function, type_checking)
            continue
        yield from walk_imports(child, child_in_function, type_checking)


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
        for node, in_function, type_checking in walk_imports(tree):
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
