"""Every gunicorn worker of an instance, asked through /health: each answer names its worker (`details.pid`),
so a test can wait until each worker of the master has answered as it expects, rather than hoping that a few
reads in a row spread over the workers (Linux may hand one worker most of the accepted connections)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests

from devstack.stack import Service

# Reads sent at once: a busy worker leaves the next connection to another one.
PARALLEL = 4


def worker_pids(service: Service) -> set[int]:
    return {child.pid for child in psutil.Process(service.proc.pid).children()}


def _health(service: Service) -> dict:
    # A facade's own gunicorn, not its nginx: nginx keeps its connections to gunicorn open and reuses them, so
    # every read through it may reach the worker that accepted those connections and never the other.
    port = service.app_port or service.port
    return requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()


def on_every_worker(service: Service, check: Callable[[dict], None], timeout: float = 10.0, what: str = "") -> None:
    """Read `service`'s /health until every current worker of its master has answered with `check(health)`
    passing (not raising AssertionError) in its latest answer; after `timeout`, fail naming the workers left."""
    deadline = time.monotonic() + timeout
    passed: set[int] = set()
    failures: dict[int, str] = {}
    with ThreadPoolExecutor(PARALLEL, thread_name_prefix="health-read") as pool:
        while True:
            pids = worker_pids(service)
            for health in pool.map(lambda _: _health(service), range(PARALLEL)):
                pid = health["details"]["pid"]
                try:
                    check(health)
                except AssertionError as exc:
                    passed.discard(pid)
                    failures[pid] = str(exc)
                else:
                    passed.add(pid)
                    failures.pop(pid, None)
            if pids and pids <= passed:
                return
            if time.monotonic() > deadline:
                left = sorted(pids - passed)
                raise AssertionError(
                    f"not true on every worker of {service.instance_id} after {timeout:.0f} s"
                    f"{': ' + what if what else ''}: workers {left} of {sorted(pids)}; "
                    f"{ {pid: failures.get(pid, 'no answer') for pid in left} }"
                )
            time.sleep(0.02)
