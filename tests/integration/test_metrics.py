"""GET /metrics on a real stack: the counters add up to the requests sent, across gunicorn's workers and
across a worker's death, and a scrape costs Consul nothing."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from devstack import ROOT, Load, eventually, free_port, metrics_url, prometheus_counter, start_service
from devstack.stubs import StubInstance
from servicekit.settings import instance_id

TIMEOUT = 10
POSTS = 60
GETS = 10


def scrape(agent, service) -> dict[str, list[tuple[dict[str, str], float]]]:
    """sample name -> [(labels, value)] of one instance's /metrics, found as Prometheus finds it: through
    the instance's Consul meta."""
    url = metrics_url(agent, service)
    assert url is not None, f"{service.instance_id} registered no metrics"
    return scrape_url(url)


def scrape_url(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = requests.get(url, timeout=TIMEOUT)
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
        facade = scrape(stack.agent, stack.facade)
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
        served = scrape(stack.agent, service)
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
        messages = scrape(stack.agent, stack.messages[0])
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
        assert meta.get("metrics_port") == str(service.metrics_port), meta

    urls = [metrics_url(stack.agent, service) for service in stack.instances]
    scrapes = 20 * len(urls)
    before = prometheus_counter(stack.agent, "consul_http_")
    started = time.monotonic()
    for n in range(scrapes):
        scrape_url(urls[n % len(urls)])
    elapsed = time.monotonic() - started
    added = prometheus_counter(stack.agent, "consul_http_") - before
    # What runs anyway, counted over as long again without a scrape: each master's registration keeper (one
    # call per ~2 s), the watches' blocking queries renewing (one per 30 s per watch), and the reads of the
    # counter itself. On a loaded machine the scrapes take long enough for that to pass scrapes / 4 alone.
    before = prometheus_counter(stack.agent, "consul_http_")
    time.sleep(elapsed)
    anyway = prometheus_counter(stack.agent, "consul_http_") - before
    # A scrape that asked Consul anything would add one call each.
    assert added - anyway < scrapes / 4, (
        f"{added} Consul calls during {scrapes} scrapes ({elapsed:.1f} s), {anyway} in as long without"
    )


def test_status_traffic_prints_each_instance_with_its_share_and_its_health(own_stack):
    stack = own_stack(logging=2, messages=1)
    with requests.Session() as session:
        for n in range(POSTS):
            assert session.post(stack.url, json={"msg": f"share-{n}"}, timeout=TIMEOUT).status_code == 201
    facade = scrape(stack.agent, stack.facade)
    attempts = {
        labels["instance"]: value for labels, value in facade["upstream_attempts_total"] if logging_service(labels)
    }

    done = subprocess.run(
        [sys.executable, "-m", "stackctl", "status", "--traffic"],
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


@pytest.mark.parametrize("planted", ["another user's directory", "a symlink"])
def test_an_instance_refuses_a_metrics_directory_that_is_not_its_own_and_does_not_start(
    planted, consul_agent, log_dir, tmp_path
):
    """Another local user who made the instance's metrics directory first (or a symlink in its place) would
    have the master create and truncate files where that user chooses: the instance says so and exits."""
    port = free_port()
    base = tmp_path / "metrics"
    base.mkdir(mode=0o700)
    path = base / instance_id("logging-service", port)
    target = tmp_path / "where-the-other-user-points"
    target.mkdir()
    if planted == "a symlink":
        path.symlink_to(target)
        said = "is a symbolic link"
    else:
        path.mkdir(mode=0o700)
        nobody = pwd.getpwnam("nobody")
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
        said = "belongs to nobody"
    service = start_service("logging-service", consul_agent, log_dir, port=port, env={"METRICS_DIR": str(base)})
    try:
        assert service.proc.popen.wait(30) == 1, service.proc.tail()
    finally:
        service.proc.stop()
    log_text = service.proc.log_path.read_text()
    assert said in log_text and str(path) in log_text, service.proc.tail()
    assert list(target.iterdir()) == []
    assert planted == "a symlink" or list(path.iterdir()) == []
    assert service.instance_id not in consul_agent.client().agent.services()


def test_metrics_are_served_on_the_port_in_consul_meta_and_not_on_the_public_port(own_stack):
    """The metrics name instances and hosts, which no client of the public port may learn; Prometheus finds
    the metrics port in each instance's Consul meta."""
    stack = own_stack(logging=1, messages=1)
    registered = stack.agent.client().agent.services()
    for service in stack.instances:
        meta = registered[service.instance_id]["Meta"]
        assert meta.get("metrics_port") not in (None, str(service.port)), meta
        public = requests.get(f"{service.url}/metrics", timeout=TIMEOUT)
        assert public.status_code == 404 and set(public.json()) == {"error"}, public.text[:300]
        assert service.instance_id not in public.text
        url = f"http://{registered[service.instance_id]['Address']}:{meta['metrics_port']}{meta['metrics_path']}"
        samples = scrape_url(url)
        assert "http_requests_total" in samples
        # When the master started (the InstanceRestarting alert counts its changes), once, whatever the workers.
        [(_, started)] = samples["instance_start_time_seconds"]
        assert psutil.Process(service.proc.pid).create_time() - 1 <= started <= time.time(), started
    # The 404s were counted like any unknown route, on the public port's own counters.
    facade = scrape(stack.agent, stack.facade)
    assert total(facade, "http_requests_total", route("GET", "unmatched")) >= 1


def test_an_instance_whose_metrics_port_is_taken_says_so_and_does_not_start(consul_agent, log_dir):
    """Rather than run, and register, with metrics that nobody can scrape."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        taken = holder.getsockname()[1]
        service = start_service("logging-service", consul_agent, log_dir, env={"METRICS_PORT": str(taken)})
        try:
            assert service.proc.popen.wait(30) == 1, service.proc.tail()
        finally:
            service.proc.stop()
    assert f"cannot serve the metrics on 127.0.0.1:{taken} (METRICS_PORT)" in service.proc.log_path.read_text()
    assert service.instance_id not in consul_agent.client().agent.services()


def own_metrics(service) -> str:
    """The metrics URL of a service the test started (its port is the one devstack gave it)."""
    return f"http://127.0.0.1:{service.metrics_port}/metrics"


def series(url: str) -> int:
    """How many series a scrape of `url` has."""
    return sum(len(samples) for samples in scrape_url(url).values())


def test_made_up_http_methods_add_no_series_to_the_scrape(facade_before):
    facade = facade_before([StubInstance("logging-service"), StubInstance("messages-service")])
    made_up = ["X" + "".join(chr(ord("A") + (n // 26**k) % 26) for k in range(3)) for n in range(301)]
    with requests.Session() as session:
        # gunicorn takes any 3 to 20 upper-case letters as a method; one first, so `other` has its series.
        assert session.request(made_up[0], f"{facade.url}/facade", timeout=TIMEOUT).status_code == 405
        series(own_metrics(facade))  # a first scrape, so the count starts from a settled exposition
        before = series(own_metrics(facade))
        for method in made_up[1:]:
            assert session.request(method, f"{facade.url}/facade", timeout=TIMEOUT).status_code == 405
    after = series(own_metrics(facade))
    # Before: 300 methods added 5,418 exposition lines on the default stack (issue 18).
    assert after == before, f"{after - before} series for 300 made-up methods"
    other = total(
        scrape_url(own_metrics(facade)), "http_requests_total", lambda labels: labels.get("method") == "other"
    )
    assert other == 301


def upstream_instances(url: str, service: str) -> set[str]:
    return {
        labels["instance"]
        for name, samples in scrape_url(url).items()
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
    assert upstream_instances(own_metrics(stack.facade), "logging-service") == both
    leaving, staying = stack.logging

    leaving.proc.send_signal(signal.SIGTERM)  # it leaves Consul at once, then drains

    def gone() -> None:
        # Every scrape, whichever worker answers it.
        for _ in range(4):
            assert upstream_instances(own_metrics(stack.facade), "logging-service") == {staying.instance_id}

    eventually(gone, 15, what="the series of the instance that left Consul to leave the scrape")
    leaving.proc.stop()
    stack.replace(leaving)  # the same port, so the same instance id
    stack.wait_all_passing()

    def back() -> None:
        for _ in range(4):
            assert upstream_instances(own_metrics(stack.facade), "logging-service") == both

    eventually(back, 15, what="the series of the instance that came back")
    attempts = total(
        scrape_url(own_metrics(stack.facade)),
        "upstream_attempts_total",
        lambda labels: labels.get("instance") == leaving.instance_id,
    )
    assert attempts >= 1, "it came back with the counts it had"
