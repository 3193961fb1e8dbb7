"""The stack's fixed configuration, written once in conf/stack.env: ports and instance counts, the Hazelcast
version and jar. scripts/lib.sh sources the same file, so the shell scripts and Python read one text.

Why a data file: ./scripts/install sources lib.sh before any virtualenv exists, so the shell cannot ask
Python, and Python run outside the scripts (the tests, gunicorn started by hand) sees no variable the
scripts export. A file of NAME=value lines is something both read without the other.
"""

from __future__ import annotations

import functools
import os
import re
import string
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STACK_ENV = ROOT / "conf" / "stack.env"
_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def parse(text: str) -> dict[str, str]:
    """NAME=value lines as the shell sources them: ${NAME} takes a value from a line above."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not _NAME.fullmatch(name) or any(c in value for c in "'\" \t`\\"):
            raise ValueError(f"line {number}: {line!r} is not NAME=value (no quotes, no spaces)")
        values[name] = string.Template(value).substitute(values)
    return values


@functools.cache
def values() -> dict[str, str]:
    return parse(STACK_ENV.read_text())


def port(name: str) -> int:
    """A default port, e.g. port("FACADE_PORT") -> 8080 (without STACK_PORT_OFFSET)."""
    return int(values()[name])


def count(program: str, env: Mapping[str, str] | None = None) -> int:
    """How many instances of a program ./scripts/up runs: <PROGRAM>_INSTANCES from the environment when it is
    set there (scripts/lib.sh's rule: a stack may be shrunk), else conf/stack.env's, e.g. count("LOGGING") -> 3.
    The value is not checked here: ./scripts/up refuses one it cannot run before it starts anything."""
    env = os.environ if env is None else env
    name = f"{program}_INSTANCES"
    return int(env.get(name) or values()[name])


def ports(program: str, env: Mapping[str, str] | None = None) -> list[int]:
    """The default ports of every instance of a program, e.g. ports("HAZELCAST") -> [5701, 5702, 5703]."""
    first = port(f"{program}_PORT")
    return list(range(first, first + count(program, env)))


def hazelcast_version() -> str:
    return values()["HAZELCAST_VERSION"]


def run_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where ./scripts/up keeps its state (supervisord's socket, the programs' env file, the instances'
    metrics): STACK_RUN_DIR, by default run/ in the checkout."""
    env = os.environ if env is None else env
    return Path(env.get("STACK_RUN_DIR") or ROOT / "run")


def tools_dir() -> Path:
    return Path(os.environ.get("STACK_TOOLS_DIR") or ROOT / ".tools")


def hazelcast_jar() -> Path:
    """The jar ./scripts/install fetched: HAZELCAST_JAR when set (lib.sh sets it), else in the tools directory."""
    return Path(os.environ.get("HAZELCAST_JAR") or tools_dir() / values()["HAZELCAST_JAR_IN_TOOLS"])
