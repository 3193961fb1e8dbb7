"""Where a worker's Python CPU goes under load: py-spy samples of the thread holding the GIL (--gil), so
threads waiting on a socket do not count, sorted into the parts of a request that matter here."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil

# name -> does a sample's stack (frame names, root first) belong to it. A sample may count in several
# rows: the rows are "of which" shares, not a partition.
CATEGORIES: list[tuple[str, Callable[[list[str]], bool]]] = [
    ("gunicorn request handling (parse, Flask, the view, write)", lambda f: "ThreadWorker.handle" in f),
    (
        "  the view's HTTP calls to logging_svc (requests, retries, discovery)",
        lambda f: "Backends.log_message" in f or "Backends.logged_messages" in f,
    ),
    ("  the view's HTTP call to messages_svc", lambda f: "Backends.consumed_messages" in f),
    ("  the view's Hazelcast call, caller side", lambda f: any(x.startswith("Blocking") for x in f)),
    ("Hazelcast client reactor thread (socket I/O, decoding, futures)", lambda f: "_AbstractLoop._loop" in f),
    (
        "  of which reading response frames",
        lambda f: (
            "_AbstractLoop._loop" in f and "_Reader.process" in f and "InvocationService.handle_client_message" not in f
        ),
    ),
    (
        "  of which turning map values into Python objects",
        lambda f: "_AbstractLoop._loop" in f and "deserialize_list_in_place" in f,
    ),
    ("gunicorn event loop (accept, read requests, keep-alive)", lambda f: bool(f) and f[0] == "<module>"),
]


def workers(pid: int) -> list[int]:
    return [child.pid for child in psutil.Process(pid).children()]


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rstrip().rpartition(" ")
    return [frame.split(" (")[0] for frame in stack.split(";")], int(count)


def summarize(raw_files: list[Path]) -> dict[str, float]:
    """Percent of the GIL-holding samples in each category."""
    samples: Counter = Counter()
    total = 0
    for path in raw_files:
        for line in path.read_text().splitlines():
            frames, count = _frames(line)
            total += count
            for name, belongs in CATEGORIES:
                if belongs(frames):
                    samples[name] += count
    return {name: 100.0 * samples[name] / total if total else 0.0 for name, _ in CATEGORIES} | {"samples": total}


def record(groups: dict[str, list[int]], seconds: float, load: Callable[[], object]) -> dict[str, dict[str, float]]:
    """Run `load` while py-spy samples every pid of every group; the load must outlast `seconds`."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise RuntimeError("no py-spy: it is in requirements/bench.txt, run ./scripts/install --bench")
    out = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    loader = threading.Thread(target=load, name="profile-load", daemon=True)
    loader.start()
    spies = [
        subprocess.Popen(
            [
                py_spy,
                "record",
                "--gil",
                "--rate",
                "250",
                "--duration",
                str(int(seconds)),
                "--format",
                "raw",
                "--output",
                str(out / f"{name}-{pid}.raw"),
                "--pid",
                str(pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pids in groups.items()
        for pid in pids
    ]
    for spy in spies:
        spy.wait(timeout=seconds + 30)
    loader.join(timeout=seconds + 60)
    return {name: summarize(sorted(out.glob(f"{name}-*.raw"))) for name in groups}
