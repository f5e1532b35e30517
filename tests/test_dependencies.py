"""What drn_jax imports is what pyproject.toml declares: core modules need only core dependencies,
and each optional import belongs to the extra the README names for it.

Every third-party import in ``drn_jax/`` (module level and inside functions, parsed with ``ast``
by test_import_graph's walker, plus ``importlib.util.find_spec("name")`` look-ups) is mapped to
the distributions that provide it with ``importlib.metadata.packages_distributions()``, and
compared with ``[project] dependencies`` and ``[project.optional-dependencies]``.
CI installs ``.[test]``, every extra, so an import that only an extra brings (tqdm came with
tensorflow-datasets) works there; this test fails on it instead (.ci/core_install.sh runs the
commands from a core install).
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import importlib.metadata
import pathlib
import re
import sys
import tomllib

import pytest

from package_imports import PACKAGE, collect_imports, package_modules

REPO = pathlib.Path(__file__).resolve().parents[1]

# The optional imports: module -> {the drn_jax modules that may import it (fnmatch pattern): its
# extra}. The README: "`.[tfds]` adds it [TensorFlow] and TFDS for `tfds:` data sources,
# `.[export]` adds what `drn-export` needs". Anything else drn_jax imports must be a core dependency.
TFDS_MODULES = "drn_jax.data.tfds_*"  # the `tfds:` data source's modules
OPTIONAL_IMPORTS = {
    "tensorflow": {TFDS_MODULES: "tfds", "drn_jax.export": "export"},
    "tensorflow_datasets": {TFDS_MODULES: "tfds"},
    "jax.experimental.jax2tf": {"drn_jax.export": "export"},
    "jax2onnx": {"drn_jax.export": "export"},
    "onnxruntime": {"drn_jax.export": "export"},
}
# jax2tf ships inside jax (core) but runs only with TensorFlow: the module whose distribution
# the extra must bring.
NEEDS = {"jax.experimental.jax2tf": "tensorflow"}
# Imported by a core dependency where drn_jax uses it, without that dependency requiring it: the
# import scan cannot see them (.ci/core_install.sh runs the commands that need them).
INDIRECT_CORE = {"flatbuffers": "jax.export's serialization, for drn-export --format=stablehlo"}
# Where the README names each extra's purpose: (the install text, what it is for).
README_EXTRAS = {"tfds": ('".[tfds]"', "`tfds:` data sources"), "export": ('".[export]"', "`drn-export`")}


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> tuple[str, set[str]]:
    """(normalised distribution name, its extras) of a PEP 508 requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", requirement)
    assert match, requirement
    extras = {normalise(extra) for extra in (match.group(2) or "").split(",") if extra.strip()}
    return normalise(match.group(1)), extras


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """(core distributions, extra -> its distributions, with extras of this package expanded)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    own = normalise(project["name"])
    core = {requirement_name(r)[0] for r in project["dependencies"]}
    raw = {normalise(extra): [requirement_name(r) for r in requirements]
           for extra, requirements in project.get("optional-dependencies", {}).items()}

    def expand(extra: str, seen: frozenset = frozenset()) -> set[str]:
        names: set[str] = set()
        for name, extras in raw[extra]:
            if name == own:
                for inner in extras - seen:
                    names |= expand(inner, seen | {extra})
            else:
                names.add(name)
        return names

    return core, {extra: expand(extra) for extra in raw}


def _find_spec_lookups(modules: dict[str, pathlib.Path]) -> list[tuple[str, str, int, bool]]:
    """``find_spec("x")`` / ``import_module("x")`` calls with a literal name, as imports inside
    functions (they locate or import a package without an import statement)."""
    root = REPO
    found = []
    for path in modules.values():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                    and (getattr(node.func, "attr", None) or getattr(node.func, "id", None))
                    in ("find_spec", "import_module")):
                found.append((node.args[0].value, str(path.relative_to(root)), node.lineno, True))
    return found


def third_party_imports() -> list[tuple[str, str, str, int, bool]]:
    """(imported module, importing drn_jax module, file, line, inside a function) of every import
    that is neither the standard library nor drn_jax."""
    modules = package_modules()
    by_file = {str(path.relative_to(REPO)): module for module, path in modules.items()}
    _, external = collect_imports(modules)
    result = []
    for name, file, line, in_function in external + _find_spec_lookups(modules):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top == PACKAGE:
            continue
        result.append((name, by_file[file], file, line, in_function))
    return result


def optional_key(name: str) -> str | None:
    """The OPTIONAL_IMPORTS entry that `name` (dotted) is, or is inside, if any."""
    return next((key for key in OPTIONAL_IMPORTS if name == key or name.startswith(key + ".")), None)


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # reads every installed distribution's files


def distributions(module: str) -> set[str]:
    """Normalised names of the installed distributions that provide `module`'s top-level package."""
    return {normalise(d) for d in _packages_distributions().get(module.split(".")[0], [])}


def core_violations(imports, core: set[str]) -> list[str]:
    """One line per import outside OPTIONAL_IMPORTS that no core dependency provides."""
    problems = []
    for name, _, file, line, _ in imports:
        if optional_key(name) is not None:
            continue
        providers = distributions(name)
        if not providers & core:
            problems.append(f"{file}:{line}: {name} comes from {sorted(providers) or 'no installed distribution'}, "
                            "which is not in [project] dependencies")
    return problems


def test_core_modules_import_only_core_dependencies():
    core, _ = declared()
    imports = third_party_imports()
    assert {name.split(".")[0] for name, *_ in imports} >= {"jax", "numpy", "tqdm", "tifffile", "skimage"}
    assert core_violations(imports, core) == []


def test_the_check_fails_without_tqdm():
    """Without tqdm in the core dependencies (as before it was declared), both of its imports fail."""
    core, _ = declared()
    problems = core_violations(third_party_imports(), core - {"tqdm"})
    assert len(problems) == len([i for i in third_party_imports() if i[0].split(".")[0] == "tqdm"]) >= 2
    assert all(": tqdm" in problem and "['tqdm']" in problem for problem in problems), problems
    assert any(problem.startswith("drn_jax/evaluation.py:") for problem in problems)


def test_optional_imports_are_deferred_and_belong_to_their_readme_extra():
    core, extras = declared()
    used = set()
    problems = []
    for name, importer, file, line, in_function in third_party_imports():
        key = optional_key(name)
        if key is None:
            continue
        pattern = next((p for p in OPTIONAL_IMPORTS[key] if fnmatch.fnmatchcase(importer, p)), None)
        if pattern is None:
            problems.append(f"{file}:{line}: {name} is optional; only {sorted(OPTIONAL_IMPORTS[key])} may import it")
            continue
        extra = OPTIONAL_IMPORTS[key][pattern]
        used.add((key, pattern))
        providers = distributions(NEEDS.get(key, key))
        if not in_function:
            problems.append(f"{file}:{line}: {name} (extra {extra}) is imported at module level; "
                            "import it inside the function that needs it")
        if not providers:
            problems.append(f"{file}:{line}: {name}: no installed distribution provides it (install .[test])")
        elif not providers & extras.get(extra, set()):
            problems.append(f"{file}:{line}: {name} comes from {sorted(providers)}, not in the extra {extra!r}")
        elif providers & core:
            problems.append(f"{file}:{line}: {name} comes from {sorted(providers)}, a core dependency: "
                            "drop it from OPTIONAL_IMPORTS")
    assert problems == []
    table = {(key, pattern) for key, patterns in OPTIONAL_IMPORTS.items() for pattern in patterns}
    assert used == table, f"entries no module uses: {sorted(table - used)}"


def test_readme_names_each_extra_for_its_purpose():
    _, extras = declared()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    paragraph = next(p for p in readme.split("\n\n") if p.startswith("TensorFlow is optional:"))
    text = " ".join(paragraph.split())
    for extra, (install, purpose) in README_EXTRAS.items():
        assert extra in extras, extra
        assert install in text, install
        # The purpose follows the extra's install text, before the next extra is named.
        after = text.split(install, 1)[1].split('".[', 1)[0]
        assert purpose in after, (extra, after)
    used = {extra for importers in OPTIONAL_IMPORTS.values() for extra in importers.values()}
    assert used == set(README_EXTRAS)


@pytest.mark.parametrize("requirement, expected", [
    ("tensorflow-cpu>=2.21,<2.22", ("tensorflow-cpu", set())),
    ("ml_collections>=1.0", ("ml-collections", set())),
    ("drn-jax[tfds,export]", ("drn-jax", {"tfds", "export"})),
    ("Orbax.Checkpoint >=0.12", ("orbax-checkpoint", set())),
])
def test_requirement_names(requirement, expected):
    assert requirement_name(requirement) == expected


def test_declared_dependencies_expand_the_test_extra():
    core, extras = declared()
    assert {"jax", "tqdm", "tifffile", "scipy", "ml-collections"} <= core
    assert "tensorflow-cpu" not in core
    assert {"tensorflow-cpu", "tensorflow-datasets", "jax2onnx", "onnxruntime", "pytest"} <= extras["test"]
    assert extras["tfds"] == {"tensorflow-cpu", "tensorflow-datasets"}
    assert set(INDIRECT_CORE) <= core
