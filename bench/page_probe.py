"""A probe of the ways to read one page of the log, at 1,000 and 1,000,000 stored (docs/BENCHMARKS.md).

    .venv/bin/python -m bench.page_probe [--sizes 1000,1000000] [--heap 1200m]

Starts a Consul agent and three Hazelcast members (conf/hazelcast.xml, its SORTED index on the entry)
on free loopback ports, fills the map with put_all in the service's format (logging_svc.store.encode),
one entry a millisecond, one map per size, and times each candidate's page of 100 in interleaved rounds:

- window: logging_svc.store's read, paging predicates over bounded windows of stamps (what the service does);
- greater: one paging predicate `this >= cursor`, unbounded;
- everything: values() of the whole map, sorted in Python (what the service did before).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import time
from pathlib import Path

import hazelcast
from hazelcast import predicate

from bench.phases import FILL_SPACING_NS, fill_map
from contracts.log_entry import stamp_bound
from contracts.paging import LogCursor
from devstack import ConsulAgent, HazelcastCluster
from logging_svc.store import HazelcastMessageLog, ordered
from servicekit import kvconfig

log = logging.getLogger("bench")

PAGE = 100
REPEATS = 15


def timed(call, repeats: int = REPEATS) -> float:
    """The median of `repeats` calls, in milliseconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


class Connected:
    """What HazelcastMessageLog needs of servicekit.hz.Hazelcast: a connected client's map."""

    def __init__(self, log_map):
        self._map = log_map
        self.connected = True

    def shared_config(self) -> kvconfig.SharedConfig:
        return kvconfig.SharedConfig("dev", ("127.0.0.1:1",), "messages-log", "messages-queue")

    def get_map(self, name: str, timeout: float | None = None):
        return self._map


def candidates(log_map, store: HazelcastMessageLog, first_stamp: int, size: int) -> dict:
    middle = LogCursor(first_stamp + size // 2 * FILL_SPACING_NS, 1)
    end = LogCursor(first_stamp + (size - 1) * FILL_SPACING_NS, 1)
    found = {
        "window, first page": lambda: store.page(None, PAGE),
        "window, middle page": lambda: store.page(middle, PAGE),
        "window, last page": lambda: store.page(end, PAGE),
        "greater, middle page": lambda: log_map.values(
            predicate.paging(predicate.greater_or_equal("this", stamp_bound(middle.stamp)), PAGE + 2)
        ),
    }
    if size <= 100_000:
        found["everything, sorted"] = lambda: ordered(log_map.values())[:PAGE]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.page_probe")
    parser.add_argument("--sizes", default="1000,1000000")
    parser.add_argument("--heap", default="1200m")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("hazelcast").setLevel(logging.WARNING)
    sizes = [int(s) for s in args.sizes.split(",")]
    log_dir = Path(tempfile.mkdtemp(prefix="page-probe-"))
    with contextlib.ExitStack() as running:
        agent = ConsulAgent(log_dir)
        running.callback(agent.stop)
        agent.start()
        cluster = HazelcastCluster(agent, log_dir, heap=args.heap)
        running.callback(cluster.stop)
        cluster.start()
        config = kvconfig.load(agent.client())
        client = hazelcast.HazelcastClient(cluster_name=config.cluster_name, cluster_members=list(config.members))
        running.callback(client.shutdown)
        first_stamp = time.time_ns() - max(sizes) * FILL_SPACING_NS - 60 * 10**9
        # One map per size in the same members, measured in interleaved rounds: the same heap, the
        # same garbage collector and the same neighbours' load for every size.
        calls: dict[tuple[int, str], object] = {}
        for size in sizes:
            log_map = client.get_map(f"probe-{size}").blocking()
            started = time.monotonic()
            fill_map(log_map, 0, size, first_stamp)
            log.info("%d stored (filled in %.0f s)", size, time.monotonic() - started)
            store = HazelcastMessageLog(Connected(log_map))  # type: ignore[arg-type]
            store.page(None, PAGE)  # the oldest stamp and the window width, found once
            for name, call in candidates(log_map, store, first_stamp, size).items():
                calls[(size, name)] = call
        times: dict[tuple[int, str], list[float]] = {key: [] for key in calls}
        for _ in range(args.rounds):
            for key, call in calls.items():
                slow = not key[1].startswith("window")
                times[key].append(timed(call, repeats=1 if slow else REPEATS))
        for name in dict.fromkeys(name for _, name in calls):
            cells = [
                f"{statistics.median(times[(size, name)]):8.1f} ms" if (size, name) in times else "-" for size in sizes
            ]
            log.info("  %-22s %s", name, "  ".join(cells))
        log.info(
            "  (columns: %s stored; medians of %d interleaved rounds)", ", ".join(f"{s:,}" for s in sizes), args.rounds
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
