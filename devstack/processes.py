"""Child processes with a log file and a process group of their own, and waits with a deadline (free ports:
devstack.ports)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import consul
import requests

# The checkout: the project is installed in editable mode, so this is where its files are.
ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 15.0, interval: float = 0.1, what: str = "") -> T:
    """Call `check` until it returns without raising AssertionError (or a connection error), then return
    its result; after `timeout`, raise the last failure."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, requests.RequestException, consul.ConsulException) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"not true after {timeout:.0f} s{': ' + what if what else ''}: {exc!r}") from exc
        time.sleep(interval)


def until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.01) -> None:
    """`eventually` for a condition that returns a bool rather than raising."""

    def check() -> None:
        assert condition(), what

    eventually(check, timeout=timeout, interval=interval, what=what)


@dataclass
class Proc:
    """A child process with its own log file and process group."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait(self, timeout: float) -> None:
        """Until the process has exited; subprocess.TimeoutExpired after `timeout` s."""
        assert self.popen is not None
        self.popen.wait(timeout)

    def send_signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):  # it exited since
                os.kill(self.pid, sig)

    def kill9(self) -> None:
        """Kill the whole process group at once: the instance dies without a word to anyone."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.wait(10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        self.send_signal(sig)
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
