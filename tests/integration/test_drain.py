"""./scripts/drain and ./scripts/undrain on a stack of its own: a drained logging instance leaves the facade's
rotation within a second under load with no failed request, still answers direct calls, shows the reason in
Consul, and comes back when undrained."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import requests

from devstack import ROOT, Load, eventually, record

# One worker for the module: its tests share `drain_stack`, which every worker would build again.
pytestmark = pytest.mark.xdist_group("drain")

TIMEOUT = 10
MAINTENANCE_CHECK = "_service_maintenance:"


@pytest.fixture(scope="module")
def drain_stack(module_stack):
    return module_stack(logging=2, messages=1, facades=1)


def _script(stack, name: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(ROOT / "scripts" / name), *args],
        env={**os.environ, "CONSUL_HTTP_ADDR": stack.agent.addr},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_a_drained_instance_leaves_rotation_within_a_second_with_no_failed_request(drain_stack):
    stack = drain_stack
    drained = stack.logging[0]
    client = stack.agent.client()
    load = Load(lambda s, n: s.post(stack.url, json={"msg": f"drain {n}"}, timeout=TIMEOUT), clients=4,
                max_requests=4000, max_seconds=40, pause=0.01)  # fmt: skip
    with load:
        load.wait_for(40)
        started = time.monotonic()
        with ThreadPoolExecutor(1, thread_name_prefix="drain-script") as pool:

            def drain() -> float:
                _script(stack, "drain", drained.instance_id, "disk swap, ticket 42")
                return time.monotonic() - started

            script = pool.submit(drain)
            drained_at = _last_seen_in_rotation(client, drained.instance_id, started, script)
            script_s = script.result(timeout=60)
        # Requests keep going for a while after the drain; then a direct call still has an answer.
        eventually(lambda: _sent_since(load, drained_at + 1.5, 40), timeout=20)
        direct = requests.get(f"{drained.url}/logging", params={"limit": 1}, timeout=TIMEOUT)
        assert direct.status_code == 200, direct.text

        _, checks = client.health.checks("logging-service")
        notes = {c["CheckID"]: c["Notes"] for c in checks if c["ServiceID"] == drained.instance_id}
        assert notes.get(MAINTENANCE_CHECK + drained.instance_id) == "disk swap, ticket 42", notes

        sent_there = [o.started for o in load.succeeded() if o.body["logged_by"] == drained.instance_id]
        last = max(sent_there) - drained_at
        assert last < 1.0, f"the drained instance got a new request {last:.2f} s after the drain reached Consul"
        after = [o for o in load.snapshot() if o.started > drained_at]
        record(stack.log_dir, "drain", {
            # Negative: the last request it got was sent before the drain reached Consul.
            "last_request_to_drained_after_drain_s": round(last, 3),
            "last_request_to_drained_after_script_start_s": round(max(sent_there) - started, 3),
            "script_s": round(script_s, 3),
            "requests_sent_after_drain": len(after),
            "of_them_to_drained": len([o for o in after if o.ok and o.body["logged_by"] == drained.instance_id]),
        })  # fmt: skip

        _script(stack, "undrain", drained.instance_id)
        undrained_at = time.monotonic()

        def back_in_rotation():
            assert any(
                o.started > undrained_at and o.body["logged_by"] == drained.instance_id for o in load.succeeded()
            ), "the undrained instance has no new request yet"

        eventually(back_in_rotation, timeout=10)
    assert load.failures() == [], load.failures()[:5]
    _, checks = client.health.checks("logging-service")
    assert not [c for c in checks if c["CheckID"].startswith(MAINTENANCE_CHECK)], checks


def _in_maintenance(client, instance_id: str) -> bool:
    _, checks = client.health.checks("logging-service")
    return any(c["CheckID"] == MAINTENANCE_CHECK + instance_id for c in checks)


def _last_seen_in_rotation(client, instance_id: str, started: float, script: Future) -> float:
    """When Consul last answered that `instance_id` had no maintenance check: the drain's write came after
    it, so a second counted from here is never longer than a second counted from the write. Not the
    script's end (a request sent while the script still ran would not count), nor its start (the script took
    1.7 to 3.1 s in runs beside a full suite: Python start-up counts, not the product)."""
    seen_in_rotation = started
    while True:
        asked = time.monotonic()
        if _in_maintenance(client, instance_id):
            return seen_in_rotation
        seen_in_rotation = asked
        if script.done():
            script.result()  # a failed script raises here
        assert asked - started < 60, "the drain never reached Consul"
        time.sleep(0.01)


def _sent_since(load: Load, since: float, count: int) -> None:
    sent = len([o for o in load.snapshot() if o.started > since])
    assert sent >= count, f"{sent} of {count} requests sent"


def test_draining_an_unknown_instance_fails_and_says_so(drain_stack):
    done = subprocess.run(
        [str(ROOT / "scripts" / "drain"), "logging-service-nowhere-1"],
        env={**os.environ, "CONSUL_HTTP_ADDR": drain_stack.agent.addr},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0
    assert "logging-service-nowhere-1" in done.stderr + done.stdout
