"""What servicekit.metrics counts, in one process (no PROMETHEUS_MULTIPROC_DIR: the default registry).
tests/integration/test_metrics.py checks the sums across gunicorn's workers on a real stack."""

from __future__ import annotations

import json
import urllib.parse

import requests
from flask import Flask
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from devstack import free_port
from facade.backends import LOGGING_SERVICE, Backends
from facade.settings import FacadeSettings
from servicekit import metrics
from servicekit.discovery import Instance
from servicekit.web import configure_app

SETTINGS = FacadeSettings.from_env("facade-service", 8080, env={})


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class TwoInstances:
    found = (Instance("logging-a-1", "127.0.0.1", 1), Instance("logging-b-2", "127.0.0.1", 2))

    def instances(self, service: str, timeout: float = 0.0) -> tuple[Instance, ...]:
        return self.found

    def close(self) -> None:
        pass


class BrokenThenStored:
    """Port 1 answers 500, port 2 stores: whichever is picked first, the call ends at port 2."""

    trust_env = True

    def post(self, url: str, **kwargs) -> requests.Response:
        answer = requests.Response()
        answer.status_code = 500 if urllib.parse.urlsplit(url).port == 1 else 201
        answer._content = json.dumps({}).encode()
        return answer

    def close(self) -> None:
        pass


def test_every_attempt_failure_and_retry_is_counted_by_instance():
    attempts = {
        i.id: value("upstream_attempts_total", service=LOGGING_SERVICE, instance=i.id) for i in TwoInstances.found
    }
    failures = value("upstream_failures_total", service=LOGGING_SERVICE, instance="logging-a-1", reason="HTTP 500")
    retries = value("upstream_retries_total", service=LOGGING_SERVICE, instance="logging-b-2")
    # Every failure may be retried here: the budget is upstream/retry_budget's own test.
    settings = FacadeSettings.from_env("facade-service", 8080, env={"RETRY_BUDGET_MINIMUM": "100"})
    backends = Backends(settings, TwoInstances(), session=BrokenThenStored())  # type: ignore[arg-type]
    first_tries = {"logging-a-1": 0, "logging-b-2": 0}
    for _ in range(20):
        before = value("upstream_attempts_total", service=LOGGING_SERVICE, instance="logging-a-1")
        assert backends.log_message("id", "hello").by == "logging-b-2"
        first_tries[
            "logging-a-1"
            if value("upstream_attempts_total", service=LOGGING_SERVICE, instance="logging-a-1") > before
            else "logging-b-2"
        ] += 1
    failed_first = first_tries["logging-a-1"]
    assert (
        value("upstream_attempts_total", service=LOGGING_SERVICE, instance="logging-a-1")
        == attempts["logging-a-1"] + failed_first
    )
    assert (
        value("upstream_attempts_total", service=LOGGING_SERVICE, instance="logging-b-2")
        == attempts["logging-b-2"] + 20
    )
    assert (
        value("upstream_failures_total", service=LOGGING_SERVICE, instance="logging-a-1", reason="HTTP 500")
        == failures + failed_first
    )
    assert value("upstream_retries_total", service=LOGGING_SERVICE, instance="logging-b-2") == retries + failed_first


def test_an_ejection_is_counted_for_its_instance():
    before = value("upstream_ejections_total", service=LOGGING_SERVICE, instance="logging-a-1")
    metrics.count_ejection(LOGGING_SERVICE, "logging-a-1")
    assert value("upstream_ejections_total", service=LOGGING_SERVICE, instance="logging-a-1") == before + 1


def test_requests_are_counted_by_route_not_by_path_and_served_as_prometheus_text():
    app = Flask(__name__)
    configure_app(app, SETTINGS)
    app.add_url_rule("/items/<name>", "item", lambda name: "ok")
    client = app.test_client()
    before = value("http_requests_total", method="GET", route="/items/<name>", status="200")
    unmatched = value("http_requests_total", method="GET", route=metrics.UNMATCHED, status="404")
    for name in ("a", "b", "c"):
        assert client.get(f"/items/{name}").status_code == 200
    assert client.get("/no/such/path").status_code == 404
    assert value("http_requests_total", method="GET", route="/items/<name>", status="200") == before + 3
    assert value("http_requests_total", method="GET", route=metrics.UNMATCHED, status="404") == unmatched + 1

    # The app itself has no /metrics: they name instances and hosts, and are served on a port of their own.
    assert client.get("/metrics").status_code == 404
    assert value("http_requests_total", method="GET", route=metrics.UNMATCHED, status="404") == unmatched + 2
    server = metrics.serve("127.0.0.1", free_port(), SETTINGS.accepted_host_names)
    try:
        scraped = requests.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5)
        rebound = requests.get(
            f"http://127.0.0.1:{server.server_port}/metrics", headers={"Host": "attacker.example"}, timeout=5
        )
    finally:
        server.shutdown()
        server.server_close()
    assert scraped.status_code == 200
    assert scraped.headers["Content-Type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(scraped.text)}
    assert {"http_requests", "http_request_duration_seconds"} <= names
    assert rebound.status_code == 421 and set(rebound.json()) == {"error"}


def test_a_watch_s_age_is_derived_at_scrape_time_from_its_last_answer():
    metrics.observe_watch("some-service", 3, answered=True)
    text = metrics.exposition().decode()
    ages = {
        sample.labels["service"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == metrics.WATCH_AGE
        for sample in family.samples
    }
    assert 0 <= ages["some-service"] < 5
    assert value("discovery_instances", service="some-service") == 3


def test_traffic_counts_every_route_but_health_checks_and_scrapes():
    from stackctl.stack_status import Traffic, served_requests, traffic_table

    text = "\n".join(
        [
            "# TYPE http_requests_total counter",
            'http_requests_total{method="POST",route="/logging",status="201"} 7.0',
            'http_requests_total{method="GET",route="/logging",status="200"} 2.0',
            'http_requests_total{method="GET",route="/health",status="200"} 50.0',
            'http_requests_total{method="GET",route="/metrics",status="200"} 4.0',
            'http_requests_total{method="GET",route="unmatched",status="404"} 1.0',
            "",
        ]
    )
    assert served_requests(text) == 10
    rows = [
        Traffic("logging-service", "logging-a", "127.0.0.1:1", "passing", 30.0),
        Traffic("logging-service", "logging-b", "127.0.0.1:2", "passing", 10.0),
        Traffic("logging-service", "logging-c", "127.0.0.1:3", "critical", None),
    ]
    lines = [line.split() for line in traffic_table(rows)]
    assert lines[1][3:] == ["passing", "30", "75%"]
    assert lines[2][3:] == ["passing", "10", "25%"]
    assert lines[3][3:] == ["critical", "-", "-"]


def made_up_methods(count: int) -> list[str]:
    """Methods gunicorn accepts (3 to 20 upper-case letters) that no RFC defines."""
    return ["X" + "".join(chr(ord("A") + (n // 26**k) % 26) for k in range(3)) for n in range(count)]


def series() -> int:
    """How many series this process's exposition has."""
    return sum(len(family.samples) for family in text_string_to_metric_families(metrics.exposition().decode()))


def test_made_up_methods_are_counted_as_other_and_add_no_series():
    app = Flask(__name__)
    configure_app(app, SETTINGS)
    app.add_url_rule("/items/<name>", "item", lambda name: "ok")
    client = app.test_client()
    assert client.open("/items/a", method="BREW").status_code == 405
    other = value("http_requests_total", method="other", route=metrics.UNMATCHED, status="405")
    before = series()
    for method in made_up_methods(300):
        assert client.open("/items/a", method=method).status_code == 405
    assert series() == before, "a made-up method made series of its own"
    assert value("http_requests_total", method="other", route=metrics.UNMATCHED, status="405") == other + 300
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"):
        client.open("/items/a", method=method)
        assert value("http_requests_total", method=method, route="/items/<name>", status="200") or value(
            "http_requests_total", method=method, route=metrics.UNMATCHED, status="405"
        ), method


def upstream_instances(service: str) -> set[str]:
    return {
        sample.labels["instance"]
        for family in text_string_to_metric_families(metrics.exposition().decode())
        if family.name.startswith("upstream_")
        for sample in family.samples
        if sample.labels.get("service") == service
    }


def test_an_instance_that_left_consul_leaves_the_scrape_and_comes_back_with_its_counts():
    service = "left-consul-service"
    for instance in ("a", "b"):
        metrics.count_attempt(service, instance, retry=True)
        metrics.count_failure(service, instance, "HTTP 500")
        metrics.count_ejection(service, instance)
    assert upstream_instances(service) == {"a", "b"}, "before any answer of Consul's, nothing is left out"
    metrics.observe_watch(service, 1, answered=True, registered=frozenset({"b", "c"}))
    assert upstream_instances(service) == {"b"}
    metrics.observe_watch(service, 0, answered=False)  # Consul unreachable: what it said last still holds
    assert upstream_instances(service) == {"b"}
    metrics.observe_watch(service, 2, answered=True, registered=frozenset({"a", "b"}))
    assert upstream_instances(service) == {"a", "b"}
    assert value("upstream_attempts_total", service=service, instance="a") == 1
