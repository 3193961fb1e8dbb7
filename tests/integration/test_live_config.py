"""Configuration that applies live: a key changed in Consul KV is enforced by the running workers of a real
stack within seconds, with no restart; a bad value is refused, the old one kept, and /health says so."""

from __future__ import annotations

import time

import psutil
import pytest
import requests

from devstack import Load, check_status, eventually, record, until
from devstack.stubs import StubInstance
from devstack.workers import on_every_worker
from servicekit import live_config
from upstream import balancing

# One worker for the module: its tests share `live_stack`, which every worker would build again.
pytestmark = pytest.mark.xdist_group("live_config")

TIMEOUT = 10


@pytest.fixture(scope="module")
def live_stack(module_stack):
    return module_stack(logging=1, messages=1, facades=1)


@pytest.fixture(autouse=True)
def kv_cleared_after(live_stack):
    """The stack is shared by the module: each test's KV keys are deleted after it, and every worker of the
    facade and of logging_svc is back on its start values before the next test runs."""
    yield
    live_stack.agent.client().kv.delete(live_config.PREFIX, recurse=True)

    def on_start_values(health: dict) -> None:
        config = health["details"]["config"]
        assert all(v["from"] == "env" for v in config["values"].values()), config
        assert config["refused"] == {}, config

    for service in (live_stack.facade, live_stack.logging[0]):
        on_every_worker(service, on_start_values, timeout=10, what="the config/ keys deleted")


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


def _every_worker(stack, check, timeout: float = 5.0) -> None:
    """Until every worker of the facade has shown a live configuration that passes `check` in /health."""
    on_every_worker(stack.facade, lambda health: check(health["details"]["config"]), timeout=timeout)


def test_a_changed_message_limit_is_enforced_within_five_seconds_without_a_restart(live_stack):
    kv = live_stack.agent.client().kv
    before = _pids(live_stack)
    assert _post(live_stack, 100) == 201

    kv.put(live_config.KEY_MAX_MESSAGE_CHARS, "50")
    changed_at = time.monotonic()

    def refused_by_every_worker():
        assert all(_post(live_stack, 100) == 400 for _ in range(8)), "a worker still takes 100 characters"

    eventually(refused_by_every_worker, timeout=10, interval=0.05, what="the new limit enforced")
    _every_worker(live_stack, _applied(live_config.KEY_MAX_MESSAGE_CHARS, 50), timeout=10)
    elapsed = time.monotonic() - changed_at
    assert elapsed < 5.0, f"the new limit took {elapsed:.2f} s"
    record(live_stack.log_dir, "live-config", {"limit_enforced_by_every_worker_after_s": round(elapsed, 3)})
    assert _post(live_stack, 50) == 201

    # Raised again past the start value (4096): logging_svc follows too, or the facade would answer 502.
    kv.put(live_config.KEY_MAX_MESSAGE_CHARS, "5000")

    def taken_by_every_worker():
        assert all(_post(live_stack, 4500) == 201 for _ in range(8)), "a worker or logging_svc refuses 4500"

    eventually(taken_by_every_worker, timeout=5, interval=0.05, what="the raised limit taken end to end")
    raised = _applied(live_config.KEY_MAX_MESSAGE_CHARS, 5000)
    for service in (live_stack.facade, live_stack.logging[0]):
        on_every_worker(service, lambda health: raised(health["details"]["config"]), what="5000 applied")
    assert _pids(live_stack) == before, "an instance or a worker restarted"


def test_a_bad_limit_is_refused_with_the_old_one_kept_and_shown_in_health(live_stack):
    kv = live_stack.agent.client().kv
    kv.put(live_config.KEY_MAX_MESSAGE_CHARS, "60")
    _every_worker(live_stack, _applied(live_config.KEY_MAX_MESSAGE_CHARS, 60))
    applied_index = _config(live_stack)["index"]

    for bad in ("sixty", "-3", "0", "10000000"):  # the last one cannot fit MAX_BODY_BYTES' forwarded body
        kv.put(live_config.KEY_MAX_MESSAGE_CHARS, bad)

        def refused(config, bad=bad):
            assert config["refused"].get(live_config.KEY_MAX_MESSAGE_CHARS, {}).get("value") == bad, config
            assert config["values"][live_config.KEY_MAX_MESSAGE_CHARS]["value"] == 60, config
            assert config["index"] == applied_index, config

        _every_worker(live_stack, refused)
        assert _post(live_stack, 61) == 400
        assert _post(live_stack, 60) == 201

    # A good value afterwards is applied, and the refusal is over.
    kv.put(live_config.KEY_MAX_MESSAGE_CHARS, "70")
    _every_worker(live_stack, _applied(live_config.KEY_MAX_MESSAGE_CHARS, 70))
    assert _config(live_stack)["index"] > applied_index


def test_an_unknown_balancing_policy_is_refused_and_a_known_one_applied(live_stack):
    kv = live_stack.agent.client().kv
    kv.put(balancing.KEY_POLICY, "round-the-houses")

    def refused(config):
        assert config["refused"].get(balancing.KEY_POLICY, {}).get("value") == "round-the-houses", config
        assert config["values"][balancing.KEY_POLICY]["value"] == "random", config

    _every_worker(live_stack, refused)
    assert _post(live_stack, 10) == 201

    kv.put(balancing.KEY_POLICY, "random")
    _every_worker(live_stack, _applied(balancing.KEY_POLICY, "random"))


def _applied(key: str, value):
    def check(config):
        assert config["values"][key] == {**config["values"][key], "value": value, "from": "kv"}, config
        assert key not in config["refused"], config

    return check


# Seconds a slow logging instance takes per call, under the facade's read timeout (3 s). p2c sends the stub a
# call when its count is no higher than the real instance's, so the stub's share grows with the real one's
# latency over SLOW: with 0.5 s, on a machine loaded by the other workers' stacks (the real instance at
# 0.1 to 0.2 s a call), the stub got 27 and 31 of 120 POSTs.
SLOW = 2.0
POSTS = 120


def test_a_policy_switched_to_p2c_in_kv_steers_the_facade_away_from_a_slow_instance(live_stack):
    """The random pick would send the slow stub about half of the POSTs; p2c sends it a call only when its
    calls outstanding are no more than the real instance's, which answers in milliseconds."""
    client = live_stack.agent.client()
    slow = StubInstance("logging-service", delay=SLOW)
    slow.start(client)
    try:
        until(lambda: check_status(client, slow.instance_id) == "passing", 15, what="the slow stub passing")
        client.kv.put(balancing.KEY_POLICY, "p2c")

        def p2c_with_the_slow_stub(health: dict) -> None:
            _applied(balancing.KEY_POLICY, "p2c")(health["details"]["config"])
            assert slow.instance_id in health["details"]["discovery"]["logging-service"]["instances"], health

        on_every_worker(live_stack.facade, p2c_with_the_slow_stub, timeout=15, what="p2c, and the slow stub seen")
        with Load(lambda s, n: s.post(live_stack.url, json={"msg": f"p2c {n}"}, timeout=TIMEOUT),
                  clients=4, max_requests=POSTS, max_seconds=60) as load:  # fmt: skip
            load.finish(timeout=80)
        assert load.failures() == [], load.failures()[:5]
        sent = len(load.outcomes)
        share = slow.count("POST") / sent
        record(live_stack.log_dir, "live-config-p2c", {"posts": sent, "to_slow_instance": slow.count("POST")})
        # Random: about 1/2 (a spread of 0.05 at 120); p2c: a few per cent. 1/4 is 5 spreads from either.
        assert share <= 0.25, f"the slow instance got {slow.count('POST')} of {sent} POSTs under p2c"
    finally:
        slow.stop(client)

    def without_the_stub(health: dict) -> None:
        assert slow.instance_id not in health["details"]["discovery"]["logging-service"]["instances"], health

    on_every_worker(live_stack.facade, without_the_stub, timeout=15, what="the slow stub gone from rotation")
