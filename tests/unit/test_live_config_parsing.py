"""The parsing and validation of live configuration values, and what a watch does with Consul's answers."""

from __future__ import annotations

import logging

import pytest

from servicekit import live_config
from servicekit.errors import Refused
from servicekit.live_config import LiveConfig, LiveSetting
from servicekit.settings import forwarded_body_bytes
from upstream import balancing

BODY = 64 * 1024


@pytest.mark.parametrize("raw, expected", [("50", 50), (" 4096\n", 4096), ("5000", 5000)])
def test_a_positive_whole_number_is_a_message_limit(raw, expected):
    assert live_config.parse_max_message_chars(raw, BODY) == expected


@pytest.mark.parametrize("raw", ["", "fifty", "0", "-3", "1.5", "1e3", "٣", "+7"])
def test_anything_but_a_positive_whole_number_is_refused_as_a_message_limit(raw):
    with pytest.raises(Refused, match="positive whole number"):
        live_config.parse_max_message_chars(raw, BODY)


def test_a_message_limit_whose_forwarded_body_exceeds_max_body_bytes_is_refused():
    largest = (BODY - forwarded_body_bytes(0)) // 12
    assert live_config.parse_max_message_chars(str(largest), BODY) == largest
    with pytest.raises(Refused, match="MAX_BODY_BYTES"):
        live_config.parse_max_message_chars(str(largest + 1), BODY)


def test_only_a_known_policy_name_is_a_policy():
    assert balancing.parse_policy(" random\n") == "random"
    with pytest.raises(Refused, match="random"):
        balancing.parse_policy("round-robin")


def _entry(key: str, value: str | None, index: int) -> dict:
    return {"Key": key, "Value": None if value is None else value.encode(), "ModifyIndex": index}


class _Target:
    def __init__(self):
        self.applied: list[int] = []


def _limit(target: _Target) -> LiveSetting:
    return LiveSetting(
        key=live_config.KEY_MAX_MESSAGE_CHARS,
        start=4096,
        parse=lambda raw: live_config.parse_max_message_chars(raw, BODY),
        apply=target.applied.append,
    )


def _watch(target: _Target) -> LiveConfig:
    return LiveConfig(client=None, settings=[_limit(target)])  # type: ignore[arg-type]  # no call is made


def test_a_watch_applies_a_changed_value_once_and_reports_its_index():
    target = _Target()
    watch = _watch(target)
    watch.answered(10, [_entry(live_config.KEY_MAX_MESSAGE_CHARS, "50", 7)])
    watch.answered(12, [_entry(live_config.KEY_MAX_MESSAGE_CHARS, "50", 7)])  # another key changed
    assert target.applied == [50]
    status = watch.status()
    assert status["index"] == 7
    assert status["values"][live_config.KEY_MAX_MESSAGE_CHARS] == {"value": 50, "from": "kv", "index": 7}
    assert status["refused"] == {}


def test_a_watch_refuses_a_bad_value_keeps_the_old_one_and_logs_why(caplog):
    target = _Target()
    watch = _watch(target)
    watch.answered(10, [_entry(live_config.KEY_MAX_MESSAGE_CHARS, "50", 7)])
    with caplog.at_level(logging.ERROR, logger="servicekit.live_config"):
        watch.answered(11, [_entry(live_config.KEY_MAX_MESSAGE_CHARS, "lots", 11)])
    assert target.applied == [50]
    assert "refusing" in caplog.text and "lots" in caplog.text
    status = watch.status()
    assert status["values"][live_config.KEY_MAX_MESSAGE_CHARS]["value"] == 50
    assert status["index"] == 7
    assert status["refused"][live_config.KEY_MAX_MESSAGE_CHARS]["value"] == "lots"
    assert status["refused"][live_config.KEY_MAX_MESSAGE_CHARS]["index"] == 11


def test_a_deleted_key_brings_back_the_start_value_from_the_environment():
    target = _Target()
    watch = _watch(target)
    watch.answered(3, [])  # absent from the start: the start value stays, nothing is applied
    assert target.applied == []
    watch.answered(10, [_entry(live_config.KEY_MAX_MESSAGE_CHARS, "50", 7)])
    watch.answered(14, [])
    assert target.applied == [50, 4096]
    assert watch.status()["values"][live_config.KEY_MAX_MESSAGE_CHARS] == {"value": 4096, "from": "env", "index": None}
    assert watch.status()["index"] == 14


def test_an_apply_that_fails_is_a_refusal_too():
    applied = []

    def use_policy(name: str) -> None:
        balancing.make(name)
        applied.append(name)

    setting = LiveSetting(key=balancing.KEY_POLICY, start="random", parse=str.strip, apply=use_policy)
    watch = LiveConfig(client=None, settings=[setting])  # type: ignore[arg-type]
    watch.answered(5, [_entry(balancing.KEY_POLICY, "nope", 5)])
    assert applied == []
    assert watch.status()["refused"][balancing.KEY_POLICY]["value"] == "nope"
    assert watch.status()["values"][balancing.KEY_POLICY]["value"] == "random"


def test_the_first_answer_is_awaitable():
    watch = _watch(_Target())
    assert not watch.wait_loaded(0.01)
    watch.answered(10, [])
    assert watch.wait_loaded(0.01)


def test_a_new_worker_waits_for_the_live_config_before_it_takes_requests(caplog):
    from types import SimpleNamespace

    from servicekit import gunicorn_hooks

    waited = []

    class NeverAnswers:
        def wait_loaded(self, timeout: float) -> bool:
            waited.append(timeout)
            return False

    worker = SimpleNamespace(wsgi=SimpleNamespace(extensions={"live_config": NeverAnswers()}))
    with caplog.at_level(logging.WARNING):
        gunicorn_hooks.post_worker_init(worker)
    assert waited == [gunicorn_hooks.LIVE_CONFIG_READY_TIMEOUT]
    assert "start values" in caplog.text


def test_the_status_says_which_kv_index_the_worker_is_current_as_of_before_any_key_applies():
    watch = _watch(_Target())
    assert watch.status()["answered_index"] is None, "no answer yet"
    watch.answered(10, [])  # no live key in KV: nothing applied, yet the worker is current as of index 10
    assert watch.status()["index"] is None
    assert watch.status()["answered_index"] == 10
    watch.answered(12, [_entry(live_config.KEY_MAX_MESSAGE_CHARS, "50", 12)])
    watch.answered(15, [_entry(live_config.KEY_MAX_MESSAGE_CHARS, "50", 12)])  # another key changed
    assert (watch.status()["index"], watch.status()["answered_index"]) == (12, 15)


def test_a_message_limit_of_thousands_of_digits_is_refused_not_an_error():
    # int() refuses more than 4,300 digits with a plain ValueError, which is not a refusal.
    with pytest.raises(Refused, match="MAX_BODY_BYTES"):
        live_config.parse_max_message_chars("9" * 5000, BODY)
    assert live_config.parse_max_message_chars("0" * 4999 + "7", BODY) == 7  # leading zeros, a number that fits
    with pytest.raises(Refused, match="positive whole number"):
        live_config.parse_max_message_chars("0" * 5000, BODY)


def _two_keys(first: LiveSetting) -> tuple[LiveConfig, list[str]]:
    """A watch of `first`, then of the balancing policy: what the policy key applied is returned."""
    applied: list[str] = []
    policy = LiveSetting(key=balancing.KEY_POLICY, start="random", parse=balancing.parse_policy, apply=applied.append)
    return LiveConfig(client=None, settings=[first, policy]), applied  # type: ignore[arg-type]


def test_a_value_of_thousands_of_digits_is_refused_and_the_other_key_of_the_answer_still_applies():
    target = _Target()
    watch, policies = _two_keys(_limit(target))
    huge = "9" * 5000
    watch.answered(9, [_entry(live_config.KEY_MAX_MESSAGE_CHARS, huge, 8), _entry(balancing.KEY_POLICY, "p2c", 9)])
    assert target.applied == [] and policies == ["p2c"]
    status = watch.status()
    assert status["values"][balancing.KEY_POLICY] == {"value": "p2c", "from": "kv", "index": 9}
    refused = status["refused"][live_config.KEY_MAX_MESSAGE_CHARS]
    assert refused["index"] == 8 and "MAX_BODY_BYTES" in refused["reason"]
    assert len(refused["value"]) < 300, "a value that long is shown cut, with its length"
    assert watch.wait_loaded(0)


@pytest.mark.parametrize("where", ["parse", "apply"])
def test_any_failure_of_one_key_is_its_refusal_and_never_stops_another_key(where, caplog):
    def broken(_value):
        raise RuntimeError("not what anyone expected")

    setting = LiveSetting(
        key=live_config.KEY_MAX_MESSAGE_CHARS,
        start=4096,
        parse=broken if where == "parse" else int,
        apply=broken if where == "apply" else (lambda value: None),
    )
    watch, policies = _two_keys(setting)
    with caplog.at_level(logging.ERROR, logger="servicekit.live_config"):
        watch.answered(9, [_entry(live_config.KEY_MAX_MESSAGE_CHARS, "50", 8), _entry(balancing.KEY_POLICY, "p2c", 9)])
    assert policies == ["p2c"]
    status = watch.status()
    assert status["values"][live_config.KEY_MAX_MESSAGE_CHARS] == {"value": 4096, "from": "env", "index": None}
    assert "not what anyone expected" in status["refused"][live_config.KEY_MAX_MESSAGE_CHARS]["reason"]
    assert "Traceback" in caplog.text, "an unexpected failure is logged with where it came from"
