"""Discovery figures on a stack of its own (free ports, loopback only), printed as a Markdown table.

    ./scripts/discovery-figures [--rounds 5] [--docs]

--docs rewrites the figures block of docs/OPERATIONS.md ("Discovery that survives churn") with this run's table.

1. death -> out of rotation: kill -9 a logging instance; time until no facade worker lists it.
2. first passing check -> first request: start a logging instance under load; time from Consul
   reporting it passing to the first POST the facade sends it.
3. Consul requests per 1,000 facade requests: the agent's own counter of health queries
   (consul_http_GET_v1_health_service_*), read before and after 1,000 requests.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

from devstack import (
    ROOT,
    ConsulAgent,
    HazelcastCluster,
    Load,
    build_stack,
    eventually,
    isolated_agent,
    passing_to_first_request,
    prometheus_counter,
    replace_block,
)

HEALTH_QUERIES = "consul_http_GET_v1_health_service"
DOC = ROOT / "docs" / "OPERATIONS.md"


def in_rotation(stack, instance_id: str) -> bool:
    body = requests.get(f"{stack.facade.url}/health", timeout=5).json()
    return instance_id in body["details"]["discovery"]["logging-service"]["instances"]


def death_to_removal(stack) -> float:
    victim = stack.logging[-1]
    killed_at = time.monotonic()
    victim.proc.kill9()

    def gone_from_every_worker():
        # /health lands on a random worker: ten answers in a row without it covers both workers.
        assert not any(in_rotation(stack, victim.instance_id) for _ in range(10))
        return time.monotonic()

    elapsed = eventually(gone_from_every_worker, timeout=30, interval=0.01) - killed_at
    replacement = stack.replace(victim)
    stack.wait_all_passing()
    del replacement
    return elapsed


def first_request_delay(stack) -> float:
    tag = uuid.uuid4().hex[:6]
    with Load(
        lambda s, n: s.post(stack.url, json={"msg": f"{tag}-{n}"}, timeout=10),
        clients=2,
        max_requests=5000,
        max_seconds=60,
    ) as load:
        load.wait_for(20)
        return passing_to_first_request(stack, load)


def consul_requests_per_1k(stack) -> float:
    before = prometheus_counter(stack.agent, HEALTH_QUERIES)
    with Load(
        lambda s, n: (
            s.post(stack.url, json={"msg": f"count-{n}"}, timeout=10) if n % 2 else s.get(stack.url, timeout=10)
        ),
        clients=4,
        max_requests=1000,
        max_seconds=120,
    ) as load:
        load.wait_for(1000, timeout=120)
    after = prometheus_counter(stack.agent, HEALTH_QUERIES)
    failures = load.failures()
    assert len(load.outcomes) == 1000 and not failures, [(o.status, o.error, o.body) for o in failures[:3]]
    return (after - before) * 1000 / len(load.outcomes)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--docs", action="store_true", help="rewrite the figures block of docs/OPERATIONS.md")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="discovery-figures-"))
    print(f"process logs: {log_dir}", flush=True)
    with contextlib.ExitStack() as running:  # stops everything it started, in reverse order
        agent = ConsulAgent(log_dir)
        running.callback(agent.stop)
        agent.start()
        cluster = HazelcastCluster(agent, log_dir)
        running.callback(cluster.stop)
        cluster.start()
        own = isolated_agent(cluster, log_dir, "consul-figures")
        running.callback(own.stop)
        stack = build_stack(own, cluster, log_dir, logging=3, messages=1, facades=1)
        running.callback(stack.stop)
        removal = []
        for i in range(args.rounds):
            removal.append(death_to_removal(stack))
            print(f"  death -> out of rotation, round {i + 1}: {removal[-1] * 1000:.0f} ms", flush=True)
        first = []
        for i in range(args.rounds):
            first.append(first_request_delay(stack))
            print(f"  passing -> first request, round {i + 1}: {first[-1] * 1000:.0f} ms", flush=True)
        per_1k = consul_requests_per_1k(stack)

    def fmt(values):
        return f"{statistics.median(values) * 1000:.0f} ms (max {max(values) * 1000:.0f} ms, n={len(values)})"

    command = " ".join(["./scripts/discovery-figures", *(a for a in sys.argv[1:] if a != "--docs")])
    table = "\n".join(
        [
            f"Measured with `{command}` (its own stack on free ports; {os.cpu_count()} cores, "
            f"{datetime.date.today().isoformat()}):",
            "",
            "| figure | median |",
            "|---|---|",
            f"| kill -9 of an instance -> out of every facade worker's rotation | {fmt(removal)} |",
            f"| new instance's first passing check -> its first request | {fmt(first)} |",
            f"| Consul health queries per 1,000 facade requests (all, background watches included) | {per_1k:.1f} |",
        ]
    )
    print()
    print(table)
    if args.docs:
        replace_block(DOC, "discovery:figures", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
