"""The balance phase: one logging instance slowed by a fixed delay, POST /facade under `random` and `p2c`.

The slow instance is a real logging instance behind a delaying proxy (devstack.stubs.DelayProxy, in the
bench process), registered in Consul in its place: the real instance goes into Consul maintenance mode
(critical, out of every rotation) and the proxy, which forwards to it DELAY_MS later, is registered as
another logging instance. A second facade on the same agent runs with LB_POLICY=p2c beside the stack's
own (random, the default). Both are loaded in interleaved rounds of the POST runs' length and
concurrency. Nothing in the product knows: the fault is made from outside.
"""

from __future__ import annotations

import contextlib
import logging
import random
import statistics
from pathlib import Path

from bench import wrk
from bench.phases import Plan
from bench.systems import POST_BODY, System
from devstack import check_status, start_service, until, wait_passing
from devstack.stubs import DelayProxy

log = logging.getLogger("bench")

DELAY_MS = 50
POLICIES = ("random", "p2c")
WARM_UP_SECONDS = 2


def phase_balance(plan: Plan, system: System, log_dir: Path) -> None:
    client = system.agent.client()
    slowed = system.stack.logging[0]
    proxy = DelayProxy("logging-service", slowed.url, DELAY_MS / 1000)
    with contextlib.ExitStack() as undo:
        proxy.start(client)
        undo.callback(proxy.stop, client)
        client.agent.service.maintenance(slowed.instance_id, "true", "bench: replaced by a delaying proxy")
        undo.callback(client.agent.service.maintenance, slowed.instance_id, "false")
        until(lambda: check_status(client, proxy.instance_id) == "passing", timeout=15, what="the proxy passing")
        until(lambda: check_status(client, slowed.instance_id) == "critical", timeout=15,
              what=f"{slowed.instance_id} in maintenance")  # fmt: skip
        p2c = start_service("facade-service", system.agent, log_dir, env={"LB_POLICY": "p2c"}, root=system.stack.root)
        undo.callback(p2c.stop)
        wait_passing(system.agent, p2c)
        urls = {"random": system.stack.url, "p2c": f"{p2c.url}/facade"}
        for url in urls.values():
            wrk.run(url, 4, WARM_UP_SECONDS, method="POST", body=POST_BODY)
        runs: dict[str, list[wrk.Result]] = {policy: [] for policy in POLICIES}
        shares: dict[str, list[float]] = {policy: [] for policy in POLICIES}
        for r in range(plan.rounds):
            line = f"round {r + 1}:"
            for policy in random.sample(POLICIES, len(POLICIES)):
                before = proxy.count("POST")
                result = wrk.run(urls[policy], plan.main_level, plan.seconds, method="POST", body=POST_BODY)
                runs[policy].append(result)
                # POST /logging calls the slow instance got per POST /facade answered.
                share = (proxy.count("POST") - before) / max(result.requests, 1)
                shares[policy].append(share)
                line += (f" {policy} p50 {result.p50_ms:.1f} ms p99 {result.p99_ms:.1f} ms {result.rps:.0f}/s "
                         f"({share:.0%} to the slow instance, {result.errors} errors);")  # fmt: skip
            log.info("  slow instance (+%d ms) %s", DELAY_MS, line)

    def med(policy: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs[policy])

    system.results["balance"] = {
        "delay_ms": DELAY_MS,
        "connections": plan.main_level,
        **{
            f"{policy}_{attr}": med(policy, attr)
            for policy in POLICIES
            for attr in ("p50_ms", "p90_ms", "p99_ms", "rps")
        },
        **{f"{policy}_slow_share": statistics.median(shares[policy]) for policy in POLICIES},
        "errors": sum(r.errors for rs in runs.values() for r in rs),
    }
