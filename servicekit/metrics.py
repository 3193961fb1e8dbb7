"""What the services count, and `GET /metrics` in Prometheus' text format, on a port of its own.

Every service: requests and their latency by method (the known ones; any other is `other`), route and
status. The facade: its calls to the other services' instances (attempts, failures, retries, ejections;
served for the instances Consul lists), what its discovery watches know, the queue offers and the queue's
room as last seen. messages_svc: its polls and the items it took.

Under gunicorn the values are in files, one set per worker, that a scrape adds up (prometheus-client's
multiprocess mode; servicekit.metrics_files says where they live and why the master sets that up).
Without PROMETHEUS_MULTIPROC_DIR (an app made in a test process) they are in this process's memory.

A scrape reads only those files and this process's clock: no Consul call, no Hazelcast call. What the
watches and the queue check know is written when they learn it, not asked for at scrape time.

The metrics name instances and hosts, which the public port never tells a client, so they are served on
the instance's metrics port (METRICS_PORT, in its Consul meta as `metrics_port`), by a small HTTP server
thread in the gunicorn master (`serve`, started in `when_ready`): the master reads the workers' files like
any one of them would, and a thread of the master is not copied into the workers it forks. On the public
port, /metrics is an unknown route (404).

Gauges are written by every worker, so each says how its values combine (`multiprocess_mode`):
- the instance counts and the watches' last answers: `livemin`, the worst view of any live worker (the
  worker whose watch is the most behind is the one that sends requests to the wrong instances); a dead
  worker's view is dropped by the master's child_exit hook, it no longer sends anything.
- the queue's room: `mostrecent`, the value read last by whichever worker read it: it is one queue, and an
  older reading from another worker is only older.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flask import Flask, Response, g, request

from .metrics_files import ENV
from .settings import host_is_accepted

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

# A request no route matched (404, 405): one label value, whatever the path, so a scanner cannot add series.
UNMATCHED = "unmatched"
# The same for the method: gunicorn takes any 3 to 20 upper-case letters as one (300 made-up methods added
# 5,418 exposition lines), so only those of RFC 9110, and PATCH (RFC 5789), are labelled as they are.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
OTHER_METHOD = "other"
LAST_ANSWER = "discovery_last_answer_timestamp_seconds"
WATCH_AGE = "discovery_watch_age_seconds"
REGISTERED = "discovery_registered"

T = TypeVar("T")
_making = threading.RLock()


def _made_once(make: Callable[[], T]) -> Callable[[], T]:
    """`make()` on first use, by one thread: the registry refuses a metric made twice, and a worker's first
    requests arrive on several threads at once (that race answered a 500 before this lock)."""
    made: list[T] = []

    @functools.wraps(make)
    def get() -> T:
        if not made:
            with _making:
                if not made:
                    made.append(make())
        return made[0]

    return get


class _Metrics:
    """Every metric, made on first use. The service packages import this module, and gunicorn's master
    imports them while it reads the config file, before it sets PROMETHEUS_MULTIPROC_DIR; prometheus-client
    chooses file-backed values once, when it is first imported, so it is imported here only when a worker
    first counts or serves something (servicekit.metrics_files)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        # The library made its choice on this import (or an earlier one, in this process); so does this.
        self.multiprocess = bool(os.environ.get(ENV))
        labels = ["method", "route", "status"]
        self.http_requests = Counter("http_requests", "Requests answered, by method, route (URL rule), status", labels)
        self.http_latency = Histogram(
            "http_request_duration_seconds", "Seconds from a request reaching Flask to its answer", labels
        )
        # The facade's calls to other services, by service and instance id.
        instance = ["service", "instance"]
        self.upstream_attempts = Counter("upstream_attempts", "Calls sent to an instance, retries included", instance)
        self.upstream_failures = Counter(
            "upstream_failures",
            "Calls to an instance that failed (refused, timed out, 5xx, not JSON), by reason",
            [*instance, "reason"],
        )
        self.upstream_retries = Counter(
            "upstream_retries", "Calls sent after another attempt of the same request failed", instance
        )
        self.upstream_ejections = Counter(
            "upstream_ejections", "Times an instance was taken out of a worker's rotation for failing calls", instance
        )
        self.upstream_retries_refused = Counter(
            "upstream_retries_refused",
            "Retries the service's retry budget did not allow: the request failed instead",
            ["service"],
        )
        # The facade's discovery watches (servicekit.discovery), written when they hear from Consul.
        self.discovery_instances = Gauge(
            "discovery_instances",
            "Instances a worker's watch would pick from (the fewest over the live workers)",
            ["service"],
            multiprocess_mode="livemin",
        )
        self.discovery_last_answer = Gauge(
            LAST_ANSWER,
            "When a worker's watch last heard from Consul, Unix time (the oldest over the live workers)",
            ["service"],
            multiprocess_mode="livemin",
        )
        # 1 for each instance a worker's watch last heard Consul list (critical ones included), 0 once it left.
        # The scrape is answered by the master, which watches nothing: this is how it learns from the
        # workers which `upstream_*` series to serve (_without_departed). Not served itself.
        self.discovery_registered = Gauge(
            REGISTERED,
            "Whether a worker's watch last heard Consul list the instance (the most over the live workers)",
            ["service", "instance"],
            multiprocess_mode="livemax",
        )
        # The queue.
        self.queue_offers = Counter(
            "queue_offers", "Offers to the queue, by result (queued, full, no_quorum, error)", ["result"]
        )
        self.queue_polls = Counter(
            "queue_polls", "Polls of the queue by messages_svc, by result (item, empty, error)", ["result"]
        )
        # Writes the members could not write through to PostgreSQL (hazelcast-store/).
        self.store_failures = Counter(
            "store_failures",
            "Writes the database failed, by structure (log, queue) and outcome (refused: nothing stored; unknown)",
            ["structure", "outcome"],
        )


@_made_once
def _metrics() -> _Metrics:
    return _Metrics()


def count_request(method: str, route: str, status: int, seconds: float | None) -> None:
    m = _metrics()
    method = method if method in KNOWN_METHODS else OTHER_METHOD
    m.http_requests.labels(method, route, str(status)).inc()
    if seconds is not None:
        m.http_latency.labels(method, route, str(status)).observe(seconds)


def count_attempt(service: str, instance: str, retry: bool) -> None:
    """A call sent to an instance; `retry` when an attempt of the same request failed before it."""
    m = _metrics()
    m.upstream_attempts.labels(service, instance).inc()
    if retry:
        m.upstream_retries.labels(service, instance).inc()


def count_failure(service: str, instance: str, reason: str) -> None:
    _metrics().upstream_failures.labels(service, instance, reason).inc()


def count_ejection(service: str, instance: str) -> None:
    """An instance was taken out of a worker's rotation (outlier ejection)."""
    _metrics().upstream_ejections.labels(service, instance).inc()


def count_retry_refused(service: str) -> None:
    """A failed call that the service's retry budget did not let the caller send again."""
    _metrics().upstream_retries_refused.labels(service).inc()


STORE_OUTCOMES = ("refused", "unknown")


def count_store_failure(structure: str, outcome: str) -> None:
    """A write to `structure` (log, queue) that the database refused, or failed during (outcome unknown)."""
    _metrics().store_failures.labels(structure, outcome).inc()


# A labelled series shows from its first count, already at 1, and Prometheus' increase() and rate() see no
# increase in a first sample: the first failure would be missed. These make the series at 0 from the start.
def start_retries_refused(service: str) -> None:
    _metrics().upstream_retries_refused.labels(service)


def start_store_failures(structure: str) -> None:
    for outcome in STORE_OUTCOMES:
        _metrics().store_failures.labels(structure, outcome)


# The instance ids Consul last listed for each service this process watches (every state, critical
# included), as its watches heard them; written to the discovery_registered gauge when they change.
_registered: dict[str, frozenset[str]] = {}


def observe_watch(service: str, instances: int, answered: bool, registered: frozenset[str] | None = None) -> None:
    """What a discovery watch knows, after each answer from Consul (`answered`) or failed query, and the
    instances registered as of its last answer (None before the first)."""
    m = _metrics()
    m.discovery_instances.labels(service).set(instances)
    if answered:
        m.discovery_last_answer.labels(service).set(time.time())
    if registered is not None:
        before = _registered.get(service, frozenset())
        for gone in before - registered:
            m.discovery_registered.labels(service, gone).set(0)
        for new in registered - before:
            m.discovery_registered.labels(service, new).set(1)
        _registered[service] = registered


def count_offer(result: str) -> None:
    """An offer to the queue: queued, full, no_quorum (refused by split-brain protection) or error (no answer,
    or not sent)."""
    _metrics().queue_offers.labels(result).inc()


# Made on first use, like every metric here, but apart: a metric without labels shows from the moment it
# is made, and a room of 0 on a service that never read it (or a facade before its first read) would say
# "the queue is full".
@_made_once
def _queue_room():
    from prometheus_client import Gauge

    _metrics()
    return Gauge(
        "queue_remaining_capacity",
        "Room left on the queue as the facade last read it (the depth is the queue's max-size less this)",
        multiprocess_mode="mostrecent",
    )


@_made_once
def _queue_taken():
    from prometheus_client import Counter

    _metrics()
    return Counter("queue_items_taken", "Messages messages_svc took from the queue and kept")


# logging_svc's alone, apart like the queue's room: a size of 0 shown by a service that counts none would be
# a log that looks empty.
@_made_once
def _log_size():
    from prometheus_client import Gauge

    _metrics()
    held = Gauge("log_bytes", "What the log holds, as this instance counts it (the most over the live workers)",
                 multiprocess_mode="livemax")  # fmt: skip
    capacity = Gauge("log_capacity_bytes", "What the log may hold (LOG_CAPACITY_BYTES)", multiprocess_mode="livemax")
    return held, capacity


def observe_log_size(held: int, capacity: int) -> None:
    """The log's size as a worker last counted it, and its capacity: written at each health check."""
    held_gauge, capacity_gauge = _log_size()
    held_gauge.set(held)
    capacity_gauge.set(capacity)


# Written by the master once, when it is ready: a worker's restart is not the instance's. The alert rules count
# its changes (InstanceRestarting, conf/prometheus/alerts.yml): a restart that supervisord makes between two
# scrapes shows there, and not in `up`. `max`: the master's one value (the directory is emptied at each start).
@_made_once
def _started():
    from prometheus_client import Gauge

    return Gauge("instance_start_time_seconds", "When this instance's gunicorn master started, Unix time",
                 multiprocess_mode="max")  # fmt: skip


def observe_start(when: float | None = None) -> None:
    _started().set(time.time() if when is None else when)


def observe_queue_room(room: int) -> None:
    _queue_room().set(room)


def count_poll(result: str) -> None:
    """A poll of the queue by messages_svc: item, empty, or error (it failed, split-brain refusals included)."""
    _metrics().queue_polls.labels(result).inc()


def count_taken() -> None:
    _queue_taken().inc()


def _with_watch_age(metrics: Iterator[Metric]) -> Iterator[Metric]:
    """The metrics, plus each watch's age (now less its oldest last answer): what an operator wants to
    read, which no worker can write ahead of time."""
    from prometheus_client.metrics_core import GaugeMetricFamily

    now = time.time()
    for metric in metrics:
        yield metric
        if metric.name == LAST_ANSWER:
            age = GaugeMetricFamily(
                WATCH_AGE, "Seconds since the watch that is the most behind heard from Consul", labels=["service"]
            )
            for sample in metric.samples:
                age.add_metric([sample.labels["service"]], max(0.0, now - sample.value))
            yield age


def _without_departed(metrics: Iterator[Metric]) -> Iterator[Metric]:
    """The metrics, less the `upstream_*` samples of instances that left Consul.

    They are left out here rather than removed: in multiprocess mode a series lives in the file of every
    worker that counted it, and prometheus-client can neither delete it from another worker's file nor
    from a dead worker's (whose counts must stay in the totals). What Consul lists comes from the workers'
    watches through the discovery_registered gauge (the scrape is answered by the master, which watches
    nothing): an instance some live worker's watch lists is served; a service no watch has heard about
    yet is served whole. An instance that registers again (the same id: same host and port) is back at
    the next scrape, with the counts it had."""
    collected = list(metrics)
    registered: dict[str, set[str]] = {}
    for metric in collected:
        if metric.name == REGISTERED:
            for sample in metric.samples:
                listed = registered.setdefault(sample.labels["service"], set())
                if sample.value > 0:
                    listed.add(sample.labels["instance"])
    for metric in collected:
        if metric.name == REGISTERED:
            continue  # the master's means, not a figure for people: one series per instance ever seen
        if metric.name.startswith("upstream_"):
            metric.samples = [
                sample
                for sample in metric.samples
                if sample.labels.get("service") not in registered
                or sample.labels.get("instance") in registered[sample.labels["service"]]
            ]
        yield metric


class _Scrape:
    """One scrape's collector: the workers' files (or this process's registry), with the watches' ages,
    without the series of instances that left Consul."""

    def __init__(self, multiprocess: bool):
        self._multiprocess = multiprocess

    def collect(self) -> Iterator[Metric]:
        from prometheus_client import REGISTRY, multiprocess

        source = multiprocess.MultiProcessCollector(None) if self._multiprocess else REGISTRY
        return _with_watch_age(_without_departed(iter(source.collect())))


def _registry(multiprocess: bool) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(multiprocess))
    return registry


def exposition() -> bytes:
    """This process's view in Prometheus' text format: the workers' files under gunicorn, else its memory."""
    from prometheus_client import generate_latest

    return generate_latest(_registry(_metrics().multiprocess))


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """A scrape every few seconds is not news (wsgiref writes every request to stderr)."""


def serve(host: str, port: int, accepted_hosts: frozenset[str]) -> WSGIServer:
    """Serve GET /metrics on `host`:`port` from a named daemon thread; in the gunicorn master, which makes no
    metric of its own (so it never writes a file) and reads the workers'. A request for a Host not in
    `accepted_hosts` is a 421, as on the public port (DNS rebinding). `shutdown()` stops it; OSError when
    the port cannot be bound."""
    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    scrape = make_wsgi_app(_registry(bool(os.environ.get(ENV))))

    def app(environ, start_response):
        # A browser always sends Host; a request without one cannot come through a rebound name.
        if "HTTP_HOST" in environ and not host_is_accepted(environ["HTTP_HOST"], accepted_hosts):
            start_response("421 Misdirected Request", [("Content-Type", "application/json")])
            return [json.dumps({"error": "this server does not answer for that host name"}).encode()]
        return scrape(environ, start_response)

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name=f"metrics-{port}", daemon=True).start()
    return server


def _route() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED


def install(app: Flask) -> None:
    """Count every request of the app. Installed right after request_id's hook and before the Host check, so
    the clock starts before the checks and requests they turn away (421) are counted too."""

    @app.before_request
    def start_clock() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        seconds = None if started is None else time.perf_counter() - started
        count_request(request.method, _route(), response.status_code, seconds)
        return response
