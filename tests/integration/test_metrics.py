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
from devstack.stubs import StubInstance

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
    # A scrape that asked Consul anything would add one call each. What runs anyway in the meantime: each
    # master's registration keeper (one call per ~2 s), the watches' blocking queries renewing (one per 30 s
    # per watch), and the second read of the counter itself.
    assert added < scrapes / 4, f"{added} Consul calls during {scrapes} scrapes ({elapsed:.1f} s)"


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


def exposition_lines(url: str) -> int:
    response = requests.get(f"{url}/metrics", timeout=TIMEOUT)
    assert response.status_code == 200
    return len(response.text.splitlines())


def test_made_up_http_methods_add_no_series_to_the_scrape(facade_before):
    facade = facade_before([StubInstance("logging-service"), StubInstance("messages-service")])
    made_up = ["X" + "".join(chr(ord("A") + (n // 26**k) % 26) for k in range(3)) for n in range(301)]
    with requests.Session() as session:
        # gunicorn takes any 3 to 20 upper-case letters as a method; one first, so `other` has its series.
        assert session.request(made_up[0], f"{facade.url}/facade", timeout=TIMEOUT).status_code == 405
        exposition_lines(facade.url)  # so that GET /metrics has its series before the count starts
        before = exposition_lines(facade.url)
        for method in made_up[1:]:
            assert session.request(method, f"{facade.url}/facade", timeout=TIMEOUT).status_code == 405
    after = exposition_lines(facade.url)
    # Before: 300 methods added 5,418 lines on the default stack (issue 18).
    assert after == before, f"{after - before} exposition lines for 300 made-up methods"
    other = total(scrape(facade.url), "http_requests_total", lambda labels: labels.get("method") == "other")
    assert other == 301


def upstream_instances(url: str, service: str) -> set[str]:
    return {
        labels["instance"]
        for name, samples in scrape(url).items()
        if name.startswith("upstream_")
        for labels, _ in samples
        if labels.get("service") == service
    }


def test_the_upstream_series_of_an_instance_that_left_consul_go_and_come_back_with_it(own_stack):
    stack = own_stack(logging=2, messages=1)
    with requests.Session() as session:
        for n in range(40):
            assert session.post(stack.url, json={"msg": f"series-{n}"}, timeout=TIMEOUT).status_code == 201
    both = {service.instance_id for service in stack.logging}
    assert upstream_instances(stack.facade.url, "logging-service") == both
    leaving, staying = stack.logging

    leaving.proc.send_signal(signal.SIGTERM)  # it leaves Consul at once, then drains

    def gone() -> None:
        # Every scrape, whichever worker answers it.
        for _ in range(4):
            assert upstream_instances(stack.facade.url, "logging-service") == {staying.instance_id}

    eventually(gone, 15, what="the series of the instance that left Consul to leave the scrape")
    leaving.proc.stop()
    stack.replace(leaving)  # the same port, so the same instance id
    stack.wait_all_passing()

    def back() -> None:
        for _ in range(4):
            assert upstream_instances(stack.facade.url, "logging-service") == both

    eventually(back, 15, what="the series of the instance that came back")
    attempts = total(
        scrape(stack.facade.url),
        "upstream_attempts_total",
        lambda labels: labels.get("instance") == leaving.instance_id,
    )
    assert attempts >= 1, "it came back with the counts it had"
