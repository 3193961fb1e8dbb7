"""Properties of the request parsing every service shares (servicekit/web.py), and of the facade's POST."""

from __future__ import annotations

import json
import time

import pytest
from flask import Flask, request
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from facade import create_app
from facade.settings import FacadeSettings
from servicekit.errors import BadInput
from servicekit.kvconfig import SharedConfig
from servicekit.lifecycle import close_app
from servicekit.settings import SettingsError, forwarded_body_bytes
from servicekit.web import MAX_JSON_DEPTH, configure_app, nesting_exceeds, read_json_object, require_message

# Bounded: these run in every ./scripts/test on a 2-core machine.
BOUNDED = settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


@pytest.fixture(scope="module")
def app() -> Flask:
    app = Flask(__name__)
    configure_app(app, FacadeSettings.from_env("facade-service", 8080, env={}))
    return app


def parse(app: Flask, body: bytes):
    with app.test_request_context("/", method="POST", data=body, content_type="application/json"):
        return read_json_object(request)


@BOUNDED
@given(body=st.binary(max_size=2048))
@example(body=b"[" * 10_000)
@example(body=b'{"msg": NaN}')
@example(body=b"\xef\xbb\xbf{}")
def test_any_bytes_give_an_object_or_bad_input(app, body):
    try:
        data = parse(app, body)
    except BadInput as exc:
        assert str(exc)
    else:
        assert isinstance(data, dict)


@BOUNDED
@given(value=json_values)
def test_a_json_document_parses_back_to_itself_when_it_is_a_shallow_object(app, value):
    body = json.dumps(value).encode()
    if isinstance(value, dict) and depth(value) <= MAX_JSON_DEPTH:
        assert parse(app, body) == value
    else:
        with pytest.raises(BadInput):
            parse(app, body)


@BOUNDED
@given(levels=st.integers(1, 4 * MAX_JSON_DEPTH), opener=st.sampled_from(["[", '{"k":']))
def test_nesting_is_counted_outside_strings_only(levels, opener):
    closer = "]" if opener == "[" else "}"
    nested = opener * levels + "1" + closer * levels
    assert nesting_exceeds(nested) == (levels > MAX_JSON_DEPTH)
    # The same brackets inside a string (with escaped quotes around them) are text, not structure.
    assert not nesting_exceeds(json.dumps({"msg": '\\"' + nested * 3}))


def test_deep_nesting_is_refused_cheaply(app):
    body = b"[" * (64 * 1024 - 2) + b"]]"
    started = time.perf_counter()
    with pytest.raises(BadInput, match="nests deeper"):
        parse(app, body)
    assert time.perf_counter() - started < 0.5
    # Escaped quotes are the worst case of a backtracking string pattern; the scan stays linear.
    body = b'["' + b'\\"[' * 21_000 + b'"]'
    started = time.perf_counter()
    assert parse(app, b'{"k": ' + body + b"}")["k"]
    assert time.perf_counter() - started < 0.5


@BOUNDED
@given(data=st.dictionaries(st.sampled_from(["msg", "other"]), json_values, max_size=2))
@example(data={"msg": "\ud800"})
@example(data={"msg": "x" * 4097})
@example(data={"msg": "\U0001f600" * 4096})
def test_require_message_takes_only_nonempty_valid_text_within_the_limit(app, data):
    limit = app.config["MAX_MESSAGE_CHARS"]
    value = data.get("msg")
    valid = isinstance(value, str) and 0 < len(value) <= limit and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    with app.app_context():
        if valid:
            assert require_message(data) == value
        else:
            with pytest.raises(BadInput, match="msg"):
                require_message(data)


class RecordingHazelcast:
    """Connected; records what reaches the queue."""

    connected = True

    def __init__(self):
        self.offered: list[str] = []

    def shared_config(self) -> SharedConfig:
        return SharedConfig("dev", ("127.0.0.1:1",), "messages-log", "messages-queue")

    def get_queue(self, name: str, timeout: float | None = None):
        return self

    def remaining_capacity(self) -> int:
        return 10_000

    def offer(self, item: str) -> bool:
        self.offered.append(item)
        return True


@pytest.fixture(scope="module")
def recorded_facade():
    """One facade for every example, closed after the last. An app per example compiled its URL rules (werkzeug
    calls ast.parse) 150 times while the threads of the apps before it were still stopping, and once in a
    full run CPython 3.11.7 failed one with "SystemError: AST constructor recursion depth mismatch": its AST
    builder keeps that depth per interpreter, not per thread (python/cpython#106905)."""
    hz = RecordingHazelcast()
    # Consul on a port nothing listens on: a valid message gets as far as discovery, and a 503.
    app_settings = FacadeSettings.from_env("facade-service", 8080, env={"CONSUL_HTTP_ADDR": "127.0.0.1:1"})
    app = create_app(app_settings, hz=hz)
    yield app, hz
    close_app(app)


@settings(max_examples=150)
@given(body=st.one_of(st.binary(max_size=512), json_values.map(lambda v: json.dumps(v).encode())))
@example(body=json.dumps({"msg": "x" * 4097}).encode())
@example(body=b"[" * 5000)
@example(body=b'{"msg": "a valid message"}')
def test_the_facade_answers_bad_input_with_400_and_queues_nothing(recorded_facade, body):
    app, hz = recorded_facade
    hz.offered.clear()
    response = app.test_client().post("/facade", data=body, content_type="application/json")
    assert response.status_code in (400, 413, 503), response.data
    assert set(response.json) == {"error"}
    if response.status_code == 503:
        # Only a valid message gets this far (the explicit example makes sure one does every run).
        assert response.json["error"] == "no healthy logging-service instance"
    assert hz.offered == []


def test_a_message_limit_that_cannot_fit_the_body_limit_is_a_settings_error():
    with pytest.raises(SettingsError, match="MAX_MESSAGE_CHARS"):
        FacadeSettings.from_env("facade-service", 8080, env={"MAX_BODY_BYTES": "1000", "MAX_MESSAGE_CHARS": "4096"})
    assert forwarded_body_bytes(4096) <= 64 * 1024
