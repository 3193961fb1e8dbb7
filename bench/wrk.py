"""wrk (Debian's package) as the load generator: fixed connections for a fixed time, loopback only."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

SCRIPT = Path(__file__).with_name("wrk.lua")


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def run(url: str, connections: int, seconds: float, method: str = "GET", body: str | None = None) -> Result:
    host = urlsplit(url).hostname or ""
    if not host.startswith("127."):
        raise ValueError(f"load goes to loopback only, not {host}")
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("no wrk on PATH: ./scripts/bench installs Debian's wrk package")
    threads = min(2, connections)
    command = [
        binary,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        url,
        "--",
        method,
        *([body] if body is not None else []),
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(v for k, v in data.items() if k.startswith("errors_"))
    return Result(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
    )
