"""docs/ARCHITECTURE.md states the top-level packages and the imports allowed between them; this checks both
against the code, so the document cannot drift from the tree.

The format it reads (kept simple: a new package is one bullet and one row, no change here):
- under the heading `## The packages`, one bullet per top-level package: `` - `name/`: its job ``;
- under the heading `### Allowed imports`, a table `| Package | May import |` whose rows name one package
  (`` `name/` ``) and, in the second cell, every package of ours it may import besides itself
  (`` `other/`, `another/` ``, anything else in the cell is prose: `nothing of ours`, a note on one file).
A top-level package is a directory at the root of the checkout with an `__init__.py`. The finer rules (files
that are exceptions, modules inside a package) are in tests/unit/test_architecture.py.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGE = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)/`")


def section(text: str, heading: str) -> str:
    """The lines under `heading` up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    try:
        start = lines.index(heading) + 1
    except ValueError:
        raise AssertionError(f"no {heading!r} heading in {DOC.name}") from None
    end = next(
        (i for i in range(start, len(lines)) if re.match(rf"#{{1,{level}}} ", lines[i])),
        len(lines),
    )
    return "\n".join(lines[start:end])


def listed_packages(text: str) -> list[str]:
    """The bullets `` - `name/`: job `` of `## The packages`, in order (a repeat shows as a repeat)."""
    return [m[1] for m in re.finditer(r"^- `([A-Za-z_][A-Za-z0-9_]*)/`: \S", section(text, "## The packages"), re.M)]


def allowed_imports(text: str) -> dict[str, set[str]]:
    """Package -> the packages of ours it may import, from the table of `### Allowed imports`."""
    allowed: dict[str, set[str]] = {}
    for line in section(text, "### Allowed imports").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 2 or set(cells[0]) <= set("- "):
            continue
        names = PACKAGE.findall(cells[0])
        if not names:
            continue  # the header row
        assert len(names) == 1, f"one package per row of Allowed imports: {line!r}"
        assert names[0] not in allowed, f"{names[0]}/ has two rows in Allowed imports"
        allowed[names[0]] = set(PACKAGE.findall(cells[1]))
    return allowed


def top_level_packages(root: Path) -> set[str]:
    return {p.parent.name for p in root.glob("*/__init__.py") if not p.parent.name.startswith(".")}


def imported_packages(path: Path, ours: set[str]) -> set[str]:
    """The packages of `ours` that a file imports by absolute import (relative ones stay in its package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(top for top in (name.split(".")[0] for name in names) if top in ours)
    return found


def wrong_imports(root: Path, allowed: dict[str, set[str]]) -> dict[str, list[str]]:
    """file -> the packages it imports that the doc does not allow its package."""
    ours = set(allowed)
    wrong = {}
    for package, may in allowed.items():
        for path in sorted((root / package).rglob("*.py")):
            extra = imported_packages(path, ours) - may - {package}
            if extra:
                wrong[str(path.relative_to(root))] = sorted(extra)
    return wrong


def cycle(allowed: dict[str, set[str]]) -> list[str] | None:
    """A cycle among the allowed imports, as a path of packages, or None."""
    done: set[str] = set()

    def visit(package: str, path: list[str]) -> list[str] | None:
        if package in path:
            return path[path.index(package) :] + [package]
        if package in done:
            return None
        for other in sorted(allowed.get(package, ())):
            found = visit(other, path + [package])
            if found:
                return found
        done.add(package)
        return None

    return next((found for package in sorted(allowed) if (found := visit(package, []))), None)


DOC_TEXT = DOC.read_text()


def test_the_doc_lists_every_top_level_package_once():
    listed = listed_packages(DOC_TEXT)
    assert len(listed) == len(set(listed)), f"listed twice: {sorted({p for p in listed if listed.count(p) > 1})}"
    actual = top_level_packages(ROOT)
    assert not actual - set(listed), (
        f"packages in the tree that docs/ARCHITECTURE.md does not list: {actual - set(listed)}"
    )
    assert not set(listed) - actual, f"packages docs/ARCHITECTURE.md lists that the tree lacks: {set(listed) - actual}"


def test_every_listed_package_has_one_row_of_allowed_imports_naming_listed_packages():
    listed = set(listed_packages(DOC_TEXT))
    allowed = allowed_imports(DOC_TEXT)
    assert set(allowed) == listed
    for package, may in allowed.items():
        assert may <= listed, f"{package}/ may import {sorted(may - listed)}, which the package list lacks"


def test_each_package_imports_only_what_the_doc_allows():
    assert not wrong_imports(ROOT, allowed_imports(DOC_TEXT))


def test_the_allowed_imports_flow_one_way():
    assert cycle(allowed_imports(DOC_TEXT)) is None


DOC_SAMPLE = """# Architecture

## The packages

- `app/`: a service
- `kit/`: what the services share

### Allowed imports

| Package | May import |
| --- | --- |
| `app/` | `kit/` |
| `kit/` | `app/`, which makes a cycle |

## Next
- `notapackage/`: a bullet of another section
"""


def test_the_reader_sees_a_missing_package_a_wrong_import_and_a_cycle(tmp_path):
    assert listed_packages(DOC_SAMPLE) == ["app", "kit"]
    allowed = allowed_imports(DOC_SAMPLE)
    assert allowed == {"app": {"kit"}, "kit": {"app"}}
    assert cycle(allowed) == ["app", "kit", "app"]
    assert cycle({"app": {"kit"}, "kit": set()}) is None

    for package in ("app", "kit", "extra"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "data").mkdir()  # no __init__.py: not a package
    (tmp_path / "kit" / "web.py").write_text("import json\nfrom app.routes import bp\nfrom . import web\n")
    (tmp_path / "app" / "routes.py").write_text("import kit.web\nfrom kit import web\nimport appendix\n")
    assert top_level_packages(tmp_path) == {"app", "kit", "extra"}
    assert wrong_imports(tmp_path, {"app": {"kit"}, "kit": set()}) == {"kit/web.py": ["app"]}


@pytest.mark.parametrize("heading", ["## The packages", "### Allowed imports"])
def test_a_doc_without_the_section_fails_with_its_name(heading):
    with pytest.raises(AssertionError, match=re.escape(heading)):
        section(DOC_SAMPLE.replace(heading, "## Something else"), heading)
