"""A bounded soak of the whole system on free loopback ports: a steady POST rate for --minutes, with one
instance of each kind killed (-9) and started again along the way. Run it through ./scripts/soak.

At the end it checks that every acknowledged (201) message is in the log and was consumed at most once,
counts what a killed messages instance took with it, and prints the RSS of every process at the start
and the end. The figures go to <log dir>/soak.json; the exit status is 1 when an acknowledged message
was lost from the log or consumed twice.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import time
import uuid
from pathlib import Path

import psutil

from devstack.load import Load
from devstack.pages import read_all
from devstack.processes import ROOT, eventually
from devstack.stack import Service, Stack, running_stack, wait_passing

log = logging.getLogger("soak")
TIMEOUT = 10
# One GET /facade for every GETS_EVERY POSTs.
GETS_EVERY = 25


def rss_mib(pid: int) -> float:
    """The resident memory of a process and its children (a gunicorn master and its workers)."""
    try:
        process = psutil.Process(pid)
        return round(sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20, 1)
    except psutil.NoSuchProcess:
        return 0.0


def held_by(service: Service) -> list[str]:
    return read_all(f"{service.url}/messages", "messages")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (default 10)")
    parser.add_argument("--rate", type=float, default=5.0, help="POSTs a second (default 5)")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 60 or not 0 < args.rate <= 50:
        parser.error("--minutes must be in (0, 60] and --rate in (0, 50]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("hazelcast").setLevel(logging.WARNING)
    log_dir = ROOT / "tests" / ".logs" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    log.info("logs in %s; starting Consul, 3 Hazelcast members and the services", log_dir)
    with running_stack(log_dir, members=3, logging=3, messages=2, facades=1) as stack:
        return soak(args, log_dir, stack)


def processes(stack: Stack) -> dict[str, int]:
    table = {s.instance_id: s.proc.pid for s in stack.instances}
    table.update({proc.name: proc.pid for proc in stack.cluster.members.values()})
    table["consul"] = stack.agent.proc.pid
    return table


def soak(args, log_dir: Path, stack: Stack) -> int:
    duration = args.minutes * 60
    started = time.monotonic()
    url = stack.url
    tag = uuid.uuid4().hex[:6]
    posts = Load(
        lambda s, n: s.post(url, json={"msg": f"soak-{tag}-{n}"}, timeout=TIMEOUT),
        clients=1,
        rate=args.rate,
        max_requests=int(args.rate * duration) + 1,
        max_seconds=duration,
    )
    gets = Load(
        lambda s, n: s.get(url, timeout=TIMEOUT),
        clients=1,
        rate=args.rate / GETS_EVERY,
        max_requests=int(args.rate * duration / GETS_EVERY) + 1,
        max_seconds=duration,
    )
    # Leaving the block early (a failed restart) stops the load before the stack stops.
    with posts, gets:
        rss_start = {name: rss_mib(pid) for name, pid in processes(stack).items()}
        log.info("load at %.1f POST/s for %.1f min; RSS at start (MiB): %s", args.rate, args.minutes, rss_start)

        def acknowledged() -> list[str]:
            return [o.body["msg"] for o in posts.answered(201) if o.body is not None]

        victim_logging = stack.logging[0]
        victim_messages = stack.messages[0]
        victim_member = stack.cluster.ports[0]
        facade = stack.facade
        consumer_last_seen: set[str] = set()
        events = []

        def at(fraction: float) -> None:
            time.sleep(max(0.0, started + fraction * duration - time.monotonic()))

        def restart(service: Service) -> None:
            wait_passing(stack.agent, stack.replace(service), timeout=120)

        def fault(name: str, kill, bring_back) -> None:
            killed = time.monotonic()
            acked_before = len(acknowledged())
            kill()
            at_restart = (time.monotonic() - started) / duration + 0.05
            at(at_restart)
            bring_back()
            events.append(
                {
                    "fault": name,
                    "at_s": round(killed - started),
                    "back_after_s": round(time.monotonic() - killed, 1),
                    "acked_meanwhile": len(acknowledged()) - acked_before,
                }
            )
            log.info("%s: %s", name, events[-1])

        at(0.2)
        fault("kill -9 a logging instance", victim_logging.proc.kill9, lambda: restart(victim_logging))
        at(0.4)

        def kill_consumer():
            consumer_last_seen.update(held_by(victim_messages))
            victim_messages.proc.kill9()

        fault("kill -9 a messages instance", kill_consumer, lambda: restart(victim_messages))
        at(0.6)

        def member_back():
            stack.cluster.start_member(victim_member)
            stack.cluster.wait_passing(120)

        fault("kill -9 a Hazelcast member", stack.cluster.members[victim_member].kill9, member_back)
        at(0.8)
        fault("kill -9 the facade", facade.proc.kill9, lambda: restart(facade))

        posts.finish(duration + 60)
        gets.finish(duration + 60)
    rss_end = {name: rss_mib(pid) for name, pid in processes(stack).items()}
    acked = set(acknowledged())
    logged = set(read_all(url, "logging"))
    lost_from_log = acked - logged

    def drained():
        counts = collections.Counter(m for s in stack.messages for m in held_by(s) if m in acked)
        expected = acked - consumer_last_seen
        missing = expected - set(counts)
        # A message the killed consumer took after we last looked is gone with it: allow a few, report them.
        assert len(missing) <= 5, f"{len(missing)} not consumed yet"
        return counts, missing

    counts, lost_with_consumer = eventually(drained, timeout=60, interval=1)
    duplicates = sorted(m for m, n in counts.items() if n > 1) + sorted(set(counts) & consumer_last_seen)
    figures = {
        "minutes": args.minutes,
        "rate_per_s": args.rate,
        "posts_acknowledged": len(acked),
        "posts_failed": dict(collections.Counter(o.kind for o in posts.snapshot() if o.status != 201)),
        "gets": dict(collections.Counter(o.kind for o in gets.snapshot())),
        "faults": events,
        "acknowledged_lost_from_log": len(lost_from_log),
        "consumed_twice": len(duplicates),
        "consumed_by_the_killed_consumer_before_its_death": len(consumer_last_seen & acked),
        "taken_by_the_killed_consumer_but_not_seen": len(lost_with_consumer),
        "rss_mib_start": rss_start,
        "rss_mib_end": rss_end,
        "restarted": [victim_logging.instance_id, victim_messages.instance_id, f"hazelcast-{victim_member}",
                      facade.instance_id],
    }  # fmt: skip
    (log_dir / "soak.json").write_text(json.dumps(figures, indent=1))
    log.info("figures: %s", json.dumps(figures, indent=1))
    ok = not lost_from_log and not duplicates
    log.info("%s: %d acknowledged, %d lost from the log, %d consumed twice", "PASS" if ok else "FAIL",
             len(acked), len(lost_from_log), len(duplicates))  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
