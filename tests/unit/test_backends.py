"""The facade's calls to logging_svc and messages_svc: which instance is tried, what is retried, what the
client is told. Discovery and HTTP are stand-ins here; tests/integration drives the real ones."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.parse

import pytest
import requests
from hazelcast.errors import HazelcastError, SplitBrainProtectionError
from hazelcast.future import Future
from prometheus_client import REGISTRY
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError
from werkzeug.exceptions import NotFound

from contracts.paging import MessagesCursor
from devstack import until
from devstack.stubs import StubInstance
from facade import create_app
from facade.backends import LOGGING_SERVICE, MESSAGES_SERVICE, QUEUE_ROOM_MARGIN, Backends
from facade.settings import FacadeSettings
from servicekit.discovery import Instance
from servicekit.errors import BadGateway, Unavailable
from servicekit.hz import Bounded
from servicekit.kvconfig import SharedConfig
from upstream import caller as caller_module
from upstream.caller import MAX_ATTEMPTS, CallFailed, Reached

PORTS = (8081, 8082, 8083)


def instance(port: int) -> Instance:
    return Instance(id=f"logging-service-somehost-{port}", address="127.0.0.1", port=port)


class FixedDiscovery:
    """Stands in for upstream.watch.Discovery: the same passing instances for every service."""

    def __init__(self, *ports: int):
        self.found = tuple(instance(p) for p in ports)

    def instances(self, service: str, timeout: float = 0.0) -> tuple[Instance, ...]:
        return self.found

    def status(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def response(status: int, body: dict | str) -> requests.Response:
    answer = requests.Response()
    answer.status_code = status
    answer._content = (json.dumps(body) if isinstance(body, dict) else body).encode()
    return answer


class ScriptedHttp:
    """Stands in for requests.Session: each port answers as scripted (a response, an exception to raise, or
    a function to call), and every call is recorded."""

    def __init__(self, **by_port):
        self.by_port = {int(port.lstrip("p")): what for port, what in by_port.items()}
        self.tried: list[int] = []
        self.trust_env = True

    def _answer(self, url: str, **kwargs):
        assert kwargs["timeout"], "every call has a timeout"
        port = urllib.parse.urlsplit(url).port
        self.tried.append(port)
        what = self.by_port[port]
        if isinstance(what, Exception):
            raise what
        return what() if callable(what) else what

    def post(self, url: str, **kwargs):
        return self._answer(url, **kwargs)

    def get(self, url: str, **kwargs):
        return self._answer(url, **kwargs)

    def close(self) -> None:
        pass


STORED = response(201, {"stored": True})
BROKEN = response(500, {"error": "internal error"})


def refused() -> requests.ConnectionError:
    """What requests raises for a refused connection (test_only_a_connect_that_failed_is_not_reached
    checks it against a real one): the request never went out."""
    return requests.ConnectionError(
        MaxRetryError(None, "/logging", NewConnectionError(None, "Failed to establish a new connection: refused"))
    )


def backends(http: ScriptedHttp, *ports: int, **env: str) -> Backends:
    return Backends(FacadeSettings.from_env("facade-service", 8080, env=env), FixedDiscovery(*ports), session=http)


@pytest.mark.parametrize(
    "failure",
    [
        BROKEN,
        response(503, "<html>busy</html>"),
        requests.ReadTimeout("slow"),
        refused(),
        response(200, "not json"),
    ],
)
def test_a_failed_instance_is_retried_on_another_one(failure):
    # Whichever the random pick tries first, the call ends at the one instance that works.
    for _ in range(20):
        http = ScriptedHttp(p8081=failure, p8082=failure, p8083=STORED)
        assert backends(http, *PORTS).log_message("id-1", "hello").by == instance(8083).id
        assert http.tried[-1] == 8083
        assert len(http.tried) == len(set(http.tried)), f"an instance was tried twice: {http.tried}"


def test_untried_instances_come_before_any_second_try():
    # Each round pauses a little once all three failed; five rounds keep the test short.
    for _ in range(5):
        http = ScriptedHttp(p8081=BROKEN, p8082=BROKEN, p8083=BROKEN)
        with pytest.raises(Unavailable) as failed:
            # A budget that allows every retry: the order is under test here, not the budget.
            backends(http, *PORTS, RETRY_BUDGET_MINIMUM="10").log_message("id-1", "hello")
        assert sorted(http.tried[:3]) == list(PORTS), f"an instance was tried twice first: {http.tried}"
        assert len(http.tried) == MAX_ATTEMPTS
        assert failed.value.public == f"every {LOGGING_SERVICE} instance failed"


def test_a_read_that_timed_out_is_not_sent_to_another_instance():
    for _ in range(20):
        http = ScriptedHttp(p8081=requests.ReadTimeout("slow"), p8082=response(200, {"messages": ["a"], "next": None}))
        try:
            assert backends(http, 8081, 8082).logged_messages(10, None) == (["a"], None)
            assert http.tried == [8082]
        except Unavailable as failed:
            assert http.tried == [8081], "the first instance may still be reading: no second read beside it"
            assert failed.public == f"{LOGGING_SERVICE} did not answer in time"


def every_other(failure):
    """An instance that fails every other call: never three times in a row, so it is never ejected."""
    calls = iter(range(10**6))

    def answer():
        if next(calls) % 2:
            return STORED
        if isinstance(failure, Exception):
            raise failure
        return failure

    return answer


@pytest.mark.parametrize("failure", [BROKEN, requests.ReadTimeout("slow")])
def test_retries_after_a_failure_stay_within_a_tenth_of_the_calls(failure):
    http = ScriptedHttp(p8081=every_other(failure), p8082=STORED)
    calling = backends(http, 8081, 8082)
    refused = 0
    counted_before = REGISTRY.get_sample_value("upstream_retries_refused_total", {"service": LOGGING_SERVICE}) or 0
    for n in range(400):
        try:
            calling.log_message(f"id-{n}", "hello")
        except Unavailable as failed:
            assert failed.public == f"{LOGGING_SERVICE} failed and its retry budget is spent"
            refused += 1
    assert len(http.tried) <= 1.1 * 400
    # About a quarter of the first tries fail (half go to 8081, which fails half of them): some 100
    # retries wanted, 40 allowed.
    assert refused > 30, "the budget refused the retries beyond a tenth"
    # What the RetryBudgetSpent alert watches (conf/prometheus/alerts.yml).
    counted = REGISTRY.get_sample_value("upstream_retries_refused_total", {"service": LOGGING_SERVICE})
    assert counted - counted_before == refused


def test_an_instance_that_fails_three_times_in_a_row_is_left_out_for_a_while():
    http = ScriptedHttp(p8081=BROKEN, p8082=STORED)
    calling = backends(http, 8081, 8082)
    ejections = REGISTRY.get_sample_value(
        "upstream_ejections_total", {"service": LOGGING_SERVICE, "instance": instance(8081).id}
    )
    for n in range(100):
        assert calling.log_message(f"id-{n}", "hello").by == instance(8082).id
    assert http.tried.count(8081) == 3
    assert (
        REGISTRY.get_sample_value(
            "upstream_ejections_total", {"service": LOGGING_SERVICE, "instance": instance(8081).id}
        )
        == (ejections or 0) + 1
    ), "the ejection is counted once"


def test_health_details_list_the_instances_this_worker_ejected():
    class Watched(FixedDiscovery):
        def status(self) -> dict:
            return {LOGGING_SERVICE: {"instances": [i.id for i in self.found]}}

    http = ScriptedHttp(p8081=BROKEN, p8082=STORED)
    calling = Backends(FacadeSettings.from_env("facade-service", 8080, env={}), Watched(8081, 8082), session=http)
    assert calling.status()[LOGGING_SERVICE]["ejected"] == []
    for n in range(20):
        calling.log_message(f"id-{n}", "hello")
    assert calling.status()[LOGGING_SERVICE]["ejected"] == [instance(8081).id]


def test_a_4xx_does_not_count_towards_an_ejection():
    http = ScriptedHttp(p8081=response(400, {"error": "no"}), p8082=STORED)
    calling = backends(http, 8081, 8082)
    for n in range(100):
        with contextlib.suppress(BadGateway):
            calling.log_message(f"id-{n}", "hello")
    assert http.tried.count(8081) > 20, "a 4xx is the caller's contract, not the instance's health"


def test_a_refused_connection_is_retried_whatever_the_budget():
    http = ScriptedHttp(p8081=refused(), p8082=STORED)
    calling = backends(http, 8081, 8082, RETRY_BUDGET_MINIMUM="0", RETRY_BUDGET_RATIO="0")
    for n in range(50):
        assert calling.log_message(f"id-{n}", "hello").by == instance(8082).id


def post_error(port: int) -> requests.RequestException:
    """The exception a real POST to the port raises."""
    with pytest.raises(requests.RequestException) as failed:
        requests.post(f"http://127.0.0.1:{port}/logging", json={"id": "id-1", "msg": "hello"}, timeout=5)
    return failed.value


def test_only_a_connect_that_failed_is_not_reached():
    # A port bound and held by this test, never listening: the connection is refused.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        real = post_error(closed.getsockname()[1])
    assert Reached.of(real) is Reached.NO
    assert Reached.of(refused()) is Reached.NO, "the scripted refusal of these tests is a real one"
    timed_out = requests.ConnectTimeout(MaxRetryError(None, "/logging", ConnectTimeoutError(None, "timed out")))
    assert Reached.of(timed_out) is Reached.NO


def dropped(how: str) -> requests.ConnectionError:
    """The exception a real POST raises when the instance read it whole, then closed the connection ("close",
    as a worker killed mid-request) or reset it ("reset")."""
    stub = StubInstance(LOGGING_SERVICE, drop_posts=how).serve()
    try:
        error = post_error(stub.port)
    finally:
        stub.server.shutdown()
        stub.server.server_close()
    assert stub.count("POST") == 1, "the instance read the request"
    assert isinstance(error, requests.ConnectionError)
    return error


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_connection_dropped_after_the_request_was_sent_may_have_been_served(how):
    error = dropped(how)
    assert Reached.of(error) is not Reached.NO, "the instance had the request: it may have stored it"
    # So another instance is tried only within the retry budget, and the call says it may be done.
    http = ScriptedHttp(p8081=error, p8082=error)
    with pytest.raises(CallFailed) as failed:
        backends(http, 8081, 8082, RETRY_BUDGET_MINIMUM="0", RETRY_BUDGET_RATIO="0").log_message("id-1", "hello")
    assert len(http.tried) == 1, f"a retry outside the budget: {http.tried}"
    assert failed.value.maybe_done
    assert failed.value.public == f"{LOGGING_SERVICE} failed and its retry budget is spent"


def test_a_post_whose_logging_connections_dropped_answers_logged_null_and_queues_nothing(closing):
    error = dropped("close")
    http = ScriptedHttp(p8081=error, p8082=error)
    queue = FakeQueue(room=10)
    answer = facade_with(closing, http, queue).post("/facade", json={"msg": "hello"})
    assert answer.status_code == 503
    assert answer.json["logged"] is None and answer.json["queued"] is False, answer.json
    assert queue.items == []


def test_the_retries_stop_at_the_request_deadline():
    def slow_timeout():
        time.sleep(0.2)
        raise requests.ReadTimeout("slow")

    http = ScriptedHttp(p8081=slow_timeout)
    started = time.monotonic()
    with pytest.raises(Unavailable):
        backends(http, 8081, REQUEST_DEADLINE="0.3").log_message("id-1", "hello")
    assert len(http.tried) <= 3, "without the deadline it would try MAX_ATTEMPTS times"
    assert time.monotonic() - started < 1.2


def test_a_4xx_is_not_retried_and_becomes_a_502_that_names_no_instance():
    http = ScriptedHttp(p8081=response(400, {"error": "field 'msg' must be a string"}), p8082=STORED)
    with pytest.raises(BadGateway) as rejected:
        backends(http, 8081).log_message("id-1", "hello")
    assert http.tried == [8081]
    assert str(rejected.value) == f"{LOGGING_SERVICE} rejected the request"


def test_no_passing_instance_is_a_503_at_once_without_any_call():
    http = ScriptedHttp()
    started = time.monotonic()
    with pytest.raises(Unavailable) as failed:
        backends(http).consumed_messages(10, None)
    assert time.monotonic() - started < 0.1
    assert http.tried == []
    assert failed.value.public == f"no healthy {MESSAGES_SERVICE} instance"


class DisconnectedHazelcast:
    connected = False

    def shared_config(self):
        raise AssertionError("a message logging_svc refused must not reach the queue")

    def get_queue(self, name: str, timeout: float | None = None):
        raise AssertionError("a message logging_svc refused must not reach the queue")


def test_the_facade_answers_a_4xx_from_logging_with_a_502_that_names_no_instance_host_or_port(closing):
    settings = FacadeSettings.from_env("facade-service", 8080, env={"CONSUL_HTTP_ADDR": "127.0.0.1:1"})
    app = closing(create_app(settings, hz=DisconnectedHazelcast()))
    http = ScriptedHttp(p8082=response(413, {"error": "request body too large"}))
    app.extensions["backends"] = Backends(settings, FixedDiscovery(8082), session=http)
    answer = app.test_client().post("/facade", json={"msg": "hello"})
    assert answer.status_code == 502
    assert answer.json == {"error": f"{LOGGING_SERVICE} rejected the request"}
    for internal in ("somehost", "127.0.0.1", "8082"):
        assert internal not in answer.get_data(as_text=True)


def test_a_messages_cursor_is_read_at_its_instance_only_and_a_404_once_it_is_gone():
    page = response(200, {"messages": ["m"], "next": None})
    held = response(200, {"messages": ["a", "b"], "next": "17"})
    http = ScriptedHttp(p8081=page, p8082=held, p8083=page)
    cursor = MessagesCursor(instance(8082).id, 15)
    for _ in range(5):
        assert backends(http, *PORTS).consumed_messages(2, cursor) == (
            instance(8082).id,
            ["a", "b"],
            MessagesCursor(instance(8082).id, 17).encode(),
        )
    assert http.tried == [8082] * 5
    with pytest.raises(NotFound):
        backends(http, 8081, 8083).consumed_messages(2, cursor)
    assert http.tried == [8082] * 5


LOG_FULL = response(507, {"error": "the log is full"})


class FakeQueue:
    """A bounded queue: `room` is what remaining_capacity answers; offer takes while `accepts`."""

    def __init__(self, room: int, accepts: bool = True):
        self.room = room
        self.accepts = accepts
        self.items: list[str] = []

    def remaining_capacity(self) -> int:
        return self.room

    def offer(self, item: str) -> bool:
        if self.accepts:
            self.items.append(item)
        return self.accepts


SHARED = SharedConfig("dev", ("127.0.0.1:1",), "messages-log", "messages-queue")


class QueueHazelcast:
    connected = True

    def __init__(self, queue: FakeQueue):
        self._queue = queue

    def shared_config(self) -> SharedConfig:
        return SHARED

    def get_queue(self, name: str, timeout: float | None = None):
        assert name == SHARED.queue_name
        return self._queue


def facade_with(closing, http: ScriptedHttp, queue: FakeQueue):
    settings = FacadeSettings.from_env("facade-service", 8080, env={"CONSUL_HTTP_ADDR": "127.0.0.1:1"})
    hz = QueueHazelcast(queue)
    app = closing(create_app(settings, hz=hz))
    app.extensions["backends"] = Backends(settings, FixedDiscovery(8081, 8082), hazelcast=hz, session=http)
    return app.test_client()


def test_a_full_log_is_a_507_tried_on_no_other_instance_and_nothing_is_queued(closing):
    http = ScriptedHttp(p8081=LOG_FULL, p8082=LOG_FULL)
    queue = FakeQueue(room=10)
    answer = facade_with(closing, http, queue).post("/facade", json={"msg": "hello"})
    assert answer.status_code == 507
    assert answer.json["error"] == "the log is full" and "Retry-After" not in answer.headers
    assert len(http.tried) == 1 and queue.items == []


def test_a_full_queue_is_a_503_with_retry_after_and_the_message_is_not_logged(closing):
    http = ScriptedHttp(p8081=STORED, p8082=STORED)
    answer = facade_with(closing, http, FakeQueue(room=0)).post("/facade", json={"msg": "hello"})
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    assert answer.json == {"error": "the message queue is full", "logged": False, "queued": False}
    assert http.tried == []


def test_a_queue_that_fills_after_the_check_is_answered_with_what_was_done(closing):
    http = ScriptedHttp(p8081=STORED, p8082=STORED)
    answer = facade_with(closing, http, FakeQueue(room=5, accepts=False)).post("/facade", json={"msg": "hello"})
    assert answer.status_code == 503
    assert answer.json["logged"] is True and answer.json["queued"] is False and answer.json["id"]


def test_the_queue_room_is_asked_again_on_every_post_once_it_is_near_the_bound(closing):
    http = ScriptedHttp(p8081=STORED, p8082=STORED)
    queue = FakeQueue(room=QUEUE_ROOM_MARGIN + 1)
    asked = []
    answer_room = queue.remaining_capacity
    queue.remaining_capacity = lambda: asked.append(1) or answer_room()  # type: ignore[method-assign]
    client = facade_with(closing, http, queue)
    assert [client.post("/facade", json={"msg": "m"}).status_code for _ in range(3)] == [201] * 3
    assert len(asked) == 1, "far from the bound, a fresh answer is reused"
    queue.room = 0
    client.application.extensions["backends"]._queue_room_at = float("-inf")
    assert client.post("/facade", json={"msg": "m"}).status_code == 503
    assert client.post("/facade", json={"msg": "m"}).status_code == 503
    assert len(asked) == 3, "near the bound, every POST asks"


REFUSED_WRITE = response(503, {"error": "the Hazelcast cluster has too few members to accept writes", "stored": False})


def test_a_write_refused_for_lack_of_members_is_tried_elsewhere_and_known_not_stored(closing):
    # Another instance may reach the larger side of a split: it is tried.
    for _ in range(10):
        http = ScriptedHttp(p8081=REFUSED_WRITE, p8082=STORED)
        assert backends(http, 8081, 8082).log_message("id-1", "hello").by == instance(8082).id
    # Refused everywhere: a 503 that says nothing was logged (no "logged": null, which means "not known").
    http = ScriptedHttp(p8081=REFUSED_WRITE, p8082=REFUSED_WRITE)
    queue = FakeQueue(room=10)
    answer = facade_with(closing, http, queue).post("/facade", json={"msg": "hello"})
    assert answer.status_code == 503
    assert answer.json.get("logged", False) is False, answer.json
    assert queue.items == []


def test_a_write_refused_for_lack_of_members_is_retried_whatever_the_budget_and_counts_towards_ejection():
    # The refusing instance did nothing, like a refused connection: trying another costs no budget.
    http = ScriptedHttp(p8081=REFUSED_WRITE, p8082=STORED)
    calling = backends(http, 8081, 8082, RETRY_BUDGET_MINIMUM="0", RETRY_BUDGET_RATIO="0")
    for n in range(30):
        assert calling.log_message(f"id-{n}", "hello").by == instance(8082).id
    assert http.tried.count(8081) == 3, "three refusals in a row eject it all the same"
    # Refused everywhere: MAX_ATTEMPTS still bounds the tries.
    http = ScriptedHttp(p8081=REFUSED_WRITE, p8082=REFUSED_WRITE)
    with pytest.raises(Unavailable) as failed:
        backends(http, 8081, 8082, RETRY_BUDGET_MINIMUM="0", RETRY_BUDGET_RATIO="0").log_message("id-1", "hello")
    assert len(http.tried) <= MAX_ATTEMPTS
    assert failed.value.public == f"every {LOGGING_SERVICE} instance failed"


class RefusingQueue(FakeQueue):
    def offer(self, item: str) -> bool:
        raise SplitBrainProtectionError("Split brain protection exception: two-members has failed!")


def test_an_offer_refused_for_lack_of_members_is_known_not_queued(closing):
    http = ScriptedHttp(p8081=STORED, p8082=STORED)
    answer = facade_with(closing, http, RefusingQueue(room=10)).post("/facade", json={"msg": "hello"})
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    assert answer.json["logged"] is True and answer.json["queued"] is False, answer.json


class StoreRefusingQueue(FakeQueue):
    def offer(self, item: str) -> bool:
        raise HazelcastError(
            "Exception from server: com.hazelcast.core.HazelcastException: consulservices.store.StoreRefused: "
            "storing 1 items of queue q: no connection to PostgreSQL"
        )


def test_an_offer_the_queues_database_refused_is_a_503_known_not_queued_and_counted(closing):
    http = ScriptedHttp(p8081=STORED, p8082=STORED)
    failures = {"structure": "queue", "outcome": "refused"}
    before = REGISTRY.get_sample_value("store_failures_total", failures) or 0
    answer = facade_with(closing, http, StoreRefusingQueue(room=10)).post("/facade", json={"msg": "hello"})
    assert answer.status_code == 503, answer.json
    assert answer.json["logged"] is True and answer.json["queued"] is False, answer.json
    # What the DatabaseUnreachable alert watches (conf/prometheus/alerts.yml).
    assert REGISTRY.get_sample_value("store_failures_total", failures) == before + 1


class SilentQueue:
    """A queue whose member does not answer (its host cut off): its futures stay pending."""

    def remaining_capacity(self) -> Future:
        return Future()

    def offer(self, item: str) -> Future:
        return Future()


class SilentHazelcast:
    connected = True

    def shared_config(self) -> SharedConfig:
        return SHARED

    def get_queue(self, name: str, timeout: float | None = None):
        assert timeout is not None, "a request's call to the queue is bounded by what is left of its deadline"
        return Bounded(SilentQueue(), timeout)


def silent_queue_facade(closing, http: ScriptedHttp):
    settings = FacadeSettings.from_env("facade-service", 8080, env={"CONSUL_HTTP_ADDR": "127.0.0.1:1",
                                                               "REQUEST_DEADLINE": "0.6"})  # fmt: skip
    hz = SilentHazelcast()
    app = closing(create_app(settings, hz=hz))
    app.extensions["backends"] = Backends(settings, FixedDiscovery(8081, 8082), hazelcast=hz, session=http)
    return app.test_client()


def test_a_queue_member_that_does_not_answer_holds_a_post_no_longer_than_its_deadline(closing):
    http = ScriptedHttp(p8081=STORED, p8082=STORED)
    client = silent_queue_facade(closing, http)
    started = time.monotonic()
    answer = client.post("/facade", json={"msg": "hello"})
    assert time.monotonic() - started < 0.6 + 0.3
    # The room could not be asked: nothing was stored, and the client may try again.
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    assert answer.json == {"error": "the Hazelcast cluster is unavailable"} and http.tried == []


def test_a_slow_log_write_leaves_the_offer_what_is_left_of_the_deadline(closing):
    def slow():
        time.sleep(0.4)
        return STORED

    http = ScriptedHttp(p8081=slow, p8082=slow)
    client = silent_queue_facade(closing, http)
    backends = client.application.extensions["backends"]
    backends._queue_room, backends._queue_room_at = 10 * QUEUE_ROOM_MARGIN, time.monotonic() + 60  # known, fresh
    started = time.monotonic()
    answer = client.post("/facade", json={"msg": "hello"})
    assert time.monotonic() - started < 0.6 + 0.3, "0.4 s to log, then only what was left for the offer"
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    assert answer.json["logged"] is True and answer.json["queued"] is None, answer.json


def test_the_calls_in_flight_are_counted_per_instance_for_the_pick_and_forgotten_when_done():
    seen: list[dict[str, int]] = []

    def least_busy(instances, failed_ids=(), outstanding=None):
        seen.append(dict(outstanding or {}))
        untried = [i for i in instances if i.id not in failed_ids]
        return min(untried, key=lambda i: (outstanding or {}).get(i.id, 0))

    release = threading.Event()

    def held():
        assert release.wait(5)
        return STORED

    http = ScriptedHttp(p8081=held, p8082=STORED)
    settings = FacadeSettings.from_env("facade-service", 8080, env={})
    calling = Backends(settings, FixedDiscovery(8081, 8082), session=http, pick=least_busy)
    first = threading.Thread(target=calling.log_message, args=("id-1", "held"))
    first.start()
    try:
        until(lambda: http.tried == [8081], timeout=5, what="the first call sent")
        assert calling.log_message("id-2", "hello").by == instance(8082).id
        assert seen[-1] == {instance(8081).id: 1}
    finally:
        release.set()
        first.join(5)
    http.by_port[8081] = requests.ConnectionError("reset")
    assert calling.log_message("id-3", "hello").by == instance(8082).id
    calling.log_message("id-4", "hello")
    assert seen[-1] == {}, "every call ended, the failed one too"


def test_an_untried_instance_is_tried_at_once_after_an_instance_this_call_ejected(monkeypatch):
    # The call that ejects 8081 (its third failure in a row) leaves it in the call's failures but out of
    # the candidates: 8082, untried, is still next at once, with no pause.
    pauses: list[tuple[float, float]] = []
    monkeypatch.setattr(caller_module.random, "uniform", lambda a, b: pauses.append((a, b)) or 0.0)
    http = ScriptedHttp(p8081=BROKEN, p8082=STORED)
    calling = backends(http, 8081, 8082, RETRY_BUDGET_MINIMUM="100")
    for n in range(100):
        assert calling.log_message(f"id-{n}", "hello").by == instance(8082).id
    assert http.tried.count(8081) == 3
    assert pauses == [], "a pause is for when every candidate failed this call"
