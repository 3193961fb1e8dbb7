"""One request followed end to end on a real stack: its X-Request-ID is echoed, written on every hop's log
lines (facade, the logging instance, the consumer that took it), and ./scripts/trace prints the hops in order."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid

import requests

from contracts.id_format import parse_traceparent
from devstack import ROOT, check_status, eventually, until
from devstack.stubs import StubInstance
from devstack.workers import on_every_worker

JSON = {"Content-Type": "application/json"}


def _trace(rid: str, log_dir) -> list[str]:
    done = subprocess.run(
        [str(ROOT / "scripts" / "trace"), rid, "--logs", str(log_dir)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _lines_with(service, rid: str) -> list[str]:
    return [line for line in service.proc.log_path.read_text(errors="replace").splitlines() if rid in line]


def _post(stack, rid: str, **kwargs) -> requests.Response:
    return requests.post(stack.url, json={"msg": "followed"}, headers={"X-Request-ID": rid}, timeout=10, **kwargs)


def test_one_request_is_followed_through_every_hop_and_trace_prints_them_in_order(own_stack):
    stack = own_stack(logging=1, messages=1)
    rid = f"test-{uuid.uuid4().hex}"
    response = _post(stack, rid)
    assert response.status_code == 201, response.text
    assert response.headers["X-Request-ID"] == rid
    facade, logger, consumer = stack.facade, stack.logging[0], stack.messages[0]

    def every_hop_logged():
        for service in (facade, logger, consumer):
            assert _lines_with(service, rid), f"no line with {rid} in {service.proc.log_path}"

    eventually(every_hop_logged, 15, what="the request id in the facade's, logging's and consumer's logs")
    assert all(f" rid={rid}] " in line for line in _lines_with(consumer, rid))

    hops = _trace(rid, stack.log_dir)
    order = [next(i for i, line in enumerate(hops) if s.instance_id in line) for s in (facade, logger, consumer)]
    assert order == sorted(order), "\n".join(hops)
    assert any("queueing" in line and facade.instance_id in line for line in hops), "\n".join(hops)

    # Errors echo it too: a body the facade does not take (415), then no logging instance left (503).
    refused = requests.post(
        stack.url, data="hi", headers={"X-Request-ID": rid, "Content-Type": "text/plain"}, timeout=10
    )
    assert (refused.status_code, refused.headers["X-Request-ID"]) == (415, rid)
    logger.proc.send_signal(signal.SIGTERM)
    logger.proc.stop()

    def unavailable():
        answer = _post(stack, rid)
        assert answer.status_code == 503, answer.text
        return answer

    assert (
        eventually(unavailable, 20, interval=0.3, what="503 once the logging instance left").headers["X-Request-ID"]
        == rid
    )


def test_log_format_json_writes_parseable_lines_that_carry_the_request_id(own_stack):
    stack = own_stack(logging=1, messages=1, env={"LOG_FORMAT": "json"})
    rid = uuid.uuid4().hex
    assert _post(stack, rid).status_code == 201

    def carried_everywhere():
        for service in stack.instances:
            lines = [json.loads(line) for line in service.proc.log_path.read_text().splitlines() if line.strip()]
            mine = [line for line in lines if line["request_id"] == rid]
            assert mine, f"no JSON line with request_id {rid} in {service.proc.log_path}"
            assert {line["instance"] for line in mine} == {service.instance_id}

    eventually(carried_everywhere, 15, what="JSON lines with the request id on every hop")
    hops = _trace(rid, stack.log_dir)
    for service in (stack.facade, stack.logging[0], stack.messages[0]):
        assert any(service.instance_id in hop for hop in hops), "\n".join(hops)


def test_a_retried_request_shows_every_attempt_and_each_instance_got_the_ids(own_stack):
    stack = own_stack(logging=1, messages=1)
    consul = stack.agent.client()
    # /health passes, every POST /logging answers 500; it keeps the headers of every call it got.
    failing = StubInstance("logging-service", post_status=500)
    failing_id = failing.instance_id
    try:
        failing.start(consul)
        # until, not eventually: a check that returns False would end eventually's wait at once.
        until(lambda: check_status(consul, failing_id) == "passing", 15, what="the stub passing")

        def sees_the_stub(health: dict) -> None:
            instances = health["details"]["discovery"]["logging-service"]["instances"]
            assert failing_id in instances, instances

        # Each worker has its own discovery cache.
        on_every_worker(stack.facade, sees_the_stub, timeout=15, what="the facade's workers seeing the stub")
        # Random picks: until one request went to the failing instance first (1 in 2 each time).
        for _ in range(20):
            rid, trace_id = f"retry-{uuid.uuid4().hex}", uuid.uuid4().hex
            traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
            answer = requests.post(
                stack.url,
                json={"msg": "retried"},
                headers={"X-Request-ID": rid, "traceparent": traceparent},
                timeout=10,
            )
            assert answer.status_code == 201, answer.text
            if failing.headers and failing.headers[-1].get("X-Request-ID") == rid:
                break
        else:
            raise AssertionError("no request went to the failing instance in 20")
        sent = parse_traceparent(failing.headers[-1]["traceparent"])
        assert sent is not None and sent.trace_id == trace_id
        logger = stack.logging[0]
        until(lambda: bool(_lines_with(logger, rid) and _lines_with(stack.messages[0], rid)), 15, what="hops logged")
        hops = _trace(rid, stack.log_dir)
        failed = next((i for i, h in enumerate(hops) if f"{failing_id} failed (HTTP 500)" in h), None)
        stored = next((i for i, h in enumerate(hops) if logger.instance_id in h and "stored" in h), None)
        assert failed is not None and stored is not None and failed < stored, "\n".join(hops)
    finally:
        failing.stop(consul)
