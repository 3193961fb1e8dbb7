"""./scripts/trace's reading of log files: both formats, tracebacks, other programs' lines, time order."""

from __future__ import annotations

import json

import pytest

from stackctl import trace_logs


def test_text_and_json_lines_of_one_request_come_out_in_time_order(tmp_path):
    (tmp_path / "facade-8080.log").write_text(
        "2026-11-29 16:00:00,100 INFO [facade-service-box-8080 pid=7 rid=abc] facade.routes: message 1: logging it\n"
        "2026-11-29 16:00:00,150 INFO [facade-service-box-8080 pid=7 rid=other] facade.routes: someone else\n"
        "2026-11-29 16:00:00,300 WARNING [facade-service-box-8080 pid=7] gunicorn.error: no request here abc\n"
        "2026-11-29 16:00:00,400 INFO [facade-service-box-8080 pid=7 rid=abc] facade.routes: queueing it\n"
    )
    # A JSON log written in UTC, between the two text lines (the text lines are local time).
    local = trace_logs.parse_line("2026-11-29 16:00:00,200 INFO [x-service-h-1 pid=1 rid=abc] m: x")
    assert local is not None
    from datetime import UTC, datetime

    stamp = datetime.fromtimestamp(local.at, UTC).strftime("%Y-%m-%dT%H:%M:%S.200Z")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "logging-8081.log.1").write_text(
        json.dumps({"time": stamp, "level": "INFO", "logger": "logging_svc.routes", "message": "message 1 stored",
                    "request_id": "abc", "service": "logging-service", "instance": "logging-service-box-8081"})
        + "\nnot json {\n"
    )  # fmt: skip
    (tmp_path / "consul.log").write_text("2026-11-29T16:00:00.000Z [INFO] agent: abc synced\n")
    lines = [r.line() for r in trace_logs.trace("abc", tmp_path)]
    assert len(lines) == 3, lines
    assert "facade-service-box-8080" in lines[0] and "logging it" in lines[0]
    assert "logging-service " in lines[1] and "logging-service-box-8081" in lines[1] and "stored" in lines[1]
    assert "queueing it" in lines[2] and "facade-service " in lines[2]


def test_a_traceback_stays_with_its_record():
    text = [
        "2026-11-29 16:00:00,100 ERROR [facade-service-box-8080 pid=7 rid=abc] servicekit.web: unhandled error\n",
        "Traceback (most recent call last):\n",
        '  File "x.py", line 1, in <module>\n',
        "RuntimeError: boom\n",
        "2026-11-29 16:00:00,200 INFO [facade-service-box-8080 pid=7] gunicorn.error: next\n",
        "after the other record\n",
    ]
    (record,) = trace_logs.records_of(text, "abc")
    assert record.message.endswith("RuntimeError: boom") and "after" not in record.message


def test_a_request_id_that_is_a_prefix_of_another_does_not_match_it():
    text = ["2026-11-29 16:00:00,100 INFO [f-service-h-1 pid=7 rid=abcdef] m: x\n"]
    assert list(trace_logs.records_of(text, "abc")) == []


def test_the_script_says_when_nothing_carries_the_id(tmp_path, capsys):
    assert trace_logs.main(["nothing", "--logs", str(tmp_path)]) == 1
    assert "no log line carries request id nothing" in capsys.readouterr().err


def _text_line(created: float, message: str, rid: str = "abc") -> str:
    """A line as the services' text format (servicekit.logs.logconfig) writes it at `created`."""
    import logging
    from logging.config import DictConfigurator

    from servicekit import logs

    config = logs.logconfig("facade-service-box-8080", service="facade-service")
    formatter = DictConfigurator(config).configure_formatter(config["formatters"]["instance"])
    record = logging.LogRecord("facade.routes", logging.INFO, __file__, 1, message, None, None)
    record.created = created
    record.msecs = (created % 1) * 1000
    record.request_tag = f" rid={rid}"
    return formatter.format(record)


CREATED = 1_795_968_000.123456  # 2026-11-29 16:00:00.123456 UTC


def test_a_text_line_is_stamped_in_utc_to_the_microsecond_and_read_back_so():
    line = _text_line(CREATED, "hello")
    assert line.startswith("2026-11-29 16:00:00.123456Z INFO [facade-service-box-8080 pid="), line
    record = trace_logs.parse_line(line)
    assert record is not None and record.at == pytest.approx(CREATED, abs=1e-6)


def test_lines_in_the_same_millisecond_of_two_files_come_out_in_time_order(tmp_path):
    # The later line is the first of its file: a millisecond stamp would tie, and the line numbers decide.
    (tmp_path / "a.log").write_text(_text_line(CREATED + 0.0004, "second") + "\n")
    (tmp_path / "b.log").write_text(
        _text_line(CREATED - 5, "earlier", rid="x") + "\n" + _text_line(CREATED + 0.0001, "first") + "\n"
    )
    assert [r.message for r in trace_logs.trace("abc", tmp_path)] == ["first", "second"]
