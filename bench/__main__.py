"""./scripts/bench: the system measured against references in the same run, on a stack of its own.

    ./scripts/bench [--quick] [--rounds N] [--baseline REV] [--only page,post,get,visible,drain,balance,profile]
                    [--member-heap 1200m] [--docs]

Starts a Consul agent, three Hazelcast members and the services on free loopback ports (devstack, the
same code the integration tests use), plus two references under the facade's gunicorn settings
(bench/reference.py), and the facade's design written the naive way on the same members. Every load loop is
bounded in count and time. Writes bench-results.json and
bench-plot.png to the working directory; --docs also writes docs/BENCHMARKS.md's results and docs/bench.png.

--baseline REV runs the code of git revision REV as a second system beside this one (its own Consul
agent, map and queue, the same Hazelcast members), measured in interleaved rounds: the before/after of
a change, side by side under the same noise.

The parts: bench/systems.py (the systems and references), bench/cpu.py (CPU per request by component),
bench/phases.py (the plan and each phase), bench/summary.py (the keys of bench-results.json),
bench/report.py (the table, the plot, the docs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import report, wrk
from bench.balance import DELAY_MS, phase_balance
from bench.phases import (
    FULL,
    PHASES,
    PROFILE_SECONDS,
    QUICK,
    phase_drain,
    phase_get,
    phase_page,
    phase_post,
    phase_profile,
    phase_visible,
)
from bench.store import MEMORY_LABEL, RELOAD_MESSAGES, commit_delay_run, phase_reload, profile_member, statements
from bench.summary import summarize
from bench.systems import (
    POST_BODY,
    System,
    checkout,
    logged,
    short_rev,
    start_design,
    start_reference,
    start_system,
)
from devstack import ROOT, ConsulAgent, HazelcastCluster
from devstack.postgres import PostgresServer

log = logging.getLogger("bench")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round of everything (< 5 minutes)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of the POST runs")
    parser.add_argument("--baseline", metavar="REV", help="also run git revision REV, side by side")
    parser.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases of {', '.join(PHASES)}")
    parser.add_argument(
        "--member-heap", default="1200m", help="the members' heap when the page phase runs (a million entries)"
    )
    parser.add_argument("--docs", action="store_true", help="write docs/BENCHMARKS.md's results and docs/bench.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("hazelcast").setLevel(logging.WARNING)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    phases = [p for p in args.only.split(",") if p]
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    command = "./scripts/bench " + " ".join(argv if argv is not None else sys.argv[1:])

    log_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    log.info("process logs: %s", log_dir)
    started = time.monotonic()
    # Every process is stopped in the reverse order of its start, whatever happens.
    with contextlib.ExitStack() as running:
        log.info("starting Consul, 3 Hazelcast members, the services and the references")
        agent = ConsulAgent(log_dir)
        running.callback(logged(agent.stop))
        agent.start()
        # The log's database, as in ./scripts/up: the current system's map and queue write through to it.
        log_dir.chmod(0o755)  # the postgres user keeps its cluster under it
        database = PostgresServer(log_dir / "postgres", log_dir)
        running.callback(logged(database.close))
        database.start()
        # A million entries of the log, their backups and the index need about 1 GB a member.
        cluster = HazelcastCluster(agent, log_dir, heap=args.member_heap if "page" in phases else None, store=database)
        running.callback(logged(cluster.stop))
        cluster.start()
        bare = start_reference(running, log_dir, "ref-bare")
        chain = start_reference(running, log_dir, "ref-chain", downstream=f"{bare.url}/echo")
        roots = [("current", ROOT)]
        if args.baseline:
            rev = short_rev(args.baseline)
            roots.append((f"baseline-{rev}", checkout(rev, log_dir / "baseline-src")))
        systems: list[System] = [
            start_system(running, label, cluster, log_dir, root, durable=label == "current") for label, root in roots
        ]
        # The same code with the store switched off (a map and queue in memory only), for durable_vs_memory.
        memory = start_system(running, MEMORY_LABEL, cluster, log_dir, ROOT)
        # The naive design writes the durable system's map and queue: through to the same database.
        design = start_design(running, log_dir, systems[0])
        log.info("stack up in %.0f s; warming up (JIT, pools, connections)", time.monotonic() - started)
        for url in [f"{chain.url}/chain", f"{design.url}/design", *(s.stack.url for s in [*systems, memory])]:
            wrk.run(url, 4, 2, method="POST", body=POST_BODY)

        post: dict = {}
        if "page" in phases:
            log.info("GET /facade?limit=%d as the map grows to %s entries (filled with put_all)",
                     plan.page_limit, f"{max(plan.page_sizes):,}")  # fmt: skip
            phase_page(plan, systems)
        if "get" in phases:
            log.info("GET /facade as the log grows (%d connections, %.0f s each)", plan.get_connections, plan.seconds)
            phase_get(plan, systems)
        if "post" in phases:
            log.info("POST /facade against the references (%s connections, %.0f s each, %d rounds)",
                     "/".join(map(str, plan.levels)), plan.seconds, plan.rounds)  # fmt: skip
            database.cluster.psql("SELECT pg_stat_statements_reset()")  # as the superuser
            post = phase_post(plan, [*systems, memory], cluster, bare, chain, design)
            post["pg_stat_statements"] = statements(database)
            post["commit_delay"] = commit_delay_run(database, systems[0], plan)
            if "profile" in phases:
                member = next(iter(cluster.members.values())).pid
                log.info("Java Flight Recorder on member pid %d, POST /facade at %d connections for %d s",
                         member, plan.main_level, PROFILE_SECONDS * 2)  # fmt: skip
                post["member_profile"] = profile_member(
                    member, PROFILE_SECONDS * 2,
                    lambda: wrk.run(systems[0].stack.url, plan.main_level, PROFILE_SECONDS * 2, method="POST",
                                    body=POST_BODY),
                    log_dir,
                )  # fmt: skip
        if "visible" in phases:
            log.info("POST-to-visible at %.0f messages/s for %.0f s", plan.visible_rate, plan.visible_seconds)
            for system in random.sample(systems, len(systems)):
                phase_visible(plan, system)
        if "drain" in phases:
            log.info("drain rate with 2 consumers, %d messages", plan.drain_messages)
            for system in random.sample(systems, len(systems)):
                phase_drain(plan, system)
        if "balance" in phases:
            log.info("POST /facade with one logging instance %d ms slower, LB_POLICY random and p2c side by side",
                     DELAY_MS)  # fmt: skip
            phase_balance(plan, systems[0], log_dir / systems[0].label)
        found = None
        if "profile" in phases:
            log.info("profiling %s's workers with py-spy --gil, %d s of POST, %d s of GET",
                     systems[0].label, PROFILE_SECONDS, PROFILE_SECONDS)  # fmt: skip
            found = phase_profile(plan, systems[0])
        if "reload" in phases:
            log.info("./scripts/up with %s messages in PostgreSQL (filled with COPY)", f"{RELOAD_MESSAGES:,}")
            post["reload"] = phase_reload(log_dir / "reload")
        results = summarize(plan, [*systems, memory], post)
        if found:
            results["profile"] = found

    results["meta"] = report.machine(command, dataclasses.asdict(plan), time.monotonic() - started)
    if len(systems) > 1:
        results["meta"]["baseline_label"] = systems[1].label
    Path("bench-results.json").write_text(json.dumps(results, indent=2) + "\n")
    report.plot(results, Path("bench-plot.png"))
    if report.page_plot(results, Path("bench-page-plot.png")):
        log.info("wrote bench-page-plot.png")
    table = report.markdown(results)
    sys.stdout.write("\n" + table + "\n")
    log.info("wrote bench-results.json and bench-plot.png (%.0f s in all)", time.monotonic() - started)
    if args.docs:
        report.write_docs(table, ROOT / "docs" / "BENCHMARKS.md", Path("bench-plot.png"), ROOT / "docs" / "bench.png")
        if Path("bench-page-plot.png").is_file() and "page" in phases:
            shutil.copyfile("bench-page-plot.png", ROOT / "docs" / "bench-page.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
