"""./scripts/bench: the system measured against references in the same run, on a stack of its own.

    ./scripts/bench [--quick] [--rounds N] [--baseline REV] [--only post,get,visible,drain,profile] [--docs]

Starts a Consul agent, three Hazelcast members and the services on free loopback ports (devstack,
the same code the integration tests use), plus two references under the facade's gunicorn settings
(bench/reference.py). Every load loop is bounded in count and time. Writes bench-results.json and
bench-plot.png to the working directory; --docs also writes docs/BENCHMARKS.md's results and docs/bench.png.

--baseline REV runs the code of git revision REV as a second system beside this one (its own Consul
agent, map and queue, the same Hazelcast members), measured in interleaved rounds: the before/after of
a change, side by side under the same noise.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import hazelcast
import psutil
import requests

from devstack import (
    ROOT,
    VENV_BIN,
    ConsulAgent,
    HazelcastCluster,
    Proc,
    Stack,
    build_stack,
    eventually,
    free_port,
    isolated_agent,
    prometheus_counter,
)
from servicekit import kvconfig

from bench import profile, report, wrk

log = logging.getLogger("bench")

PHASES = ("post", "get", "visible", "drain", "profile")
PROFILE_SECONDS = 5
VISIBLE_SENDERS = 8
VISIBLE_LEAD_IN_SECONDS = 1.0
POST_BODY = json.dumps({"msg": "a benchmark message of a typical length, forty-odd chars"})
# What a facade worker can ask Consul: health queries (discovery), catalog and KV reads. Counted at the
# agent. The masters' registration keepers (agent/services, every few seconds per instance, whatever
# the load) and the bench's own health/state polls are not on the request path and are not counted.
REQUEST_PATH_QUERIES = ("consul_http_GET_v1_health_service", "consul_http_GET_v1_catalog", "consul_http_GET_v1_kv")


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


QUICK = Plan(seconds=4, rounds=1, levels=(1, 4, 16), main_level=16, visible_seconds=5, drain_messages=5_000)
FULL = Plan(seconds=10, rounds=3, levels=(1, 4, 16, 32), main_level=16, visible_seconds=15)


@dataclass
class System:
    """One copy of the services (this checkout, or a baseline revision) with its own agent, map and queue."""

    label: str
    agent: ConsulAgent
    stack: Stack
    hz: hazelcast.HazelcastClient
    queue_name: str
    consul_requests: float = 0.0
    facade_requests: int = 0
    results: dict = field(default_factory=dict)

    def queue(self):
        return self.hz.get_queue(self.queue_name).blocking()


@dataclass(frozen=True)
class Reference:
    proc: Proc
    url: str


def start_reference(log_dir: Path, name: str, downstream: str | None = None) -> Reference:
    port = free_port()
    env = {"PORT": str(port), **({"REF_DOWNSTREAM": downstream} if downstream else {})}
    proc = Proc(name, [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "bench" / "gunicorn.conf.py")],
                log_dir / f"{name}.log", env=env).start()
    url = f"http://127.0.0.1:{port}"

    def answers():
        assert proc.alive(), f"{name} exited:\n{proc.tail()}"
        path = "/chain" if downstream else "/echo"
        assert requests.post(url + path, data=POST_BODY, headers={"Content-Type": "application/json"},
                             timeout=2).status_code == 201

    eventually(answers, timeout=30, interval=0.2, what=f"{name} answering")
    return Reference(proc, url)


def start_system(label: str, cluster: HazelcastCluster, log_dir: Path, root: Path) -> System:
    agent = isolated_agent(cluster, log_dir / label, f"consul-{label}")
    stack = build_stack(agent, cluster, log_dir / label, logging=3, messages=2, facades=1, root=root)
    config = kvconfig.load(agent.client())
    hz = hazelcast.HazelcastClient(cluster_name=config.cluster_name, cluster_members=list(config.members))
    return System(label, agent, stack, hz, config.queue_name)


def checkout(rev: str, into: Path) -> Path:
    """The tree of `rev`, unpacked with git archive: no worktree to clean up in the repository."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def until(condition, timeout: float, what: str, interval: float = 0.01) -> None:
    """Wait for a condition that returns a bool (eventually() wants one that raises)."""

    def check() -> None:
        assert condition(), what

    eventually(check, timeout=timeout, interval=interval, what=what)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run_counted(system: System, url: str, connections: int, seconds: float, **kw) -> wrk.Result:
    """A wrk run at one facade, with the Consul requests its agent served meanwhile."""
    before = prometheus_counter(system.agent, REQUEST_PATH_QUERIES)
    result = wrk.run(url, connections, seconds, **kw)
    system.consul_requests += prometheus_counter(system.agent, REQUEST_PATH_QUERIES) - before
    system.facade_requests += result.requests
    return result


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their children (gunicorn workers, the JVM's threads)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


class CpuAccount:
    """CPU milliseconds per request, by component, summed over the runs it measured. Runs are
    sequential, so the shared Hazelcast members and the load generator work for one target at a time."""

    def __init__(self):
        self.cpu: dict[str, dict[str, float]] = {}
        self.requests: dict[str, int] = {}

    def measure(self, target: str, groups: dict[str, list[int]], run) -> wrk.Result:
        before = {name: cpu_seconds(pids) for name, pids in groups.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = run()
        # wrk is the only child reaped meanwhile: the services are reaped when the bench stops them.
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent = self.cpu.setdefault(target, {})
        for name, pids in groups.items():
            spent[name] = spent.get(name, 0.0) + cpu_seconds(pids) - before[name]
        spent["wrk (load generator)"] = spent.get("wrk (load generator)", 0.0) + (
            after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime)
        self.requests[target] = self.requests.get(target, 0) + result.requests
        return result

    def per_request_ms(self) -> dict[str, dict[str, float]]:
        return {target: {name: seconds * 1000 / self.requests[target] for name, seconds in spent.items()}
                for target, spent in self.cpu.items()}


def system_groups(system: System, cluster: HazelcastCluster) -> dict[str, list[int]]:
    stack = system.stack
    return {
        "facade": [s.proc.pid for s in stack.facades],
        "logging_svc": [s.proc.pid for s in stack.logging],
        "messages_svc": [s.proc.pid for s in stack.messages],
        "hazelcast members": [p.pid for p in cluster.members.values()],
        "consul agent": [system.agent.proc.pid],
    }


def phase_post(plan: Plan, systems: list[System], cluster: HazelcastCluster, bare: Reference,
               chain: Reference) -> dict:
    """Interleaved: each round runs the chain, then every system, at each concurrency."""
    runs: dict[str, dict[int, list[wrk.Result]]] = {"chain": {}, "bare": {}}
    for system in systems:
        runs[system.label] = {}
    ratios: dict[str, list[float]] = {s.label: [] for s in systems}
    account = CpuAccount()
    chain_groups = {"reference chain (front)": [chain.proc.pid], "reference bare (second hop)": [bare.proc.pid]}
    for r in range(plan.rounds):
        bare_result = wrk.run(f"{bare.url}/echo", plan.main_level, plan.seconds, method="POST", body=POST_BODY)
        runs["bare"].setdefault(plan.main_level, []).append(bare_result)
        for level in plan.levels:
            def chain_run(level=level):
                return wrk.run(f"{chain.url}/chain", level, plan.seconds, method="POST", body=POST_BODY)

            chain_result = account.measure("chain", chain_groups, chain_run) if level == plan.main_level else chain_run()
            runs["chain"].setdefault(level, []).append(chain_result)
            line = f"round {r + 1}, {level:>2} connections: chain {chain_result.rps:6.0f}/s"
            for system in random.sample(systems, len(systems)):
                def facade_run(system=system, level=level):
                    return run_counted(system, system.stack.url, level, plan.seconds, method="POST", body=POST_BODY)

                if level == plan.main_level:
                    result = account.measure(system.label, system_groups(system, cluster), facade_run)
                    ratios[system.label].append(result.rps / chain_result.rps)
                else:
                    result = facade_run()
                runs[system.label].setdefault(level, []).append(result)
                line += f", {system.label} {result.rps:6.0f}/s (p99 {result.p99_ms:.0f} ms, {result.errors} errors)"
            log.info("  POST %s", line)
    return {"runs": runs, "ratios": ratios, "cpu_ms_per_request": account.per_request_ms()}


def offer_all(system: System, messages: list[str]) -> None:
    """Put messages on the queue as the facade does ({"id", "msg"} JSON), a thousand per call."""
    queue = system.queue()
    items = [json.dumps({"id": str(uuid.uuid4()), "msg": msg}) for msg in messages]
    for first in range(0, len(items), 1000):
        queue.add_all(items[first:first + 1000])


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
        seen[json.loads(event.item)["msg"]] = time.monotonic()

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
              timeout=30, what="every message taken off the queue")
    finally:
        queue.remove_listener(registration)
    latencies = [(seen[m] - sent[m]) * 1000 for m in sent]
    # The POST's own latency beside it: a slow answer and a slow consumer are different problems.
    posts = [(answered[m] - sent[m]) * 1000 for m in sent]
    system.results["visible"] = {
        "rate": rate, "count": total, "failures": len(failures),
        "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
        "post_p50_ms": percentile(posts, 50), "post_p99_ms": percentile(posts, 99),
    }
    log.info("  visible %s: %d messages at %.0f/s, p50 %.1f ms, p99 %.1f ms (the POSTs: p50 %.1f ms, p99 %.1f ms), "
             "%d failed POSTs", system.label, total, rate, percentile(latencies, 50), percentile(latencies, 99),
             percentile(posts, 50), percentile(posts, 99), len(failures))


def consumed(system: System) -> int:
    return sum(len(requests.get(f"{s.url}/messages", timeout=10).json()["messages"]) for s in system.stack.messages)


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
          what="every drained message held by a messages instance")
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
        "POST": profile.record(groups, PROFILE_SECONDS, lambda: wrk.run(
            system.stack.url, plan.main_level, seconds, method="POST", body=POST_BODY)),
        "GET": profile.record(groups, PROFILE_SECONDS, lambda: wrk.run(system.stack.url, 1, seconds)),
    }
    found["stored"] = len(requests.get(system.stack.url, timeout=30).json()["logging"])
    log.info("  profiled POST and GET (%d stored)", found["stored"])
    return found


def summarize(plan: Plan, systems: list[System], post: dict) -> dict:
    runs = post.get("runs", {})

    def med(label: str, level: int, attr: str) -> float | None:
        results = runs.get(label, {}).get(level)
        return statistics.median(getattr(r, attr) for r in results) if results else None

    def by_level(label: str) -> dict:
        return {lvl: {attr: med(label, lvl, attr) for attr in ("rps", "p50_ms", "p99_ms")} for lvl in plan.levels}

    out: dict = {}
    for system in systems:
        s: dict = {}
        if runs:
            s["post_rps"] = med(system.label, plan.main_level, "rps")
            s["post_p50_ms"] = med(system.label, plan.main_level, "p50_ms")
            s["post_p99_ms"] = med(system.label, plan.main_level, "p99_ms")
            s["post_vs_ref"] = statistics.median(post["ratios"][system.label])
            s["post_errors"] = sum(r.errors for rs in runs[system.label].values() for r in rs)
            s["post_by_level"] = by_level(system.label)
        if "get" in system.results:
            get = system.results["get"]
            s["get_by_size"] = {n: {"p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "rps": r.rps, "errors": r.errors}
                                for n, r in get.items()}
            s["get_p50_ms_10k"] = get[max(get)].p50_ms
            sizes = sorted(get)
            slope, intercept = statistics.linear_regression(sizes, [get[n].p50_ms for n in sizes])
            s["get_ms_per_1k_messages"] = slope * 1000
            s["get_constant_ms"] = intercept
        if "visible" in system.results:
            s["visible_p50_ms"] = system.results["visible"]["p50_ms"]
            s["visible_p99_ms"] = system.results["visible"]["p99_ms"]
            s["visible_rate"] = system.results["visible"]["rate"]
        if "drain" in system.results:
            s["drain_msgs_per_s"] = system.results["drain"]["msgs_per_s"]
        if system.facade_requests:
            s["consul_requests_per_1k"] = system.consul_requests * 1000 / system.facade_requests
        out[system.label] = s
    current = dict(out[systems[0].label])
    if runs:
        current["ref_chain_rps"] = med("chain", plan.main_level, "rps")
        current["ref_bare_rps"] = med("bare", plan.main_level, "rps")
        current["chain_by_level"] = by_level("chain")
        current["cpu_ms_per_request"] = post["cpu_ms_per_request"]
    if len(systems) > 1:
        current["baseline"] = out[systems[1].label]
    return current


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round of everything (< 5 minutes)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of the POST runs")
    parser.add_argument("--baseline", metavar="REV", help="also run git revision REV, side by side")
    parser.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases of {', '.join(PHASES)}")
    parser.add_argument("--docs", action="store_true", help="write docs/BENCHMARKS.md's results and docs/bench.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("hazelcast").setLevel(logging.WARNING)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = Plan(**{**plan.__dict__, "rounds": args.rounds})
    phases = [p for p in args.only.split(",") if p]
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    command = "./scripts/bench " + " ".join(argv if argv is not None else sys.argv[1:])

    log_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    log.info("process logs: %s", log_dir)
    started = time.monotonic()
    cleanup: list = []
    try:
        log.info("starting Consul, 3 Hazelcast members, the services and the references")
        agent = ConsulAgent(log_dir).start()
        cleanup.append(agent.stop)
        cluster = HazelcastCluster(agent, log_dir).start()
        cleanup.append(cluster.stop)
        bare = start_reference(log_dir, "ref-bare")
        cleanup.append(bare.proc.stop)
        chain = start_reference(log_dir, "ref-chain", downstream=f"{bare.url}/echo")
        cleanup.append(chain.proc.stop)
        roots = [("current", ROOT)]
        if args.baseline:
            rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], check=True,
                                 capture_output=True, text=True).stdout.strip()
            roots.append((f"baseline-{rev}", checkout(rev, log_dir / "baseline-src")))
        systems: list[System] = []
        for label, root in roots:
            system = start_system(label, cluster, log_dir, root)
            cleanup += [system.agent.stop, system.stack.stop, system.hz.shutdown]
            systems.append(system)
        log.info("stack up in %.0f s; warming up (JIT, pools, connections)", time.monotonic() - started)
        for url in [f"{chain.url}/chain", *(s.stack.url for s in systems)]:
            wrk.run(url, 4, 2, method="POST", body=POST_BODY)

        post: dict = {}
        if "get" in phases:
            log.info("GET /facade as the log grows (%d connections, %.0f s each)", plan.get_connections, plan.seconds)
            phase_get(plan, systems)
        if "post" in phases:
            log.info("POST /facade against the references (%s connections, %.0f s each, %d rounds)",
                     "/".join(map(str, plan.levels)), plan.seconds, plan.rounds)
            post = phase_post(plan, systems, cluster, bare, chain)
        if "visible" in phases:
            log.info("POST-to-visible at %.0f messages/s for %.0f s", plan.visible_rate, plan.visible_seconds)
            for system in random.sample(systems, len(systems)):
                phase_visible(plan, system)
        if "drain" in phases:
            log.info("drain rate with 2 consumers, %d messages", plan.drain_messages)
            for system in random.sample(systems, len(systems)):
                phase_drain(plan, system)
        found = None
        if "profile" in phases:
            log.info("profiling %s's workers with py-spy --gil, %d s of POST, %d s of GET",
                     systems[0].label, PROFILE_SECONDS, PROFILE_SECONDS)
            found = phase_profile(plan, systems[0])
        results = summarize(plan, systems, post)
        if found:
            results["profile"] = found
    finally:
        for stop in reversed(cleanup):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - one failed stop must not keep the others running
                log.warning("cleanup step failed: %s", exc)

    results["meta"] = report.machine(command, plan.__dict__, time.monotonic() - started)
    if len(systems) > 1:
        results["meta"]["baseline_label"] = systems[1].label
    Path("bench-results.json").write_text(json.dumps(results, indent=2) + "\n")
    report.plot(results, Path("bench-plot.png"))
    table = report.markdown(results)
    sys.stdout.write("\n" + table + "\n")
    log.info("wrote bench-results.json and bench-plot.png (%.0f s in all)", time.monotonic() - started)
    if args.docs:
        report.write_docs(table, ROOT / "docs" / "BENCHMARKS.md", Path("bench-plot.png"), ROOT / "docs" / "bench.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
