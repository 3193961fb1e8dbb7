"""Imports flow one way (docs/ARCHITECTURE.md): services -> upstream (the facade) -> servicekit -> contracts ->
libraries; the dev tools on top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"facade", "logging_svc", "messages_svc"}
OURS = SERVICES | {"contracts", "servicekit", "upstream", "stackctl", "devstack", "bench", "tests"}
# What each room may import of ours, besides itself.
ALLOWED = {
    **{service: {"servicekit", "contracts"} for service in SERVICES},
    # Client-side load balancing is the facade's alone.
    "facade": {"upstream", "servicekit", "contracts"},
    "servicekit": {"contracts"},
    "upstream": {"servicekit", "contracts"},
    "contracts": set(),
    "stackctl": {"servicekit", "contracts"},
    "devstack": {"servicekit", "stackctl", "contracts"},
    "bench": {"devstack", "servicekit", "stackctl", "contracts"},
}
# Files that may import more than their room, and why.
EXCEPTIONS = {
    # It times logging_svc's page read in-process, beside the other ways to read a page.
    "bench/page_probe.py": {"logging_svc"},
    # It sizes each simulated host's log (LOG_CAPACITY_BYTES) by logging_svc's own rule, for that host's heap.
    "devstack/host_stack.py": {"logging_svc"},
}


def imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        rooms.update(name.split(".")[0] for name in names if name.split(".")[0] in OURS)
    return rooms


def room_files(room: str) -> list[Path]:
    # gunicorn.conf.py files load their own service's app by design; they are configuration, not a room.
    return [p for p in (ROOT / room).rglob("*.py") if p.name != "gunicorn.conf.py"]


@pytest.mark.parametrize("room", sorted(room for room in ALLOWED if (ROOT / room).is_dir()))
def test_a_room_imports_only_what_it_may(room):
    wrong = {
        str(path.relative_to(ROOT)): sorted(
            imported_rooms(path) - ALLOWED[room] - {room} - EXCEPTIONS.get(str(path.relative_to(ROOT)), set())
        )
        for path in room_files(room)
    }
    assert not {k: v for k, v in wrong.items() if v}


def test_the_check_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from facade.backends import Backends\nimport servicekit.web\nimport requests\n")
    assert imported_rooms(bad) == {"facade", "servicekit"}
