"""The phases of the bench: what each one loads, for how long, and what it keeps in the systems' results."""

from __future__ import annotations

import logging
import random
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests
from hazelcast.errors import HazelcastError

from bench import profile, wrk
from bench.cpu import CpuAccount, system_groups
from bench.systems import POST_BODY, Reference, System, run_counted
from contracts import queue_item
from contracts.log_entry import encode
from devstack import HazelcastCluster, read_all, until

log = logging.getLogger("bench")

PHASES = ("page", "post", "get", "visible", "drain", "balance", "profile", "reload")
PROFILE_SECONDS = 5
VISIBLE_SENDERS = 8
VISIBLE_LEAD_IN_SECONDS = 1.0


@dataclass(frozen=True)
class Plan:
    seconds: float  # one wrk run
    rounds: int  # interleaved rounds of the POST runs; figures are medians over rounds
    levels: tuple[int, ...]  # POST concurrency (wrk connections)
    main_level: int  # the concurrency of post_rps and post_vs_ref
    get_sizes: tuple[int, ...] = (100, 1_000, 10_000)
    get_connections: int = 1  # latency as the log grows, not GET throughput
    visible_rate: float = 200.0
    visible_seconds: float = 10.0
    drain_messages: int = 20_000
    page_sizes: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
    page_limit: int = 100


QUICK = Plan(seconds=4, rounds=1, levels=(1, 4, 16), main_level=16, visible_seconds=5, drain_messages=5_000)
FULL = Plan(seconds=10, rounds=3, levels=(1, 4, 16, 32), main_level=16, visible_seconds=15)


def percentile(values: list[float], p: int) -> float:
    """The p-th percentile (1 to 99), interpolated between the two nearest ranks."""
    if len(values) == 1:
        return values[0]  # statistics.quantiles wants two points before Python 3.13
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def phase_post(plan: Plan, systems: list[System], cluster: HazelcastCluster, bare: Reference,
               chain: Reference, design: Reference) -> dict:  # fmt: skip
    """Interleaved: each round runs the chain, then every system, at each concurrency; at the main
    concurrency the naive design runs right after the chain."""
    runs: dict[str, dict[int, list[wrk.Result]]] = {"chain": {}, "bare": {}, "design": {}}
    for system in systems:
        runs[system.label] = {}
    ratios: dict[str, list[float]] = {s.label: [] for s in systems}
    design_ratios: dict[str, list[float]] = {s.label: [] for s in systems}
    account = CpuAccount()
    chain_groups = {"reference chain (front)": [chain.proc.pid], "reference bare (second hop)": [bare.proc.pid]}
    for r in range(plan.rounds):
        bare_result = wrk.run(f"{bare.url}/echo", plan.main_level, plan.seconds, method="POST", body=POST_BODY)
        runs["bare"].setdefault(plan.main_level, []).append(bare_result)
        for level in plan.levels:

            def chain_run(level=level):
                return wrk.run(f"{chain.url}/chain", level, plan.seconds, method="POST", body=POST_BODY)

            if level == plan.main_level:
                chain_result = account.measure("chain", chain_groups, chain_run)
            else:
                chain_result = chain_run()
            runs["chain"].setdefault(level, []).append(chain_result)
            line = f"round {r + 1}, {level:>2} connections: chain {chain_result.rps:6.0f}/s"
            design_result = None
            if level == plan.main_level:
                design_result = wrk.run(f"{design.url}/design", level, plan.seconds, method="POST", body=POST_BODY)
                runs["design"].setdefault(level, []).append(design_result)
                line += f", design {design_result.rps:6.0f}/s ({design_result.errors} errors)"
            for system in random.sample(systems, len(systems)):

                def facade_run(system=system, level=level):
                    return run_counted(system, system.stack.url, level, plan.seconds, method="POST", body=POST_BODY)

                if level == plan.main_level:
                    result = account.measure(system.label, system_groups(system, cluster), facade_run)
                    ratios[system.label].append(result.rps / chain_result.rps)
                    assert design_result is not None
                    design_ratios[system.label].append(result.rps / design_result.rps)
                else:
                    result = facade_run()
                runs[system.label].setdefault(level, []).append(result)
                line += f", {system.label} {result.rps:6.0f}/s (p99 {result.p99_ms:.0f} ms, {result.errors} errors)"
            log.info("  POST %s", line)
    return {"runs": runs, "ratios": ratios, "design_ratios": design_ratios,
            "cpu_ms_per_request": account.per_request_ms()}  # fmt: skip


def offer_all(system: System, messages: list[str]) -> None:
    """Put messages on the queue as the facade does, a thousand per call."""
    queue = system.queue()
    items = [queue_item.encode(str(uuid.uuid4()), msg) for msg in messages]
    for first in range(0, len(items), 1000):
        queue.add_all(items[first : first + 1000])


def fill_logging(system: System, count: int) -> None:
    """POST /logging straight to the logging instances until the log holds `count` messages, and offer
    the same messages to the queue so the messages instances hold their share too."""
    have = system.results.setdefault("stored", 0)
    if count <= have:
        return
    urls = [f"{s.url}/logging" for s in system.stack.logging]
    local = threading.local()

    def post(n: int) -> None:
        if not hasattr(local, "http"):
            local.http = requests.Session()
        body = {"id": str(uuid.uuid4()), "msg": f"stored message number {n:05d} of the benchmark log"}
        response = local.http.post(random.choice(urls), json=body, timeout=10)
        if response.status_code != 201:
            raise RuntimeError(f"POST /logging answered {response.status_code}: {response.text[:200]}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(post, range(have, count)))
    offer_all(system, [f"queued {n}" for n in range(have, count)])
    queue = system.queue()
    until(lambda: queue.size() == 0, timeout=60, what="the fill consumed")
    system.results["stored"] = count


# The page phase fills the map itself, in the service's format, a thousand entries a second of stamps
# (twice what the stack accepts here), ending a minute before the phase starts.
FILL_BATCH = 10_000
PAGE_WARM_UP_SECONDS = 2
FILL_SPACING_NS = 1_000_000
FILL_MESSAGE = "a stored message of about a hundred characters, the size the growth issue measured with: {n:09d}"


# A batch the members' store refused (its connection pool short of time on a loaded machine: StoreRefused)
# is sent again, the same entries, at most this many times: the store writes an entry once whatever the tries.
FILL_TRIES = 5


def fill_map(log_map, have: int, count: int, first_stamp: int) -> None:
    """put_all straight into the map, FILL_BATCH entries a call, as logging_svc would have stored them."""
    for start in range(have, count, FILL_BATCH):
        batch = range(start, min(start + FILL_BATCH, count))
        entries = {
            str(uuid.uuid4()): encode(FILL_MESSAGE.format(n=n), first_stamp + n * FILL_SPACING_NS) for n in batch
        }
        for tries_left in reversed(range(FILL_TRIES)):
            try:
                log_map.put_all(entries)
                break
            except HazelcastError as exc:
                if tries_left == 0 or "StoreRefused" not in str(exc):
                    raise
                log.warning("the store refused a fill batch, sending it again: %s", str(exc)[:200])
                time.sleep(1)


def phase_page(plan: Plan, systems: list[System]) -> None:
    """GET /facade?limit=page_limit (the first page) as the map grows to a million entries; the map is
    emptied afterwards, so the other phases start from an empty log."""
    first_stamp = time.time_ns() - max(plan.page_sizes) * FILL_SPACING_NS - 60 * 10**9
    have = 0
    for size in plan.page_sizes:
        started = time.monotonic()
        for system in systems:
            fill_map(system.log_map(), have, size, first_stamp)
        have = size
        line = f"{size:>9,} stored (filled in {time.monotonic() - started:.0f} s):"
        for system in random.sample(systems, len(systems)):
            url = f"{system.stack.url}?limit={plan.page_limit}"
            # Unmeasured: every logging worker finds the oldest entry and sizes its window, and the
            # members compile the query path, before the first size is measured as well as the others.
            wrk.run(url, 4, PAGE_WARM_UP_SECONDS)
            result = run_counted(system, url, plan.get_connections, plan.seconds)
            system.results.setdefault("page", {})[size] = result
            line += f" {system.label} p50 {result.p50_ms:.1f} ms p99 {result.p99_ms:.1f} ms ({result.errors} errors)"
        log.info("  GET ?limit=%d %s", plan.page_limit, line)
    for system in systems:
        system.log_map().clear()


def phase_get(plan: Plan, systems: list[System]) -> None:
    for size in plan.get_sizes:
        for system in systems:
            fill_logging(system, size)
        line = f"{size:>6} stored:"
        for system in random.sample(systems, len(systems)):
            result = run_counted(system, system.stack.url, plan.get_connections, plan.seconds)
            system.results.setdefault("get", {})[size] = result
            line += f" {system.label} p50 {result.p50_ms:.1f} ms p99 {result.p99_ms:.1f} ms ({result.errors} errors)"
        log.info("  GET %s", line)


def phase_visible(plan: Plan, system: System) -> None:
    """POST at a steady rate; a message is visible when a messages instance takes it off the queue (the
    queue's item-removed event, which the consumer follows with an in-memory append)."""
    tag = uuid.uuid4().hex[:8]
    total = int(plan.visible_rate * plan.visible_seconds)
    lead_in = int(plan.visible_rate * VISIBLE_LEAD_IN_SECONDS)
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    seen: dict[str, float] = {}
    failures: list[str] = []
    queue = system.queue()

    def removed(event) -> None:
        msg = queue_item.decode(event.item)
        if msg is not None:
            seen[msg] = time.monotonic()

    registration = queue.add_listener(include_value=True, item_removed_func=removed)
    local = threading.local()
    every_sender_up = threading.Barrier(VISIBLE_SENDERS)

    def connect(_) -> None:
        local.http = requests.Session()
        local.http.get(system.stack.url.replace("/facade", "/health"), timeout=10)
        every_sender_up.wait(timeout=30)

    def post(msg: str, measured: bool) -> None:
        started = time.monotonic()
        try:
            response = local.http.post(system.stack.url, json={"msg": msg}, timeout=10)
        except requests.RequestException as exc:
            failures.append(type(exc).__name__)
            return
        if not measured:
            return
        sent[msg], answered[msg] = started, time.monotonic()
        if response.status_code != 201:
            failures.append(f"{response.status_code}")

    try:
        with ThreadPoolExecutor(VISIBLE_SENDERS) as pool:
            # Every sender opens its keep-alive connection first, and the first second is not measured:
            # connection setup and a cold start are the load generator's cost, not the system's.
            list(pool.map(connect, range(VISIBLE_SENDERS)))
            start = time.monotonic()
            for n in range(lead_in + total):
                delay = start + n / plan.visible_rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(post, f"visible-{tag}-{n}", n >= lead_in)
        rate = (lead_in + total) / (time.monotonic() - start)
        until(lambda: len(seen.keys() & sent.keys()) == len(sent) and len(sent) + len(failures) >= total,
              timeout=30, what="every message taken off the queue")  # fmt: skip
    finally:
        queue.remove_listener(registration)
    latencies = [(seen[m] - sent[m]) * 1000 for m in sent]
    # The POST's own latency beside it: a slow answer and a slow consumer are different problems.
    posts = [(answered[m] - sent[m]) * 1000 for m in sent]
    system.results["visible"] = found = {
        "rate": rate, "count": total, "failures": len(failures),
        "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
        "post_p50_ms": percentile(posts, 50), "post_p99_ms": percentile(posts, 99),
    }  # fmt: skip
    log.info("  visible %s: %d messages at %.0f/s, p50 %.1f ms, p99 %.1f ms (the POSTs: p50 %.1f ms, p99 %.1f ms), "
             "%d failed POSTs", system.label, total, rate, found["p50_ms"], found["p99_ms"], found["post_p50_ms"],
             found["post_p99_ms"], len(failures))  # fmt: skip


def consumed(system: System) -> int:
    return sum(len(read_all(f"{s.url}/messages", "messages")) for s in system.stack.messages)


def phase_drain(plan: Plan, system: System) -> None:
    """Offer a backlog far faster than two consumers take it, time until the queue is empty."""
    queue = system.queue()
    before = consumed(system)
    count = plan.drain_messages
    start = time.monotonic()
    offer_all(system, [f"drain {n}" for n in range(count)])
    until(lambda: queue.size() == 0, timeout=120, what="the backlog drained")
    elapsed = time.monotonic() - start
    until(lambda: consumed(system) - before == count, timeout=10, interval=0.1,
          what="every drained message held by a messages instance")  # fmt: skip
    system.results["drain"] = {"messages": count, "seconds": elapsed, "msgs_per_s": count / elapsed}
    log.info("  drain %s: %d messages in %.2f s: %.0f msg/s", system.label, count, elapsed, count / elapsed)


def phase_profile(plan: Plan, system: System) -> dict:
    """py-spy on the facade's and logging_svc's workers, under POST load and then under GET load."""
    groups = {
        "facade": profile.workers(system.stack.facade.proc.pid),
        "logging_svc": [pid for s in system.stack.logging for pid in profile.workers(s.proc.pid)],
    }
    seconds = PROFILE_SECONDS + 3
    found = {
        "POST": profile.record(
            groups,
            PROFILE_SECONDS,
            lambda: wrk.run(system.stack.url, plan.main_level, seconds, method="POST", body=POST_BODY),
        ),
        "GET": profile.record(groups, PROFILE_SECONDS, lambda: wrk.run(system.stack.url, 1, seconds)),
    }
    found["stored"] = len(read_all(system.stack.url, "logging", timeout=30))
    log.info("  profiled POST and GET (%d stored)", found["stored"])
    return found
