"""Configuration that applies live: a key changed in Consul KV is enforced by the running workers of a real
stack within seconds, with no restart; a bad value is refused, the old one kept, and /health says so."""

from __future__ import annotations

import time

import psutil
import pytest
import requests

from devstack import build_stack, eventually, isolated_agent, record
from servicekit import live_config

TIMEOUT = 10


@pytest.fixture(scope="module")
def live_stack(hazelcast_cluster, log_dir):
    agent = isolated_agent(hazelcast_cluster, log_dir, name="consul-live-config")
    try:
        stack = build_stack(agent, hazelcast_cluster, log_dir, logging=1, messages=1, facades=1)
    except BaseException:
        agent.stop()
        raise
    try:
        yield stack
    finally:
        stack.stop()
        agent.stop()


def _pids(stack) -> set[int]:
    """Every gunicorn master and worker of the stack: a restart of any of them changes the set."""
    pids = set()
    for service in stack.instances:
        master = psutil.Process(service.proc.pid)
        pids |= {master.pid, *(child.pid for child in master.children())}
    return pids


def _post(stack, chars: int) -> int:
    return requests.post(stack.url, json={"msg": "x" * chars}, timeout=TIMEOUT).status_code


def _config(stack) -> dict:
    return requests.get(f"{stack.facade.url}/health", timeout=TIMEOUT).json()["details"]["config"]


def _every_worker(stack, check, reads: int = 8) -> None:
    """/health reaches one worker at random: several reads in a row, so both workers answer."""
    for _ in range(reads):
        check(_config(stack))


def test_a_changed_message_limit_is_enforced_within_five_seconds_without_a_restart(live_stack):
    kv = live_stack.agent.client().kv
    before = _pids(live_stack)
    assert _post(live_stack, 100) == 201

    kv.put(live_config.KEY_MAX_MESSAGE_CHARS, "50")
    changed_at = time.monotonic()

    def refused_by_every_worker():
        assert all(_post(live_stack, 100) == 400 for _ in range(8)), "a worker still takes 100 characters"

    eventually(refused_by_every_worker, timeout=10, interval=0.05, what="the new limit enforced")
    elapsed = time.monotonic() - changed_at
    assert elapsed < 5.0, f"the new limit took {elapsed:.2f} s"
    record(live_stack.log_dir, "live-config", {"limit_enforced_by_every_worker_after_s": round(elapsed, 3)})
    assert _post(live_stack, 50) == 201

    # Raised again past the start value (4096): logging_svc follows too, or the facade would answer 502.
    kv.put(live_config.KEY_MAX_MESSAGE_CHARS, "5000")

    def taken_by_every_worker():
        assert all(_post(live_stack, 4500) == 201 for _ in range(8)), "a worker or logging_svc refuses 4500"

    eventually(taken_by_every_worker, timeout=5, interval=0.05, what="the raised limit taken end to end")
    assert _pids(live_stack) == before, "an instance or a worker restarted"


def test_a_bad_limit_is_refused_with_the_old_one_kept_and_shown_in_health(live_stack):
    kv = live_stack.agent.client().kv
    kv.put(live_config.KEY_MAX_MESSAGE_CHARS, "60")
    eventually(lambda: _every_worker(live_stack, _applied(live_config.KEY_MAX_MESSAGE_CHARS, 60)), timeout=5)
    applied_index = _config(live_stack)["index"]

    for bad in ("sixty", "-3", "0", "10000000"):  # the last one cannot fit MAX_BODY_BYTES' forwarded body
        kv.put(live_config.KEY_MAX_MESSAGE_CHARS, bad)

        def refused(config, bad=bad):
            assert config["refused"].get(live_config.KEY_MAX_MESSAGE_CHARS, {}).get("value") == bad, config
            assert config["values"][live_config.KEY_MAX_MESSAGE_CHARS]["value"] == 60, config
            assert config["index"] == applied_index, config

        eventually(lambda: _every_worker(live_stack, refused), timeout=5)
        assert _post(live_stack, 61) == 400
        assert _post(live_stack, 60) == 201

    # A good value afterwards is applied, and the refusal is over.
    kv.put(live_config.KEY_MAX_MESSAGE_CHARS, "70")
    eventually(lambda: _every_worker(live_stack, _applied(live_config.KEY_MAX_MESSAGE_CHARS, 70)), timeout=5)
    assert _config(live_stack)["index"] > applied_index


def test_an_unknown_balancing_policy_is_refused_and_a_known_one_applied(live_stack):
    kv = live_stack.agent.client().kv
    kv.put(live_config.KEY_POLICY, "round-the-houses")

    def refused(config):
        assert config["refused"].get(live_config.KEY_POLICY, {}).get("value") == "round-the-houses", config
        assert config["values"][live_config.KEY_POLICY]["value"] == "random", config

    eventually(lambda: _every_worker(live_stack, refused), timeout=5)
    assert _post(live_stack, 10) == 201

    kv.put(live_config.KEY_POLICY, "random")
    eventually(lambda: _every_worker(live_stack, _applied(live_config.KEY_POLICY, "random")), timeout=5)


def _applied(key: str, value):
    def check(config):
        assert config["values"][key] == {**config["values"][key], "value": value, "from": "kv"}, config
        assert key not in config["refused"], config

    return check
