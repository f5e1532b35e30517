"""The documentation's links resolve, and module docstrings stay short.

Links are checked as GitHub renders them: a relative ``path.md#anchor`` must name a file of the
repository and one of its headings, the anchor made by GitHub's rule (lower case, punctuation
but ``-`` and ``_`` dropped, spaces to hyphens, ``-1``, ``-2``, ... for repeated headings).
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARKDOWN = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "drn_jax" / "pretrained").glob("*.md")])
MODULES = sorted((ROOT / "drn_jax").rglob("*.py"))
# The docstring length above which a module's explanation belongs in docs/internals.md.
MAX_MODULE_DOCSTRING_LINES = 20

_MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
_DOC_POINTER = re.compile(r"\b(docs/[\w.-]+\.md)(?:#([\w-]+))?")


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading's text."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"#{1,6} ", line):
            continue
        anchor = github_anchor(line.lstrip("#"))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        out.add(anchor if count == 0 else f"{anchor}-{count}")
    return out


def test_github_anchor_by_hand():
    assert github_anchor(' `conv="auto"` on this CPU') == "convauto-on-this-cpu"
    assert github_anchor("The upscaler (drn-upscale)") == "the-upscaler-drn-upscale"
    assert github_anchor("Inference: buckets, tiles and self-ensemble") == "inference-buckets-tiles-and-self-ensemble"
    assert github_anchor("drn_jax.flops and **x4**") == "drn_jaxflops-and-x4"


def _check(target: str, source: pathlib.Path, base: pathlib.Path) -> str | None:
    if re.match(r"[a-z]+:", target) or target.startswith("mailto:"):
        return None  # an external address
    path_part, _, anchor = target.partition("#")
    path = (base / path_part).resolve() if path_part else source
    if not path.exists():
        return f"{source.relative_to(ROOT)}: {target}: no such file"
    if anchor and path.suffix == ".md" and anchor not in anchors(path):
        return f"{source.relative_to(ROOT)}: {target}: no heading with that anchor"
    return None


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = [problem for target in _MD_LINK.findall(text)
              if (problem := _check(target, page, page.parent))]
    assert not broken, "\n".join(broken)


def test_module_docstrings_point_at_existing_docs_and_stay_short():
    broken, long_ = [], []
    for module in MODULES:
        doc = ast.get_docstring(ast.parse(module.read_text(encoding="utf-8"))) or ""
        if doc.count("\n") + 1 > MAX_MODULE_DOCSTRING_LINES:
            long_.append(f"{module.relative_to(ROOT)}: {doc.count(chr(10)) + 1} lines")
        for path, anchor in _DOC_POINTER.findall(doc):
            target = path + (f"#{anchor}" if anchor else "")
            if problem := _check(target, module, ROOT):
                broken.append(problem)
    assert not broken, "\n".join(broken)
    assert not long_, "module docstrings over the limit (move the explanation to docs/internals.md):\n" + "\n".join(long_)
