"""Imports flow one way (docs/ARCHITECTURE.md): services -> upstream (the facade) -> servicekit -> contracts ->
libraries; the dev tools on top. Inside each shared package, modules stand on floors: a module imports only
modules of lower floors (so no cycle), and a package has at most five floors."""

from __future__ import annotations

import ast
import itertools
import sys
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


# Inside each shared package, its modules by floor, the lowest first: a module may import, of its own package,
# only modules on the floors below its own. A new module takes the floor of what it imports, plus one.
FLOORS: dict[str, list[set[str]]] = {
    "contracts": [
        {"__init__", "id_format", "log_entry"},
        {"paging", "queue_item"},
    ],
    "servicekit": [
        # Nothing of servicekit: the parts everything else stands on.
        {
            "__init__",
            "background",
            "blocking_index",
            "errors",
            "hazelcast_reactor_fix",
            "lifecycle",
            "logs",
            "request_id",
            "stack",
        },
        {"blocking_watch", "discovery", "private_files", "settings", "tracing"},
        {"consul_client", "gunicorn_config", "kvconfig", "live_config", "metrics_files"},
        {"hz", "metrics", "registration"},
        # The HTTP boundary and gunicorn's hooks (with each service's gunicorn settings), on everything below.
        {"gunicorn_hooks", "web"},
    ],
    "upstream": [
        {"__init__", "balancing", "outliers", "retry_budget", "watch"},
        {"caller"},
    ],
    "stackctl": [
        {"__init__", "front_door", "maintenance", "postgres", "stack_status", "trace_logs"},
        {"hazelcast_member"},
        {"cli"},
        {"__main__"},
    ],
}
MAX_FLOORS = 5


def imported_modules(path: Path, package: str) -> set[str]:
    """The modules of `package` that a file of it imports, relatively (`from . import x`, `from .x import y`)
    or by the package's name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            dotted = [alias.name for alias in node.names]
            found.update(name.split(".")[1] for name in dotted if name.startswith(f"{package}."))
        elif isinstance(node, ast.ImportFrom) and (
            node.level == 1 or (node.level == 0 and node.module and node.module.split(".")[0] == package)
        ):
            module = node.module or ""
            inner = module.split(".")[1:] if node.level == 0 else module.split(".")[:1] if module else []
            if inner and inner[0]:
                found.add(inner[0])
            else:  # from . import a, b (or from package import a, b): each name may be a module
                found.update(alias.name for alias in node.names)
    return {name for name in found if (ROOT / package / f"{name}.py").is_file()}


def module_imports(package: str) -> dict[str, set[str]]:
    return {path.stem: imported_modules(path, package) - {path.stem} for path in (ROOT / package).glob("*.py")}


def floors_of(imports: dict[str, set[str]]) -> dict[str, int]:
    """Each module's floor: 1 when it imports nothing of its package, else one above the highest it imports.
    AssertionError naming the modules of a cycle, which has no floors."""
    floor: dict[str, int] = {}

    def visit(module: str, path: tuple[str, ...]) -> int:
        if module in path:
            raise AssertionError(f"an import cycle: {' -> '.join(path[path.index(module) :] + (module,))}")
        if module not in floor:
            floor[module] = 1 + max((visit(m, (*path, module)) for m in imports.get(module, ())), default=0)
        return floor[module]

    for module in sorted(imports):
        visit(module, ())
    return floor


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_each_module_of_a_package_is_on_one_floor_of_the_table(package):
    listed = list(itertools.chain.from_iterable(FLOORS[package]))
    assert len(listed) == len(set(listed)), f"on two floors: {sorted({m for m in listed if listed.count(m) > 1})}"
    actual = set(module_imports(package))
    assert actual == set(listed), (
        f"not in the table: {sorted(actual - set(listed))}; gone: {sorted(set(listed) - actual)}"
    )


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_a_module_imports_only_modules_of_lower_floors_and_a_package_has_at_most_five(package):
    floor = {module: n for n, modules in enumerate(FLOORS[package], 1) for module in modules}
    wrong = {
        module: sorted(m for m in imported if floor.get(m, 0) >= floor.get(module, 0))
        for module, imported in module_imports(package).items()
    }
    assert not {module: up for module, up in wrong.items() if up}, "imports of the same floor or one above"
    assert len(FLOORS[package]) <= MAX_FLOORS
    # Measured from the code alone: the longest chain of imports inside the package, and no cycle.
    assert max(floors_of(module_imports(package)).values()) <= MAX_FLOORS


def test_the_floor_check_sees_a_cycle_and_counts_the_longest_chain(tmp_path, monkeypatch):
    assert floors_of({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"c"}}) == {"a": 3, "b": 2, "c": 1, "d": 2}
    with pytest.raises(AssertionError, match="a -> b -> a"):
        floors_of({"a": {"b"}, "b": {"a"}})
    package = tmp_path / "pkg"
    package.mkdir()
    for name in ("one", "two", "three"):
        (package / f"{name}.py").write_text("")
    source = package / "one.py"
    source.write_text("from . import two\nfrom .three import x\nimport pkg.two\nfrom pkg import three\nimport os\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert imported_modules(source, "pkg") == {"two", "three"}
