"""GET /metrics on a real stack: the counters add up to the requests sent, across gunicorn's workers and
across a worker's death, and a scrape costs Consul nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import requests
from prometheus_client.parser import text_string_to_metric_families

from devstack import ROOT, Load, eventually, prometheus_counter

TIMEOUT = 10
POSTS = 60
GETS = 10


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """sample name -> [(labels, value)] of one instance's /metrics."""
    response = requests.get(f"{url}/metrics", timeout=TIMEOUT)
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"].startswith("text/plain"), response.headers["Content-Type"]
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples, name: str, where: Callable[[dict[str, str]], bool] = lambda labels: True) -> float:
    return sum(value for labels, value in samples.get(name, []) if where(labels))


def route(method: str, path: str) -> Callable[[dict[str, str]], bool]:
    return lambda labels: labels.get("method") == method and labels.get("route") == path


def logging_service(labels: dict[str, str]) -> bool:
    return labels.get("service") == "logging-service"


def workers(service) -> set[int]:
    return {child.pid for child in psutil.Process(service.proc.pid).children()}


def test_the_counters_add_up_to_the_requests_sent_and_survive_a_dead_worker(own_stack, tmp_path):
    stack = own_stack(logging=2, messages=1, env={"METRICS_DIR": str(tmp_path)})
    # Concurrent clients, so that both of the facade's workers serve some of them.
    with Load(
        lambda session, n: session.post(stack.url, json={"msg": f"counted-{n}"}, timeout=TIMEOUT),
        clients=4,
        max_requests=POSTS,
        max_seconds=60,
    ) as posts:
        posts.finish()
    assert len(posts.answered(201)) == POSTS, posts.failures()[:3]
    with requests.Session() as session:
        for _ in range(GETS):
            response = session.get(stack.url, params={"limit": 5}, timeout=TIMEOUT)
            assert response.status_code == 200, response.text

    def facade_counted() -> dict:
        facade = scrape(stack.facade.url)
        assert total(facade, "http_requests_total", route("POST", "/facade")) == POSTS
        assert total(facade, "http_requests_total", route("GET", "/facade")) == GETS
        return facade

    facade = facade_counted()
    assert total(facade, "http_requests_total", lambda labels: labels.get("status") == "201") == POSTS
    assert total(facade, "http_request_duration_seconds_count", route("POST", "/facade")) == POSTS
    assert total(facade, "queue_offers_total", lambda labels: labels.get("result") == "queued") == POSTS

    # Every attempt the facade counted at a logging instance is a request that instance counted, and back.
    attempts = {
        labels["instance"]: value for labels, value in facade["upstream_attempts_total"] if logging_service(labels)
    }
    assert sum(attempts.values()) == POSTS + GETS, attempts
    for service in stack.logging:
        served = scrape(service.url)
        assert total(served, "http_requests_total", lambda labels: labels.get("route") == "/logging") == attempts.get(
            service.instance_id, 0
        ), service.instance_id
    assert total(facade, "upstream_failures_total") == 0
    assert total(facade, "upstream_retries_total") == 0

    # The discovery watch's own state, seen by every worker.
    assert total(facade, "discovery_instances", logging_service) == len(stack.logging)
    ages = [value for labels, value in facade["discovery_watch_age_seconds"] if logging_service(labels)]
    assert ages and 0 <= max(ages) < 60, ages

    # The consumer took every message the facade queued.
    def consumed() -> None:
        messages = scrape(stack.messages[0].url)
        assert total(messages, "queue_items_taken_total") == POSTS
        assert total(messages, "queue_polls_total") >= POSTS

    eventually(consumed, TIMEOUT, what="the consumer's counters")

    # A worker that counted some of them (its file is there), killed without a goodbye: its counts stay in
    # the instance's total.
    before = workers(stack.facade)
    files = tmp_path / stack.facade.instance_id
    victim = next(pid for pid in sorted(before) if (files / f"counter_{pid}.db").exists())
    psutil.Process(victim).send_signal(signal.SIGKILL)

    def replaced() -> None:
        now = workers(stack.facade)
        assert victim not in now and len(now) == len(before), now

    eventually(replaced, 30, what="gunicorn replacing the killed worker")
    facade_counted()


def test_a_scrape_makes_no_consul_call_and_consul_knows_where_to_scrape(own_stack):
    stack = own_stack(logging=1, messages=1)
    services = stack.agent.client().agent.services()
    for service in stack.instances:
        meta = services[service.instance_id]["Meta"]
        assert meta.get("metrics_path") == "/metrics", meta
        assert requests.get(f"{service.url}{meta['metrics_path']}", timeout=TIMEOUT).status_code == 200

    scrapes = 20 * len(stack.instances)
    before = prometheus_counter(stack.agent, "consul_http_")
    started = time.monotonic()
    for n in range(scrapes):
        scrape(stack.instances[n % len(stack.instances)].url)
    elapsed = time.monotonic() - started
    added = prometheus_counter(stack.agent, "consul_http_") - before
    # What runs anyway, counted over as long again without a scrape: each master's registration keeper (one
    # call per ~2 s), the watches' blocking queries renewing (one per 30 s per watch), and the reads of the
    # counter itself. On a loaded machine the scrapes take long enough for that to pass scrapes / 4 alone.
    before = prometheus_counter(stack.agent, "consul_http_")
    time.sleep(elapsed)
    anyway = prometheus_counter(stack.agent, "consul_http_") - before
    # A scrape that asked Consul anything would add one call each.
    assert added - anyway < scrapes / 4, f"{added} Consul calls during {scrapes} scrapes ({elapsed:.1f} s), " \
                                         f"{anyway} in as long without"


def test_status_traffic_prints_each_instance_with_its_share_and_its_health(own_stack):
    stack = own_stack(logging=2, messages=1)
    with requests.Session() as session:
        for n in range(POSTS):
            assert session.post(stack.url, json={"msg": f"share-{n}"}, timeout=TIMEOUT).status_code == 201
    facade = scrape(stack.facade.url)
    attempts = {
        labels["instance"]: value for labels, value in facade["upstream_attempts_total"] if logging_service(labels)
    }

    done = subprocess.run(
        [sys.executable, "-m", "servicekit.ops", "status", "--traffic"],
        env={**os.environ, "CONSUL_HTTP_ADDR": stack.agent.addr},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "INSTANCE", "ADDRESS", "HEALTH", "REQUESTS", "SHARE"], done.stdout
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    for service in stack.instances:
        row = rows[service.instance_id]
        assert row[3] == "passing", row
    # Each logging instance's share is what the facade sent it, over what it sent to logging.
    for service in stack.logging:
        row = rows[service.instance_id]
        assert float(row[4]) == attempts[service.instance_id], (row, attempts)
        share = 100 * attempts[service.instance_id] / sum(attempts.values())
        assert row[5] == f"{share:.0f}%", (row, attempts)
    assert rows[stack.facade.instance_id][4:] == [str(POSTS), "100%"], rows[stack.facade.instance_id]
