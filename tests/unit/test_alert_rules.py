"""The alert rules (conf/prometheus/alerts.yml): Prometheus accepts them, each fires on what it is for and stays
quiet on what is close to it (promtool's unit tests in tests/unit/prometheus/), and each watches metrics the
services export. promtool comes from Debian's prometheus package (./scripts/install): without it these fail."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from devstack import deploy_doc
from servicekit import metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "conf" / "prometheus" / "alerts.yml"
TESTS = Path(__file__).parent / "prometheus" / "alerts_test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=TESTS.parent)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_prometheus_accepts_the_rules():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_each_alert_fires_on_what_it_is_for_and_not_on_what_is_close_to_it():
    tested = promtool("test", "rules", TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_test_that_sees_it_fire_and_says_what_to_do():
    firing = {
        case["alertname"]
        for test in yaml.safe_load(TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    for rule in rules():
        assert rule["alert"] in firing, f"{rule['alert']} is never seen firing in {TESTS.name}"
        assert rule["labels"]["severity"] in ("page", "ticket"), rule
        assert rule["annotations"]["summary"] and rule["annotations"]["action"], rule


def test_the_rules_watch_only_metrics_the_services_export():
    exported = set(re.findall(r'"([a-z_]+)"', Path(metrics.__file__).read_text()))
    used = set()
    for rule in rules():
        # Without the label lists, matchers and ranges, what is left is metric names, functions and numbers.
        bare = re.sub(r"\bby \([^)]*\)|\{[^}]*\}|\[[^\]]*\]", "", rule["expr"])
        used |= set(re.findall(r"\b([a-z_][a-z0-9_]*)\b(?!\s*\()", bare))
    assert used, "no metric found in the rules"
    for name in used:
        assert name == "up" or name.removesuffix("_total") in exported, f"{name}: no such metric in servicekit.metrics"


def test_the_queue_alert_fires_below_a_tenth_of_the_queues_max_size():
    queue = next(q for q in ET.parse(ROOT / "conf" / "hazelcast.xml").getroot() if q.get("name") == "${hz.queue}")
    max_size = int(next(e for e in queue if e.tag.endswith("max-size")).text or 0)
    (rule,) = [r for r in rules() if r["alert"] == "QueueAlmostFull"]
    assert rule["expr"] == f"min(queue_remaining_capacity) < {max_size // 10}"
    assert f"{max_size:,}" in rule["annotations"]["summary"]


def test_deploy_md_says_what_to_do_when_each_alert_fires():
    table = deploy_doc.alerts_table()
    for rule in rules():
        action = " ".join(rule["annotations"]["action"].split())
        assert f"| `{rule['alert']}` |" in table and action in table, rule["alert"]
    assert table in (ROOT / "docs" / "DEPLOY.md").read_text()


def test_the_series_the_alerts_count_increases_of_are_exported_at_0_from_the_start():
    """increase() and rate() see no increase in a series' first sample: a series that showed only at its
    first count, at 1, would hide the first failure. A fresh facade and a fresh logging store show them at 0."""
    script = textwrap.dedent(
        """
        from prometheus_client import REGISTRY, generate_latest
        from facade.backends import Backends
        from facade.settings import FacadeSettings
        from logging_svc.store import HazelcastMessageLog
        from tests.unit.test_backends import FixedDiscovery

        Backends(FacadeSettings.from_env("facade-service", 8080, env={}), FixedDiscovery(8081))
        HazelcastMessageLog(None, capacity_bytes=1000)
        print(generate_latest(REGISTRY).decode())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    for series in (
        'store_failures_total{outcome="refused",structure="queue"} 0.0',
        'store_failures_total{outcome="unknown",structure="queue"} 0.0',
        'store_failures_total{outcome="refused",structure="log"} 0.0',
        'store_failures_total{outcome="unknown",structure="log"} 0.0',
        'upstream_retries_refused_total{service="logging-service"} 0.0',
        'upstream_retries_refused_total{service="messages-service"} 0.0',
    ):
        assert series in done.stdout, series
