"""X-Request-ID and traceparent at the boundary: what is accepted, what is made instead, what goes on."""

from __future__ import annotations

import json
import logging

import pytest

from contracts import queue_item
from contracts.id_format import TraceParent, parse_traceparent, valid_request_id
from facade.settings import FacadeSettings
from servicekit import logs, request_id
from servicekit.settings import Settings

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


@pytest.mark.parametrize("value", ["abc", "a" * 128, "0af7651916cd43dd8448eb211c80319c", "req-1.2_3:4", "Zz9"])
def test_a_request_id_of_safe_characters_and_reasonable_length_is_accepted(value):
    assert valid_request_id(value)


@pytest.mark.parametrize(
    "value", [None, "", "a" * 129, "has space", "new\nline", 'quote"', "brace]", "é", "a%sb", "tab\t", "x;y"]
)
def test_a_request_id_that_is_empty_too_long_or_odd_is_refused(value):
    assert not valid_request_id(value)


def test_a_version_00_traceparent_is_parsed():
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-01") == TraceParent(TRACE, SPAN, "01")


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE.upper()}-{SPAN}-01",  # lower-case hex only
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE}-{SPAN}-01",  # version ff is forbidden
        f"00-{TRACE[:-1]}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}-1",
        f"0g-{TRACE}-{SPAN}-01",
        f"00_{TRACE}_{SPAN}_01",
    ],
)
def test_a_malformed_traceparent_is_ignored(value):
    assert parse_traceparent(value) is None


def test_a_later_version_may_add_fields_after_a_dash():
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-00-whatever") == TraceParent(TRACE, SPAN, "00")
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-00whatever") is None


def test_a_valid_request_id_wins_over_the_trace_id():
    ctx = request_id.from_headers({"X-Request-ID": "mine", "traceparent": f"00-{TRACE}-{SPAN}-01"})
    assert ctx.request_id == "mine" and ctx.trace_id == TRACE and ctx.flags == "01"


def test_without_a_request_id_the_trace_id_becomes_the_request_id():
    ctx = request_id.from_headers({"traceparent": f"00-{TRACE}-{SPAN}-01"})
    assert ctx.request_id == TRACE


def test_without_either_a_uuid4_hex_is_made_and_it_is_the_trace_id_too():
    ctx = request_id.from_headers({})
    assert len(ctx.request_id) == 32 and int(ctx.request_id, 16) and ctx.trace_id == ctx.request_id
    assert request_id.from_headers({}).request_id != ctx.request_id


def test_a_bad_request_id_is_replaced_and_not_kept():
    ctx = request_id.from_headers({"X-Request-ID": "bad id"})
    assert ctx.request_id != "bad id" and valid_request_id(ctx.request_id) and ctx.replaced


def test_the_headers_sent_on_keep_the_trace_with_a_new_parent_each_call():
    ctx = request_id.from_headers({"X-Request-ID": "mine", "traceparent": f"00-{TRACE}-{SPAN}-01"})
    first, second = ctx.outgoing_headers(), ctx.outgoing_headers()
    assert first["X-Request-ID"] == "mine"
    sent = parse_traceparent(first["traceparent"])
    assert sent is not None and sent.trace_id == TRACE and sent.flags == "01" and sent.parent_id != SPAN
    assert first["traceparent"] != second["traceparent"]


def test_a_queue_item_carries_the_request_id_and_old_items_still_decode():
    item = queue_item.encode("5f0b6a36-9c1c-4c43-a5d7-a2c3f5b0e7e4", "hi", request_id="mine")
    assert queue_item.decode(item) == "hi"
    assert queue_item.decode_item(item) == queue_item.Item("5f0b6a36-9c1c-4c43-a5d7-a2c3f5b0e7e4", "hi", "mine")
    old = json.dumps({"id": "5f0b6a36-9c1c-4c43-a5d7-a2c3f5b0e7e4", "msg": "hi"})
    assert queue_item.decode_item(old) == queue_item.Item("5f0b6a36-9c1c-4c43-a5d7-a2c3f5b0e7e4", "hi", None)
    # A request id the facade would not have written is not trusted from the queue either.
    odd = json.dumps({"id": "x", "msg": "hi", "request_id": "bad id"})
    assert queue_item.decode_item(odd) == queue_item.Item("x", "hi", None)
    assert queue_item.decode_item("not json") is None


def _emit(config: dict, capsys, rid: str | None) -> str:
    logging.config.dictConfig(config)
    try:
        with request_id.bound(rid):
            logging.getLogger("some.module").warning("hello %s", "world")
        return capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        logs.configure("reset", "WARNING")


def test_a_text_line_in_a_request_carries_its_id_and_a_line_outside_carries_none(capsys):
    config = logs.logconfig("facade-service-box-8080", service="facade-service")
    inside = _emit(config, capsys, "abc123")
    assert "[facade-service-box-8080 pid=" in inside and " rid=abc123] some.module: hello world" in inside, inside
    outside = _emit(config, capsys, None)
    assert "rid=" not in outside and outside.endswith("] some.module: hello world"), outside


def test_log_format_json_writes_one_object_per_line(capsys):
    config = logs.logconfig("facade-service-box-8080", service="facade-service", log_format="json")
    line = json.loads(_emit(config, capsys, "abc123"))
    assert line["message"] == "hello world" and line["request_id"] == "abc123" and line["level"] == "WARNING"
    assert line["logger"] == "some.module" and line["service"] == "facade-service"
    assert line["instance"] == "facade-service-box-8080" and line["time"].endswith("Z")
    assert json.loads(_emit(config, capsys, None))["request_id"] is None


def test_log_format_is_a_setting_text_by_default():
    assert FacadeSettings.from_env("facade-service", 8080, env={}).log_format == "text"
    assert FacadeSettings.from_env("facade-service", 8080, env={"LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        FacadeSettings.from_env("facade-service", 8080, env={"LOG_FORMAT": "xml"})


def _app():
    from flask import Flask

    from servicekit.web import configure_app

    app = Flask(__name__)
    configure_app(app, Settings.from_env("logging-service", 8081, env={}))

    @app.post("/echo")
    def echo():
        from servicekit.web import read_json_object

        read_json_object(__import__("flask").request)
        return {"rid": request_id.current_id()}

    @app.get("/boom")
    def boom():
        raise RuntimeError("boom")

    return app.test_client()


@pytest.mark.parametrize(
    "method, path, headers, status",
    [
        ("post", "/echo", {"Content-Type": "application/json"}, 200),
        ("post", "/echo", {"Content-Type": "text/plain"}, 415),
        ("get", "/nowhere", {}, 404),
        ("get", "/boom", {}, 500),
        ("get", "/echo", {}, 405),
        ("get", "/echo", {"Host": "attacker.example"}, 421),
    ],
)
def test_every_answer_echoes_the_request_id_errors_included(method, path, headers, status):
    client = _app()
    response = getattr(client, method)(path, data="{}", headers={"X-Request-ID": "rid-1", **headers})
    assert response.status_code == status
    assert response.headers["X-Request-ID"] == "rid-1"


def test_a_bad_request_id_is_not_echoed_and_a_new_one_is():
    response = _app().post("/echo", data="{}", headers={"X-Request-ID": "a b", "Content-Type": "application/json"})
    assert response.headers["X-Request-ID"] != "a b" and valid_request_id(response.headers["X-Request-ID"])
    assert response.json == {"rid": response.headers["X-Request-ID"]}
    assert request_id.current_id() is None, "the id is unbound once the request is over"


def test_calls_to_other_services_carry_the_request_id_and_a_traceparent(monkeypatch):
    from servicekit import tracing

    sent = {}

    def fake_send(self, request, **kwargs):
        sent.update(request.headers)
        raise RuntimeError("not sent")

    monkeypatch.setattr("requests.Session.send", fake_send)
    with request_id.bound("rid-2"), pytest.raises(RuntimeError):
        tracing.Session().get("http://127.0.0.1:9/x")
    assert sent["X-Request-ID"] == "rid-2" and parse_traceparent(sent["traceparent"]) is not None


def test_an_access_line_carries_the_request_id_the_answer_echoed(capsys):
    from datetime import timedelta
    from types import SimpleNamespace

    from gunicorn.config import Config

    from servicekit.gunicorn_config import AccessLogger

    config = logs.logconfig("logging-service-box-8081", service="logging-service")
    config["loggers"]["gunicorn.access"]["level"] = "INFO"
    cfg = Config()
    cfg.set("logconfig_dict", config)
    logger = AccessLogger(cfg)
    resp = SimpleNamespace(status="200 OK", headers=[("X-Request-ID", "rid-3")], sent=2, response_length=2)
    req = SimpleNamespace(headers=[], method="GET", path="/health", query="", version=(1, 1), uri="/health")
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/health", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1"}
    logger.access(resp, req, environ, timedelta(milliseconds=1))
    err = capsys.readouterr().err
    assert " rid=rid-3] gunicorn.access: " in err and "GET /health" in err, err
