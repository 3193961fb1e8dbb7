"""The Idempotency-Key's parsing, the message id derived from it, and every path of facade/idempotency.py
(with stand-ins for the map, the queue and logging_svc; tests/integration/test_idempotency.py uses the real
ones)."""

import json
import math
import uuid

import pytest
import requests
from hazelcast.errors import HazelcastError
from urllib3.exceptions import ProtocolError

from contracts import queue_item
from facade import create_app
from facade.backends import Backends
from facade.idempotency import AnswerStore, fingerprint, key_of, message_id
from facade.settings import FacadeSettings
from servicekit.discovery import Instance
from servicekit.errors import BadInput, HazelcastUnavailable
from servicekit.kvconfig import SharedConfig


def test_a_key_is_read_bare_or_as_a_structured_field_string():
    assert key_of("abc-123") == key_of('"abc-123"') == "abc-123"
    assert key_of(None) is None


@pytest.mark.parametrize("header", ["", "two words", "k" * 256, '"', 'a"b', "caf\u00e9"])
def test_a_malformed_key_is_bad_input(header):
    with pytest.raises(BadInput, match="Idempotency-Key"):
        key_of(header)


def test_the_same_key_always_names_the_same_message_and_another_key_another():
    first = message_id("order-17")
    assert first == message_id("order-17")
    assert first != message_id("order-18")
    assert str(uuid.UUID(first)) == first, "a canonical UUID, as POST /logging requires"


# The paths of facade/idempotency.py's docstring, one test each, through the facade's POST /facade: the
# idempotency map, the queue and logging_svc are stand-ins here (the map's entries expire on the test's clock,
# as Hazelcast's TTL does); tests/integration/test_idempotency.py drives the real ones.

WINDOW = 3600.0
LEASE = 25.0


class Clock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeMap:
    """The idempotency map: entries expire `ttl` seconds after they were written, a replace drops the TTL (as
    Hazelcast's does) until set_ttl, and `fail(method, value)` makes a call raise as an unreachable member."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.entries: dict[str, tuple[str, float]] = {}
        self.fail = lambda method, value: False

    def _check(self, method: str, value: str | None = None) -> None:
        for key, (_, until) in list(self.entries.items()):
            if until <= self.clock():
                del self.entries[key]
        if self.fail(method, value):
            raise HazelcastError(f"{method}: member unreachable")

    def _until(self, ttl) -> float:
        return math.inf if ttl is None else self.clock() + ttl

    def get(self, key):
        self._check("get")
        return self.entries[key][0] if key in self.entries else None

    def put_if_absent(self, key, value, ttl=None):
        self._check("put_if_absent", value)
        if key in self.entries:
            return self.entries[key][0]
        self.entries[key] = (value, self._until(ttl))
        return None

    def replace_if_same(self, key, old, new):
        self._check("replace_if_same", new)
        if key not in self.entries or self.entries[key][0] != old:
            return False
        self.entries[key] = (new, math.inf)
        return True

    def set_ttl(self, key, ttl):
        self._check("set_ttl")
        if key in self.entries:
            self.entries[key] = (self.entries[key][0], self._until(ttl))

    def remove_if_same(self, key, value):
        self._check("remove_if_same")
        if key in self.entries and self.entries[key][0] == value:
            del self.entries[key]
            return True
        return False

    # What the code before the phases called.
    def put(self, key, value, ttl=None):
        self._check("put", value)
        self.entries[key] = (value, self._until(ttl))

    def remove(self, key):
        self._check("remove")
        self.entries.pop(key, None)

    def phase(self, key) -> str | None:
        value = self.get(key)
        return None if value is None else json.loads(value).get("phase")


class Queue:
    def __init__(self):
        self.items: list[str] = []
        self.accepts = True

    def remaining_capacity(self) -> int:
        return 10_000

    def offer(self, item: str) -> bool:
        if self.accepts:
            self.items.append(item)
        return self.accepts

    def messages(self) -> list[str]:
        return [queue_item.decode_item(i).msg for i in self.items]


class Logging:
    """The facade's session to logging_svc: POST /logging as logging_svc answers it (201 stored, 200 the id
    already holds this message, 409 it holds another one), over a dict."""

    def __init__(self):
        self.log: dict[str, str] = {}
        self.posts = 0
        self.trust_env = True
        self.drop = False  # store the message, then drop the connection (a worker killed mid-request)

    def post(self, url, json, timeout):
        self.posts += 1
        created = json["id"] not in self.log
        held = self.log.setdefault(json["id"], json["msg"])
        if self.drop:
            raise requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")))
        if held != json["msg"]:
            return answer(409, {"error": f"another message is already stored under id {json['id']}"})
        return answer(201 if created else 200, {"id": json["id"], "msg": json["msg"], "created": created})

    def close(self):
        pass


def answer(status: int, body: dict) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    return response


class OneInstance:
    def instances(self, service, timeout=0.0):
        return (Instance(id=f"{service}-somehost-8081", address="127.0.0.1", port=8081),)

    def status(self):
        return {}

    def close(self):
        pass


class World:
    """A facade whose Hazelcast is the fake map (out of reach while `map_down`) and queue, in front of the
    fake logging_svc; `post(msg)` sends POST /facade with the key K."""

    connected = True

    def __init__(self, closing):
        self.clock = Clock()
        self.map = FakeMap(self.clock)
        self.map_down = False
        self.queue_ = Queue()
        self.logging = Logging()
        settings = FacadeSettings.from_env("facade-service", 8080, env={"CONSUL_HTTP_ADDR": "127.0.0.1:1"})
        app = closing(create_app(settings, hz=self))
        app.extensions["backends"] = Backends(settings, OneInstance(), hazelcast=self, session=self.logging)
        app.extensions["answers"] = AnswerStore(self, WINDOW, LEASE, clock=self.clock)
        self.client = app.test_client()

    def shared_config(self) -> SharedConfig:
        return SharedConfig("dev", ("127.0.0.1:1",), "messages-log", "messages-queue")

    def get_map(self, name: str, timeout: float | None = None):
        assert name == "messages-log.idempotency"
        if self.map_down:
            raise HazelcastUnavailable("the Hazelcast cluster is unavailable")
        return self.map

    def get_queue(self, name: str, timeout: float | None = None):
        assert name == "messages-queue"
        return self.queue_

    def post(self, msg: str, key: str = "K"):
        return self.client.post("/facade", json={"msg": msg}, headers={"Idempotency-Key": key})

    def queued(self) -> list[str]:
        return self.queue_.messages()

    def logged(self) -> list[str]:
        return list(self.logging.log.values())


@pytest.fixture
def world(closing):
    return World(closing)


def test_the_first_201_is_replayed_and_nothing_is_logged_or_queued_again(world):
    first = world.post("pay 10")
    assert first.status_code == 201, first.json
    again = world.post("pay 10")
    assert again.status_code == 201 and again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert world.logging.posts == 1 and world.queued() == ["pay 10"]
    world.clock.now += WINDOW - 1
    assert world.post("pay 10").headers["Idempotent-Replayed"] == "true", "kept for the whole window"


def test_after_a_refusal_the_key_keeps_its_message_another_is_422_and_a_retry_finishes(world):
    # The case: logged, the offer refused, then the key with another message.
    world.queue_.accepts = False
    refused = world.post("pay 10")
    assert refused.status_code == 503 and refused.json["logged"] is True and refused.json["queued"] is False
    other = world.post("pay 9999")
    assert other.status_code == 422, other.json
    assert "another message" in other.json["error"]
    assert world.logged() == ["pay 10"] and world.queued() == []
    world.queue_.accepts = True
    retried = world.post("pay 10")
    assert retried.status_code == 201, retried.json
    assert retried.json["msg"] == "pay 10" and "Idempotent-Replayed" not in retried.headers
    assert world.queued() == ["pay 10"]
    # A refusal before anything was stored keeps the message too.
    world.logging.drop = True
    for _ in range(2):
        assert world.post("pay 5", key="L").status_code == 503
    world.logging.drop = False
    assert world.post("pay 6", key="L").status_code == 422


def test_a_201_whose_answer_could_not_be_kept_is_never_queued_twice(world):
    # The offer lands, then the map fails the write that keeps the 201.
    world.map.fail = lambda method, value: '"status": 201' in (value or "")
    assert world.post("pay 10").status_code == 201
    world.map.fail = lambda method, value: False
    in_flight = world.post("pay 10")
    assert in_flight.status_code == 409, in_flight.json
    world.clock.now += LEASE + 1
    unknown = world.post("pay 10")
    assert unknown.status_code == 503, unknown.json
    assert unknown.json["logged"] is True and unknown.json["queued"] is None
    assert world.queued() == ["pay 10"], "no second offer before a `queued: null` answer"
    # Only after that answer may a retry offer again (the draft's contract, and docs/API.md's).
    assert world.post("pay 10").status_code == 201
    assert world.queued() == ["pay 10", "pay 10"]
    assert world.post("pay 10").headers["Idempotent-Replayed"] == "true"


def test_a_claim_whose_request_died_before_the_offer_is_taken_over_after_its_lease(world):
    answers = world.client.application.extensions["answers"]
    # A request that claimed the key and died before it logged anything.
    answers.claim("K", fingerprint("pay 10"))
    assert world.post("pay 10").status_code == 409
    world.clock.now += LEASE + 1
    assert world.post("pay 10").status_code == 201
    assert world.queued() == ["pay 10"]
    # One that logged the message first: whether it offered is known from its record (it never wrote
    # `offering`), but not whether the log entry is its own, so the first retry cannot offer.
    answers.claim("L", fingerprint("pay 20"))
    world.logging.log[message_id("L")] = "pay 20"
    world.clock.now += LEASE + 1
    unknown = world.post("pay 20", key="L")
    assert unknown.status_code == 503 and unknown.json["queued"] is None, unknown.json
    assert world.post("pay 20", key="L").status_code == 201
    assert world.queued() == ["pay 10", "pay 20"]


def test_when_the_offering_cannot_be_written_nothing_is_offered_and_a_retry_finishes(world):
    world.map.fail = lambda method, value: method == "replace_if_same" and '"offering"' in value
    refused = world.post("pay 10")
    assert refused.status_code == 503, refused.json
    assert refused.json["logged"] is True and refused.json["queued"] is False
    assert world.queued() == []
    world.map.fail = lambda method, value: False
    assert world.post("pay 10").status_code == 201
    assert world.queued() == ["pay 10"]


def test_a_key_whose_window_passed_and_whose_message_is_logged_answers_queued_null_before_it_queues_again(world):
    assert world.post("pay 10").status_code == 201
    world.clock.now += WINDOW + 1
    assert world.map.get("K") is None, "the record expired with its window"
    unknown = world.post("pay 10")
    assert unknown.status_code == 503, unknown.json
    assert unknown.json["logged"] is True and unknown.json["queued"] is None
    assert world.queued() == ["pay 10"]
    assert world.post("pay 10").status_code == 201
    assert world.queued() == ["pay 10", "pay 10"]


def test_a_key_answered_while_the_map_was_out_of_reach_is_not_queued_again_without_a_queued_null_answer(world):
    world.map_down = True
    assert world.post("pay 10").status_code == 201, "nothing kept, nothing refused"
    assert world.post("pay 9999").status_code == 422, "the log still refuses another message"
    unknown = world.post("pay 10")
    assert unknown.status_code == 503 and unknown.json["queued"] is None, unknown.json
    world.map_down = False
    unknown = world.post("pay 10")
    assert unknown.status_code == 503 and unknown.json["queued"] is None, unknown.json
    assert world.queued() == ["pay 10"]
    assert world.post("pay 10").status_code == 201
    assert world.queued() == ["pay 10", "pay 10"]


def test_a_key_reused_with_another_message_once_its_record_is_gone_is_422_from_the_log(world):
    world.queue_.accepts = False
    assert world.post("pay 10").status_code == 503
    world.queue_.accepts = True
    world.clock.now += WINDOW + 1
    other = world.post("pay 9999")
    assert other.status_code == 422, other.json
    error = "this Idempotency-Key came with another message: the log holds a different one under its id"
    assert other.json == {"error": error}
    assert world.logged() == ["pay 10"] and world.queued() == []
    assert world.map.get("K") is None, "the key is the logged message's again"
    # Its retries: the log held it before them, so first the honest `queued: null`, then the offer.
    assert world.post("pay 10").json["queued"] is None
    assert world.post("pay 10").status_code == 201
    assert world.queued() == ["pay 10"]


def test_after_logged_null_a_retry_that_finds_the_message_logged_answers_queued_null_first(world):
    world.logging.drop = True
    dropped = world.post("pay 10")
    assert dropped.status_code == 503 and dropped.json["logged"] is None, dropped.json
    world.logging.drop = False
    assert world.post("pay 10").json["queued"] is None
    assert world.post("pay 10").status_code == 201
    assert world.queued() == ["pay 10"]


def test_an_error_after_the_offer_was_sent_leaves_the_key_offering(world, monkeypatch):
    def broken(item):
        world.queue_.items.append(item)
        raise RuntimeError("a bug after the offer")

    monkeypatch.setattr(world.queue_, "offer", broken)
    assert world.post("pay 10").status_code == 500
    assert world.map.phase("K") == "offering"
    world.clock.now += LEASE + 1
    assert world.post("pay 10").json["queued"] is None
    assert world.queued() == ["pay 10"]
