"""logging_svc's HTTP contract, with an in-memory log in place of the Hazelcast map."""

import uuid

import pytest

from logging_svc import create_app
from logging_svc.settings import LoggingSettings
from logging_svc.store import STAMP_DIGITS, AnotherMessageStored, cut_page, encode
from servicekit.web import MAX_JSON_DEPTH


class MemoryLog:
    def __init__(self, ready=True):
        self.ready = ready
        self.entries: dict[str, str] = {}

    def add(self, message_id, msg):
        if message_id in self.entries:
            if self.entries[message_id] != msg:
                raise AnotherMessageStored(message_id)
            return False
        self.entries[message_id] = msg
        return True

    def messages(self):
        return list(self.entries.values())

    def page(self, after, limit):
        # Stamped 1, 2, 3... in the order added; the cut is the store's own.
        entries = [encode(msg, n) for n, msg in enumerate(self.entries.values(), 1)]
        if after is not None:
            entries = [e for e in entries if int(e[:STAMP_DIGITS]) >= after.stamp]
        return cut_page(entries, after, limit)

    def status(self):
        return {"entries": len(self.entries)}


@pytest.fixture
def log():
    return MemoryLog()


@pytest.fixture
def client(log):
    settings = LoggingSettings.from_env(
        "logging-service", 8081, env={"MAX_BODY_BYTES": "1024", "MAX_MESSAGE_CHARS": "64"}
    )
    return create_app(settings, message_log=log).test_client()


def test_post_stores_once_by_id(client, log):
    body = {"id": str(uuid.uuid4()), "msg": "hi"}
    assert client.post("/logging", json=body).status_code == 201
    replay = client.post("/logging", json=body)
    assert replay.status_code == 200 and replay.json["created"] is False
    assert client.get("/logging").json == {"messages": ["hi"], "next": None}


def test_an_id_that_holds_another_message_is_a_409_that_names_the_id_and_not_the_stored_text(client, log):
    message_id = str(uuid.uuid4())
    assert client.post("/logging", json={"id": message_id, "msg": "pay 10"}).status_code == 201
    other = client.post("/logging", json={"id": message_id, "msg": "pay 9999"})
    assert other.status_code == 409
    assert other.json == {"error": f"another message is already stored under id {message_id}: nothing was stored"}
    assert log.messages() == ["pay 10"]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"{", 400),
        (b"\xff", 400),
        (b"[]", 400),
        (b'{"id": "x", "msg": "hi"}', 400),
        (b'{"id": "%s", "msg": 5}' % str(uuid.uuid4()).encode(), 400),
        (b'{"id": "%s", "msg": ""}' % str(uuid.uuid4()).encode(), 400),
        (b'{"id": "%s", "msg": "%s"}' % (str(uuid.uuid4()).encode(), b"x" * 2000), 413),
    ],
    # Names that do not change with the ids: every xdist worker must collect the same tests.
    ids=["not-json", "not-utf8", "not-object", "id-not-uuid", "msg-not-string", "msg-empty", "too-large"],
)
def test_bad_input_stores_nothing(client, log, data, status):
    response = client.post("/logging", data=data, content_type="application/json")
    assert response.status_code == status
    assert "error" in response.json
    assert log.entries == {}


def nested_message(levels: int) -> bytes:
    """A valid message object, nested `levels` deep in all: only its depth can make it wrong."""
    inner = "[" * (levels - 1) + "]" * (levels - 1)
    return b'{"id": "%s", "msg": "hi", "extra": %s}' % (str(uuid.uuid4()).encode(), inner.encode())


def test_json_nested_deeper_than_the_limit_is_a_400_and_stores_nothing(client, log):
    body = nested_message(MAX_JSON_DEPTH + 1)
    # Under the body limit, so the nesting check is what answers, not the size check.
    assert len(body) < 1024
    response = client.post("/logging", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json == {"error": f"body nests deeper than {MAX_JSON_DEPTH} levels"}
    assert log.entries == {}


def test_json_nested_up_to_the_limit_is_stored(client, log):
    response = client.post("/logging", data=nested_message(MAX_JSON_DEPTH), content_type="application/json")
    assert response.status_code == 201
    assert list(log.entries.values()) == ["hi"]


def test_a_body_over_the_limit_is_a_413_whatever_it_holds(client, log):
    response = client.post("/logging", data=b"[" * 100_000, content_type="application/json")
    assert response.status_code == 413
    assert log.entries == {}


def test_health_follows_the_store(log, client):
    assert client.get("/health").status_code == 200
    log.ready = False
    response = client.get("/health")
    assert response.status_code == 503 and response.json["checks"] == {"hazelcast": False}


def test_a_post_while_consul_kv_cannot_be_read_is_a_503_not_a_traceback(closing):
    # Consul at a port nothing listens on: the worker's client never gets its settings, so it has no map name.
    settings = LoggingSettings.from_env("logging-service", 8081, env={"CONSUL_HTTP_ADDR": "127.0.0.1:1"})
    app = closing(create_app(settings))
    response = app.test_client().post("/logging", json={"id": str(uuid.uuid4()), "msg": "hi"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json == {"error": "the Hazelcast cluster is unavailable"}


def test_get_pages_through_the_log_oldest_first(client, log):
    for n in range(5):
        log.add(str(uuid.uuid4()), f"m{n}")
    first = client.get("/logging?limit=2").json
    assert first["messages"] == ["m0", "m1"] and first["next"]
    second = client.get("/logging", query_string={"limit": 2, "after": first["next"]}).json
    assert second["messages"] == ["m2", "m3"]
    last = client.get("/logging", query_string={"limit": 2, "after": second["next"]}).json
    assert last == {"messages": ["m4"], "next": None}


def test_up_to_a_thousand_messages_are_one_page_by_default(client, log):
    for n in range(1000):
        log.add(str(uuid.uuid4()), f"m{n}")
    body = client.get("/logging").json
    assert len(body["messages"]) == 1000 and body["next"] is None
    log.add(str(uuid.uuid4()), "one more")
    assert client.get("/logging").json["next"] is not None


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=10001", "limit=-1", "limit=1.5", "limit=ten", "limit=", "limit=%C2%B2", "after=", "after=nope",
     "after=00000000000000000001.0", "limit=5&after=1"],
)  # fmt: skip
def test_a_bad_limit_or_cursor_is_a_400_that_names_it(client, query):
    response = client.get(f"/logging?{query}")
    assert response.status_code == 400
    name = "limit" if "limit=5" not in query and query.startswith("limit") else "after"
    assert name in response.json["error"]
