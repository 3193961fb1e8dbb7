"""Generated and hostile input against the running stack: no 5xx, no dead worker, nothing stored when refused.

schemathesis drives the facade from docs/openapi.yaml; hypothesis drives logging_svc's internal POST;
raw sockets play slow and half-open clients.
"""

from __future__ import annotations

import collections
import json
import re
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import hazelcast
import psutil
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

from devstack import ROOT, eventually, read_all
from logging_svc.store import STAMP_DIGITS
from servicekit import kvconfig
from stackctl.front_door import CLIENT_TIMEOUT

# In the worker of the session's stack, with every test on it (tests/conftest.py): its tests share `watched`
# (that stack, checked whole after the module).
pytestmark = pytest.mark.xdist_group("session_stack")

TIMEOUT = 10
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Bounded so the run stays well under a minute on 2 cores; the counts are in docs/RELIABILITY.md.
FUZZ_EXAMPLES = 60
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
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


SCHEMA = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml")
# Requests that fit the spec and requests that break it (wrong types, missing fields, other media types).
generated_cases = st.one_of(
    SCHEMA["/facade"]["POST"].as_strategy(GenerationMode.POSITIVE),
    SCHEMA["/facade"]["POST"].as_strategy(GenerationMode.NEGATIVE),
    SCHEMA["/facade"]["GET"].as_strategy(GenerationMode.POSITIVE),
    SCHEMA["/facade"]["GET"].as_strategy(GenerationMode.NEGATIVE),
    SCHEMA["/health"]["GET"].as_strategy(GenerationMode.POSITIVE),
)


def logged(stack) -> list[str]:
    return read_all(stack.url, "logging")


def test_generated_requests_get_no_server_error_and_the_log_grows_by_exactly_the_201s(watched, log_dir):
    tally: collections.Counter[str] = collections.Counter()
    # id -> message: a request that repeats an Idempotency-Key gets the first 201 again, for one entry.
    acknowledged: dict[str, str] = {}
    before = logged(watched)

    # schemathesis' own pytest plugin does not run under pytest 9 yet; its strategies under hypothesis do.
    # Driven from inside the test, so the tally and the log check below need no other test to run first.
    @FUZZ
    @given(case=generated_cases)
    def send(case):
        # Hypothesis repeats values: a valid Idempotency-Key it reuses with another message is a 422, which
        # schemathesis counts as valid data refused. Each valid key is made unique; test_idempotency
        # covers reuse. An invalid key stays as generated, to be refused with a 400.
        key = (case.headers or {}).get("Idempotency-Key")
        if isinstance(key, str) and re.fullmatch(r'"?[\x21\x23-\x7e]{1,255}"?', key):
            case.headers["Idempotency-Key"] = f"{key[:200].strip(chr(34))}-{uuid.uuid4()}"
        # Status code, content type and body are checked against the spec, and 5xx fails the check.
        response = case.call_and_validate(base_url=watched.facade.url, timeout=TIMEOUT)
        assert response.status_code < 500, response.text
        tally[f"{case.method} {case.path} {response.status_code}"] += 1
        if case.method == "POST" and response.status_code == 201:
            acknowledged[response.json()["id"]] = response.json()["msg"]

    send()
    (log_dir / "fuzz-tally.json").write_text(json.dumps(dict(sorted(tally.items())), indent=1))
    assert sum(tally.values()) >= FUZZ_EXAMPLES, tally
    assert tally["POST /facade 201"] and tally["POST /facade 400"], tally
    after = logged(watched)
    # Every acknowledged message is in the log once more than before, and nothing else was added.
    assert len(after) == len(before) + len(acknowledged), tally
    assert collections.Counter(after) - collections.Counter(before) == collections.Counter(acknowledged.values())


@pytest.fixture(scope="module")
def log_map(watched, hazelcast_cluster):
    """logging_svc's map, read directly: what the service stored, whatever it answered."""
    client = hazelcast.HazelcastClient(
        cluster_name=hazelcast_cluster.cluster_name,
        cluster_members=hazelcast_cluster.addresses,
        cluster_connect_timeout=30,
    )
    yield client.get_map(kvconfig.load(watched.agent.client()).map_name).blocking()
    client.shutdown()


bodies = st.one_of(
    st.binary(max_size=256),
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), st.text(max_size=40)),
            "msg": st.one_of(
                st.text(min_size=1, max_size=20),
                st.text(max_size=20),
                st.integers(),
                st.none(),
                st.lists(st.text(max_size=3)),
            ),
        },
    ).map(lambda d: json.dumps(d).encode()),
)


def sent_fields(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


# One id again and again: stored once (201), then kept as it was, for the same message (200) and for
# another one (409).
REPLAYED_ID = str(uuid.uuid4())


@settings(max_examples=FUZZ_EXAMPLES, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=bodies)
@example(body=json.dumps({"id": REPLAYED_ID, "msg": "first"}).encode())
@example(body=json.dumps({"id": REPLAYED_ID, "msg": "first"}).encode())
@example(body=json.dumps({"id": REPLAYED_ID, "msg": "second"}).encode())
@example(body=json.dumps({"id": REPLAYED_ID.upper(), "msg": "upper"}).encode())
def test_logging_service_stores_exactly_what_it_acknowledges(watched, log_map, body):
    target = watched.logging[0]
    sent = sent_fields(body)
    sent_id = sent.get("id") if isinstance(sent.get("id"), str) else None
    size_before = log_map.size()
    stored_before = log_map.get(sent_id) if sent_id is not None else None

    response = requests.post(
        f"{target.url}/logging", data=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    )
    assert response.status_code in (200, 201, 400, 409, 413), response.text
    event(f"HTTP {response.status_code}")
    assert set(response.json()) == ({"error"} if response.status_code >= 400 else {"id", "msg", "created"})
    if response.status_code == 201:
        # Stored under the canonical id it was given, with the message it was given, and nothing else.
        assert response.json()["id"] == sent_id == str(uuid.UUID(sent_id))
        assert stored_before is None
        assert log_map.get(sent_id)[STAMP_DIGITS:] == sent["msg"]
        assert log_map.size() == size_before + 1
    elif response.status_code == 200:
        # Already there with this message: the first stamp is kept.
        assert stored_before is not None and log_map.get(sent_id) == stored_before
        assert stored_before[STAMP_DIGITS:] == sent["msg"]
        assert log_map.size() == size_before
    elif response.status_code == 409:
        # Already there with another message, which is kept as it was.
        assert stored_before is not None and stored_before[STAMP_DIGITS:] != sent["msg"]
        assert log_map.get(sent_id) == stored_before and log_map.size() == size_before
    else:
        assert log_map.size() == size_before
        if sent_id is not None:
            assert log_map.get(sent_id) == stored_before


HOST = b"Host: 127.0.0.1\r\n"
# What each kind of slow client sends at once; those marked trickle then send one byte every TRICKLE_EVERY
# seconds for as long as the server lets them, which defeats any timeout counted per read.
SLOW_CLIENTS = {
    # Connected and silent; headers cut off half-way; headers complete but the Content-Length body stalls.
    "stalled": [
        (b"", False),
        (b"POST /facade HTTP/1.1\r\n" + HOST + b"Content-Ty", False),
        (b"POST /facade HTTP/1.1\r\n" + HOST + b'Content-Length: 1000\r\n\r\n{"msg": "sl', False),
    ],
    # (a) A chunked body, and a body behind "Expect: 100-continue", that never end.
    "chunked": [(b"POST /facade HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n1000\r\n", True)],
    "expect-100": [
        (b"POST /facade HTTP/1.1\r\n" + HOST + b"Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n", True)
    ],
    # (b) A whole request with half of the next one behind it, whose headers never end.
    "pipelined": [(b"GET /health HTTP/1.1\r\n" + HOST + b"\r\nGET /health HTTP/1.1\r\n" + HOST + b"X-Slow: ", True)],
    # (c) Bodies over MAX_BODY_BYTES, a little and far: refused from the Content-Length, before any byte of them.
    "oversized": [
        (b"POST /facade HTTP/1.1\r\n" + HOST + b"Content-Length: 100000\r\n\r\n", True),
        (b"POST /facade HTTP/1.1\r\n" + HOST + b"Content-Length: 2000000\r\n\r\n", True),
    ],
    # A client that asks the server to close, then neither reads nor closes: the close must not wait for it.
    "close-then-hold": [(b"GET /health HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n", True)],
}
# What the server may send each kind before it closes the connection.
SLOW_CLIENT_ANSWERS = {
    "stalled": re.compile(rb"\Z"),
    "chunked": re.compile(rb"\Z"),
    "expect-100": re.compile(rb"\AHTTP/1\.1 100 Continue\r\n\r\n\Z"),
    # One answer only: the second request never ended.
    "pipelined": re.compile(rb"\AHTTP/1\.1 200 (?:(?!HTTP/1\.1).)*\}\s*\Z", re.DOTALL),
    "oversized": re.compile(rb'\AHTTP/1\.1 413 .*\r\n\r\n\{"error": ?".*\}\s*\Z', re.DOTALL),
    "close-then-hold": re.compile(rb"\AHTTP/1\.1 200 .*\}\s*\Z", re.DOTALL),
}
# Bodies that keep trickling: nginx, in front of the facade, reads them in its event loop, holding no
# gunicorn thread, and bounds each pause (client_body_timeout, CLIENT_TIMEOUT), not the whole body, which it
# has no setting for. They are closed once they pause; the others while they trickle.
CLOSED_ONCE_THEY_PAUSE = {"chunked", "expect-100"}
# More slow clients of each kind than the facade has threads (2 workers x 4).
SLOW_CLIENTS_PER_KIND = 12
TRICKLE_EVERY = 0.3


class SlowClient:
    def __init__(self, port: int, first: bytes, trickles: bool):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if first:
            self.sock.sendall(first)
        self.sock.setblocking(False)
        self.trickles = trickles
        self.received = b""
        self.closed_by_server = False

    def trickle(self) -> None:
        if self.trickles and not self.closed_by_server:
            try:
                self.sock.send(b"x")
            except OSError:
                self.trickles = False

    def read(self) -> None:
        """Take what the server sent; note when it closed (FIN or reset)."""
        while not self.closed_by_server:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            self.received += data
            self.closed_by_server = not data


@pytest.mark.parametrize("kind", list(SLOW_CLIENTS))
def test_slow_and_half_open_clients_do_not_hold_up_other_requests(watched, kind):
    facade = watched.facade
    clients = [
        SlowClient(facade.port, *SLOW_CLIENTS[kind][i % len(SLOW_CLIENTS[kind])]) for i in range(SLOW_CLIENTS_PER_KIND)
    ]
    stop, pause = threading.Event(), threading.Event()

    def keep_trickling():
        # Bounded: the test stops it, and it gives up by itself well after the server should have closed.
        deadline = time.monotonic() + CLIENT_TIMEOUT + 30
        while not stop.wait(TRICKLE_EVERY) and time.monotonic() < deadline:
            for client in clients:
                client.read()
                if not pause.is_set():
                    client.trickle()

    trickler = threading.Thread(target=keep_trickling, name="slow-clients", daemon=True)
    trickler.start()
    try:

        def timed(call):
            started = time.monotonic()
            try:
                status = call().status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            return status, round(time.monotonic() - started, 2)

        calls = [lambda: requests.get(f"{facade.url}/health", timeout=5)] * 10 + [
            lambda: requests.post(watched.url, json={"msg": f"beside slow clients {uuid.uuid4()}"}, timeout=5)
        ] * 10
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(timed, calls))
        assert {status for status, _ in results} <= {200, 201}, results
        assert max(elapsed for _, elapsed in results) < 2.0, results

        def all_closed_by_the_server():
            # The trickling thread reads what the server sends; here only its findings are looked at.
            still_open = [client.received for client in clients if not client.closed_by_server]
            assert not still_open, f"{len(still_open)} {kind} clients still connected, got {still_open[:2]}"

        if kind in CLOSED_ONCE_THEY_PAUSE:
            pause.set()
        eventually(all_closed_by_the_server, timeout=CLIENT_TIMEOUT + 5, interval=0.2)
        stop.set()
        trickler.join()
        for client in clients:
            assert SLOW_CLIENT_ANSWERS[kind].match(client.received), client.received
    finally:
        stop.set()
        trickler.join()
        for client in clients:
            client.sock.close()


def read_until_closed(sock: socket.socket, deadline: float = TIMEOUT) -> bytes:
    sock.settimeout(deadline)
    received = b""
    while data := sock.recv(65536):
        received += data
    return received


def test_pipelined_chunked_and_expect_continue_requests_are_all_served(watched):
    facade = watched.facade
    text = f"chunked {uuid.uuid4()}"
    msg = json.dumps({"msg": text}).encode()
    with socket.create_connection(("127.0.0.1", facade.port), timeout=TIMEOUT) as client:
        # Three requests in one write: the second and third are read from what the first left over.
        client.sendall(
            b"GET /health HTTP/1.1\r\n"
            + HOST
            + b"\r\n"
            + b"GET /health HTTP/1.1\r\n"
            + HOST
            + b"\r\n"
            + b"POST /facade HTTP/1.1\r\n"
            + HOST
            + b"Content-Type: application/json\r\n"
            + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (msg[:5], msg[5:]))
            + b"0\r\n\r\n"
        )
        answers = re.findall(rb"HTTP/1\.1 (\d+) ", read_until_closed(client))
    assert answers == [b"200", b"200", b"201"]
    assert text in logged(watched)

    text = f"expect {uuid.uuid4()}"
    msg = json.dumps({"msg": text}).encode()
    with socket.create_connection(("127.0.0.1", facade.port), timeout=TIMEOUT) as client:
        client.sendall(
            b"POST /facade HTTP/1.1\r\n"
            + HOST
            + b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(msg)
        )
        # The body goes only after "100 Continue", as a client that waits for it would send it.
        client.settimeout(2)
        assert client.recv(len(CONTINUE)) == CONTINUE
        client.sendall(msg)
        answer = read_until_closed(client)
    assert re.match(rb"(HTTP/1\.1 100 Continue\r\n\r\n)*HTTP/1\.1 201 ", answer), answer
    assert text in logged(watched)
