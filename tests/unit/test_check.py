"""./scripts/check fails on a lint finding, an unformatted file and a type error in the product code."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ["contracts", "servicekit", "upstream", "stackctl", "facade", "logging_svc", "messages_svc", "devstack"]


def checked_copy(tmp_path: Path) -> Path:
    """The product code, its configuration and the script, beside this checkout's virtualenv."""
    copy = tmp_path / "repo"
    for room in PRODUCT:
        shutil.copytree(ROOT / room, copy / room, ignore=shutil.ignore_patterns("__pycache__"))
    for path in ["pyproject.toml", "conf/stack.env", "scripts/check", "scripts/lib.sh"]:
        (copy / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, copy / path)
    (copy / ".venv").symlink_to(ROOT / ".venv")
    # mypy's cache of this checkout, when there is one (./scripts/test runs the check first): mypy reads
    # a module again when its file differs, so a planted defect is still found, and the copy is not typed
    # from nothing on 2 cores beside the suite's other workers.
    if (ROOT / ".mypy_cache").is_dir():
        shutil.copytree(ROOT / ".mypy_cache", copy / ".mypy_cache")
    return copy


def check(copy: Path) -> subprocess.CompletedProcess:
    # mypy from an empty cache: 12 s alone on 2 cores, over 120 s beside the suite's other workers.
    return subprocess.run([str(copy / "scripts" / "check")], capture_output=True, text=True, timeout=280)


def test_the_product_code_passes_the_checks(tmp_path):
    result = check(checked_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("defect", "named"),
    [
        ("import os\n", "F401"),  # ruff check: an unused import
        ("x = ( 1 )\n", "1 file would be reformatted"),  # ruff format --check
        ('\ndef f() -> int:\n    return "one"\n', "Incompatible return value"),  # mypy
    ],
    ids=["lint", "format", "types"],
)
def test_a_finding_fails_the_check_and_is_named(tmp_path, defect, named):
    copy = checked_copy(tmp_path)
    (copy / "servicekit" / "defect.py").write_text(f'"""A planted defect."""\n\n{defect}')
    result = check(copy)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
