"""Generated and hostile input against the running stack: no 5xx, no dead worker, nothing stored when refused.

schemathesis drives the facade from docs/openapi.yaml; hypothesis drives logging_svc's internal POST;
raw sockets play slow and half-open clients.
"""

from __future__ import annotations

import collections
import json
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
import schemathesis
from schemathesis.generation.modes import GenerationMode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra import ROOT, eventually

from servicekit.workers import CLIENT_TIMEOUT

TIMEOUT = 10
# Bounded so the run stays well under a minute on 2 cores; the counts are in docs/RELIABILITY.md.
FUZZ_EXAMPLES = 60
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=5000,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


def worker_pids(service) -> set[int]:
    return {child.pid for child in psutil.Process(service.proc.pid).children()}


@pytest.fixture(scope="module")
def watched(stack):
    """The stack's instances with their gunicorn worker pids; after the module, no worker may have changed."""
    before = {service.instance_id: worker_pids(service) for service in stack.instances}
    yield stack
    for service in stack.instances:
        assert service.proc.alive(), f"{service.instance_id} exited:\n{service.proc.tail()}"
        assert worker_pids(service) == before[service.instance_id], f"a worker of {service.instance_id} was replaced"


@pytest.fixture(scope="module")
def fuzz_tally():
    return collections.Counter()


SCHEMA = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml")
# Requests that fit the spec and requests that break it (wrong types, missing fields, other media types).
generated_cases = st.one_of(
    SCHEMA["/facade"]["POST"].as_strategy(GenerationMode.POSITIVE),
    SCHEMA["/facade"]["POST"].as_strategy(GenerationMode.NEGATIVE),
    SCHEMA["/facade"]["GET"].as_strategy(GenerationMode.POSITIVE),
    SCHEMA["/health"]["GET"].as_strategy(GenerationMode.POSITIVE),
)


def logged(stack) -> list[str]:
    return requests.get(stack.url, timeout=TIMEOUT).json()["logging"]


@pytest.fixture(scope="module")
def log_size_before_fuzz(watched) -> int:
    return len(logged(watched))


# schemathesis' own pytest plugin does not run under pytest 9 yet; its strategies under hypothesis do.
@FUZZ
@given(case=generated_cases)
def test_generated_requests_never_get_a_server_error(watched, case, fuzz_tally, log_size_before_fuzz):
    # Status code, content type and body are checked against the spec, and 5xx fails the check.
    response = case.call_and_validate(base_url=watched.facade.url, timeout=TIMEOUT)
    assert response.status_code < 500, response.text
    fuzz_tally[f"{case.method} {case.path} {response.status_code}"] += 1


def test_only_acknowledged_fuzz_posts_were_stored(watched, fuzz_tally, log_size_before_fuzz, log_dir):
    """Runs after the fuzz test: the log grew by exactly the number of 201s it got."""
    (log_dir / "fuzz-tally.json").write_text(json.dumps(dict(sorted(fuzz_tally.items())), indent=1))
    assert sum(fuzz_tally.values()) >= FUZZ_EXAMPLES, fuzz_tally
    assert len(logged(watched)) == log_size_before_fuzz + fuzz_tally["POST /facade 201"], fuzz_tally


bodies = st.one_of(
    st.binary(max_size=256),
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), st.text(max_size=40)),
            "msg": st.one_of(st.text(max_size=20), st.integers(), st.none(), st.lists(st.text(max_size=3))),
        },
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(max_examples=FUZZ_EXAMPLES, deadline=5000, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=bodies)
def test_logging_service_stores_only_what_it_acknowledges(watched, body):
    target = watched.logging[0]
    response = requests.post(f"{target.url}/logging", data=body, timeout=TIMEOUT)
    assert response.status_code in (200, 201, 400, 413), response.text
    assert set(response.json()) == ({"error"} if response.status_code >= 400 else {"id", "msg", "created"})
    if response.status_code < 400:
        # Stored under the canonical id it was given, and nothing else was made of the request.
        assert str(uuid.UUID(response.json()["id"])) == response.json()["id"]


def open_slow_clients(port: int, count: int) -> list[socket.socket]:
    """Thirds: connected and silent; headers cut off half-way; headers complete but the body stalls."""
    kinds = [
        b"",
        b"POST /facade HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty",
        b"POST /facade HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"msg\": \"sl",
    ]
    clients = []
    for i in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        if kinds[i % 3]:
            client.sendall(kinds[i % 3])
        clients.append(client)
    return clients


def test_slow_and_half_open_clients_do_not_hold_up_other_requests(watched):
    facade = watched.facade
    # Far more than the facade's 2 workers x 4 threads: with the stock gthread worker each would hold a thread.
    clients = open_slow_clients(facade.port, 30)
    try:
        def timed(call):
            started = time.monotonic()
            response = call()
            return response.status_code, time.monotonic() - started

        calls = [lambda: requests.get(f"{facade.url}/health", timeout=TIMEOUT)] * 10 + [
            lambda: requests.post(watched.url, json={"msg": f"beside slow clients {uuid.uuid4()}"}, timeout=TIMEOUT)
        ] * 10
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(timed, calls))
        assert {status for status, _ in results} <= {200, 201}, results
        assert max(elapsed for _, elapsed in results) < 2.0, results

        def all_closed_by_the_server():
            for client in clients:
                client.settimeout(0.05)
                try:
                    data = client.recv(1024)
                except TimeoutError:
                    raise AssertionError("a slow client is still connected") from None
                except ConnectionResetError:
                    continue
                assert data == b"" or data.startswith(b"HTTP/1.1 4"), data

        eventually(all_closed_by_the_server, timeout=CLIENT_TIMEOUT + 5, interval=0.5)
    finally:
        for client in clients:
            client.close()
