"""The dev stack runs the tree it is given: ./scripts/bench --baseline REV measures an older revision's
services beside this checkout's, with this checkout installed in editable mode."""

from __future__ import annotations

import shutil

from devstack import ROOT, eventually, start_service


class NoAgent:
    """The instance only has to load its gunicorn config here, which needs no Consul."""

    addr = "127.0.0.1:1"


def test_a_service_started_from_another_tree_imports_that_trees_packages(tmp_path, log_dir):
    tree = tmp_path / "baseline-src"
    for package in ("servicekit", "facade"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    marker = tmp_path / "imported-from"
    with open(tree / "servicekit" / "__init__.py", "a") as init:
        init.write(f"\nfrom pathlib import Path as _P\n_P({str(marker)!r}).write_text(__file__)\n")

    service = start_service("facade-service", NoAgent(), log_dir, root=tree)
    try:

        def imported():
            assert marker.exists(), f"the other tree's servicekit was not imported:\n{service.proc.tail()}"
            # Read here too: write_text creates the file before it writes, and a read in between finds it empty.
            assert marker.read_text() == str(tree / "servicekit" / "__init__.py")

        eventually(imported, timeout=30, interval=0.1)
    finally:
        service.stop()
