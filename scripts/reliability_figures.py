"""The measured block of docs/RELIABILITY.md, written from the figures the fault tests and the soak record.

    ./scripts/reliability-figures            print the block
    ./scripts/reliability-figures --docs     also rewrite it in docs/RELIABILITY.md

Every fault test keeps what it measured in tests/.logs/<run>/<name>.json (`devstack.record`), and
./scripts/soak in tests/.logs/soak-<time>/soak.json. This gathers every run found there, so each figure
in the document says how many runs it comes from, their range, and the command that measures it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from devstack import ROOT, replace_block

LOGS = ROOT / "tests" / ".logs"
DOC = ROOT / "docs" / "RELIABILITY.md"


@dataclass(frozen=True)
class Figure:
    record: str  # the name given to devstack.record (or "soak")
    key: str  # a key of that record; a list counts its length, a dict sums its values
    label: str
    command: str


CHURN = "./scripts/test tests/integration/test_churn.py"
FAULTS = "./scripts/test tests/integration/test_hazelcast_faults.py"
SOAK = "./scripts/soak --minutes 2"
FLOOD = "./scripts/test tests/integration/test_capacity.py -k flood"
HOSTS = "./scripts/test tests/integration/test_hosts.py"

FIGURES = [
    Figure("member-loss", "acknowledged", "member kill -9 under load: POSTs acknowledged", f"{FAULTS} -k member"),
    Figure("member-loss", "acknowledged_lost", "member kill -9: acknowledged lost", f"{FAULTS} -k member"),
    Figure("member-loss", "failed", "member kill -9: POSTs refused (503, never acknowledged)", f"{FAULTS} -k member"),
    Figure("member-loss", "slowest_post_s", "member kill -9: slowest POST (s)", f"{FAULTS} -k member"),
    Figure(
        "member-loss",
        "failures_until_s_after_kill",
        "member kill -9: last refusal after the kill (s)",
        f"{FAULTS} -k member",
    ),
    Figure(
        "member-loss",
        "all_healthy_after_s",
        "member kill -9: POST, GET and every /health fine after (s)",
        f"{FAULTS} -k member",
    ),
    Figure("consumer-crash", "acknowledged", "consumer kill -9: POSTs acknowledged", f"{FAULTS} -k consumer"),
    Figure(
        "consumer-crash",
        "lost_with_the_victim",
        "consumer kill -9: taken by the dead consumer, lost with it",
        f"{FAULTS} -k consumer",
    ),
    Figure(
        "hazelcast-late",
        "health_503_after_boot_s",
        "no cluster at start: serving 503 after boot (s)",
        f"{FAULTS} -k without_hazelcast",
    ),
    Figure(
        "hazelcast-late",
        "health_200_after_cluster_start_s",
        "no cluster at start: /health 200 after the cluster starts (s)",
        f"{FAULTS} -k without_hazelcast",
    ),
    Figure(
        "consul-agent-restart",
        "all_passing_after_agent_back_s",
        "agent restart: every instance passing after the agent is back (s)",
        f"{CHURN} -k register_again",
    ),
    Figure("consul-agent-restart", "failed", "agent restart: failed requests", f"{CHURN} -k register_again"),
    Figure(
        "consul-down-mid-run",
        "served_while_down",
        "agent down mid-run: POSTs served while it was down",
        f"{CHURN} -k serves_from_last_known",
    ),
    Figure("consul-down-mid-run", "failed", "agent down mid-run: failed POSTs", f"{CHURN} -k serves_from_last_known"),
    Figure(
        "consul-down-at-startup",
        "passing_after_agent_back_s",
        "agent down at an instance's start: passing after the agent is back (s)",
        f"{CHURN} -k started_while_consul",
    ),
    Figure(
        "every-logging-instance-critical",
        "post_503_s",
        "every logging instance critical: POST answered 503 after (s)",
        "./scripts/test tests/integration/test_discovery_outages.py -k critical",
    ),
    Figure(
        "change-after-agent-restart",
        "kill_to_out_of_rotation_s",
        "agent restarted, then an instance kill -9: out of the facade's rotation after (s)",
        "./scripts/test tests/integration/test_discovery_outages.py -k restarts",
    ),
    Figure(
        "flood", "acknowledged", "flood past the log's capacity (16 clients, 4,000 characters): acknowledged", FLOOD
    ),
    Figure("flood", "refused", "flood: refused (507 log full or 503 queue full, nothing stored)", FLOOD),
    Figure("flood", "lost", "flood: acknowledged lost", FLOOD),
    Figure("flood", "stored_of_capacity", "flood: stored, as a share of the capacity", FLOOD),
    Figure("flood", "slowest_read_s", "flood: slowest GET /facade during it (s)", FLOOD),
    Figure("flood", "slowest_page_s", "flood: slowest page of the walk of the whole log after it (s)", FLOOD),
    Figure(
        "up_reports_a_taken_port",
        "seconds",
        "./scripts/up with a port taken: names the port and its holder after (s)",
        "./scripts/test tests/integration/test_scripts.py -k taken_port",
    ),
    Figure(
        "hosts-consul-leader",
        "new_leader_after_s",
        "several hosts: the Consul leader's host killed, a new leader after (s)",
        f"{HOSTS} -k leader",
    ),
    Figure(
        "hosts-cut",
        "out_of_every_facade_after_s",
        "several hosts: a host cut off under load, out of every other facade's rotation after (s)",
        f"{HOSTS} -k cut_off",
    ),
    Figure("hosts-cut", "acknowledged", "host cut off: POSTs acknowledged", f"{HOSTS} -k cut_off"),
    Figure("hosts-cut", "failed", "host cut off: POSTs not acknowledged", f"{HOSTS} -k cut_off"),
    Figure(
        "hosts-heal",
        "acknowledged_lost",
        "host cut off, then healed: acknowledged lost (not in the log, or not consumed)",
        f"{HOSTS} -k cut_off",
    ),
    Figure(
        "hosts-heal",
        "taken_by_a_poll_under_way_at_the_cut",
        "host cut off, then healed: of those, taken by the cut-off consumer's poll under way at the cut",
        f"{HOSTS} -k cut_off",
    ),
    Figure(
        "hosts-heal",
        "consumed_twice",
        "host cut off, then healed: acknowledged and consumed twice",
        f"{HOSTS} -k cut_off",
    ),
    Figure(
        "hosts-heal",
        "acknowledged_inside_the_cut_host",
        "host cut off: acknowledged by the cut-off host's own facade",
        f"{HOSTS} -k cut_off",
    ),
    Figure(
        "hosts-heal",
        "back_in_every_facade_after_s",
        "host cut off, then healed: back in every other facade's rotation after (s), no restart",
        f"{HOSTS} -k cut_off",
    ),
    Figure(
        "hosts-cut-posts",
        "failed",
        "queue owner's host cut right after up: POSTs through another host failed (503)",
        f"{HOSTS} -k after_a_cut",
    ),
    Figure("hosts-cut-posts", "slowest_s", "queue owner's host cut: slowest POST (s)", f"{HOSTS} -k after_a_cut"),
    Figure(
        "hosts-cut-posts",
        "last_failure_ended_after_s",
        "queue owner's host cut: last failure ended after (s)",
        f"{HOSTS} -k after_a_cut",
    ),
    Figure(
        "hosts-cut-posts-consumed",
        "acknowledged_not_consumed",
        "queue owner's host cut: acknowledged not consumed",
        f"{HOSTS} -k after_a_cut",
    ),
    Figure(
        "hosts-cut-posts-consumed",
        "consumed_twice",
        "queue owner's host cut: consumed twice",
        f"{HOSTS} -k after_a_cut",
    ),
    Figure(
        "hosts-kill",
        "acknowledged",
        "several hosts: a host killed whole under load: POSTs acknowledged",
        f"{HOSTS} -k killed",
    ),
    Figure(
        "hosts-kill",
        "acknowledged_lost",
        "host killed whole: acknowledged lost (not in the log, or not consumed)",
        f"{HOSTS} -k killed",
    ),
    Figure("hosts-kill", "consumed_twice", "host killed whole: acknowledged and consumed twice", f"{HOSTS} -k killed"),
    Figure("hosts-kill", "failed", "host killed whole: POSTs not acknowledged", f"{HOSTS} -k killed"),
    Figure(
        "hosts-kill",
        "out_of_every_facade_after_s",
        "host killed whole: out of every other facade's rotation after (s)",
        f"{HOSTS} -k killed",
    ),
    *(
        Figure(
            "hosts-killed-each-kind",
            f"{kind}_{key}",
            f"several hosts: {kind} kill -9 on app3: {label}",
            f"{HOSTS} -k each_kind",
        )  # fmt: skip
        for kind in ("hazelcast", "logging", "messages", "facade", "consul")
        for key, label in (
            ("started_again_after_s", "started again by supervisord after (s)"),
            ("ready_again_after_s", "the new process ready (registered, joined, answering) after (s)"),
            ("passing_again_after_s", "passing in Consul again after (s)"),
            ("in_every_facade_again_after_s", "in every other facade's rotation again after (s)"),
        )
    ),
    Figure(
        "hosts-killed-each-kind", "posts", "several hosts: each kind killed on app3: POSTs", f"{HOSTS} -k each_kind"
    ),
    Figure("hosts-killed-each-kind", "failed", "each kind killed on app3: POSTs failed", f"{HOSTS} -k each_kind"),
    Figure("hosts-upgrade", "posts", "several hosts: rolling upgrade under 4 clients: POSTs", f"{HOSTS} -k upgrade"),
    Figure("hosts-upgrade", "failed", "rolling upgrade: POSTs failed", f"{HOSTS} -k upgrade"),
    Figure("hosts-upgrade", "acknowledged_lost", "rolling upgrade: acknowledged lost", f"{HOSTS} -k upgrade"),
    Figure("hosts-upgrade", "upgrade_s", "rolling upgrade: three app hosts upgraded in (s)", f"{HOSTS} -k upgrade"),
    Figure("soak", "posts_acknowledged", "soak: POSTs acknowledged", SOAK),
    Figure("soak", "posts_failed", "soak: POSTs not acknowledged (facade dead, member kill)", SOAK),
    Figure("soak", "acknowledged_lost_from_log", "soak: acknowledged lost from the log", SOAK),
    Figure("soak", "consumed_twice", "soak: consumed twice", SOAK),
    Figure(
        "soak", "taken_by_the_killed_consumer_but_not_seen", "soak: taken by the killed consumer, lost with it", SOAK
    ),
]


def value(raw) -> float:
    if isinstance(raw, list):
        return len(raw)
    if isinstance(raw, dict):
        return sum(raw.values())
    return raw


def runs(logs: Path) -> dict[str, list[dict]]:
    """Every recorded figure file under `logs`, by record name, oldest run first."""
    found: dict[str, list[dict]] = {}
    for path in sorted(logs.glob("*/*.json")):
        name = "soak" if path.name == "soak.json" else path.stem
        try:
            found.setdefault(name, []).append(json.loads(path.read_text()))
        except ValueError:
            continue  # a run that was stopped while writing
    return found


def spread(values: list[float]) -> str:
    def fmt(v: float) -> str:
        return f"{v:g}" if isinstance(v, int) or v == int(v) else f"{v:.3g}"

    low, high = min(values), max(values)
    return fmt(low) if low == high else f"{fmt(low)} to {fmt(high)}"


def markdown(found: dict[str, list[dict]]) -> str:
    lines = [
        "| Figure | Runs | Range over the runs | Command |",
        "| --- | --- | --- | --- |",
    ]
    for figure in FIGURES:
        values = [value(r[figure.key]) for r in found.get(figure.record, []) if figure.key in r]
        shown = spread(values) if values else "not run yet"
        lines.append(f"| {figure.label} | {len(values)} | {shown} | `{figure.command}` |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", action="store_true", help=f"rewrite the measured block of {DOC.name}")
    parser.add_argument("--logs", type=Path, default=LOGS, help="where the runs' figures are (default: %(default)s)")
    args = parser.parse_args()
    table = markdown(runs(args.logs))
    print(table)
    if args.docs:
        replace_block(DOC, "reliability:figures", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
