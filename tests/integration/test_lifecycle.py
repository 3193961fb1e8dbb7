"""How an instance stops and what gunicorn's signals do to its Consul registration. Real gunicorn masters
registered in a real Consul agent; each test stops every process it started, a second master included.

The ordering checks read the instance's log: master and workers append to one file, so the order of
its lines is the order in which they happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import pytest
import requests

from devstack import Load, Service, eventually, read_all, wait_passing
from servicekit.gunicorn_hooks import WORKER_READY

TIMEOUT = 10
REFUSED_USR2 = "refusing USR2"
WORKER_EXITING = "Worker exiting"


def registered(agent, service: Service) -> bool:
    return service.instance_id in agent.client().agent.services()


def log_lines(service: Service) -> list[str]:
    return service.proc.log_path.read_text(errors="replace").splitlines()


def first_index(lines: list[str], text: str) -> int:
    found = [i for i, line in enumerate(lines) if text in line]
    assert found, f"no log line contains {text!r}"
    return found[0]


def kill_group(service: Service) -> None:
    """Whatever the test did, no master of this instance outlives it (a second master shares the group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.proc.pid, signal.SIGKILL)
    if service.proc.popen is not None:
        service.proc.popen.wait(10)


def test_a_stopping_messages_instance_takes_nothing_after_it_left_consul(own_stack):
    stack = own_stack(logging=1, messages=2)
    leaving, staying = stack.messages
    sent_at: dict[str, float] = {}

    def post(session, n):
        msg = f"leave-{n}"
        sent_at[msg] = time.monotonic()
        return session.post(stack.url, json={"msg": msg}, timeout=TIMEOUT)

    def left_consul() -> float:
        assert not registered(stack.agent, leaving), "still registered"
        return time.monotonic()

    with Load(post, clients=2, max_requests=3000, max_seconds=40, pause=0.01) as load:
        load.wait_for(20)
        leaving.proc.send_signal(signal.SIGTERM)
        left_at = eventually(left_consul, timeout=10, interval=0.01)
        leaving.proc.popen.wait(20)
        load.wait_for(len(load.outcomes) + 20)
    assert load.failures() == []
    after = {o.body["msg"] for o in load.succeeded() if sent_at[o.body["msg"]] > left_at}
    assert len(after) >= 20

    def all_at_the_staying_instance():
        held = set(read_all(f"{staying.url}/messages", "messages"))
        missing = after - held
        assert not missing, (
            f"{len(missing)} of {len(after)} messages sent after the instance left Consul are not "
            f"at the other instance: the leaving one took them"
        )

    eventually(all_at_the_staying_instance, timeout=10)
    lines = log_lines(leaving)
    assert (
        first_index(lines, "stopped taking messages")
        < first_index(lines, "deregistered")
        < first_index(lines, WORKER_EXITING)
    )


@pytest.mark.parametrize("how", ["ctrl-c", "sigquit"])
def test_a_quick_stop_leaves_consul_before_the_workers_stop(consul_agent, start_instance, how):
    service = wait_passing(consul_agent, start_instance("logging-service"))
    # A worker still booting has gunicorn's own SIGINT handler and would stop at once.
    eventually(lambda: _logged(service, WORKER_READY, _count(service, "Booting worker")), timeout=15)
    try:
        if how == "ctrl-c":
            # A terminal's Ctrl-C signals the whole foreground process group: master and workers at once.
            os.killpg(service.proc.pid, signal.SIGINT)
        else:
            service.proc.send_signal(signal.SIGQUIT)
        service.proc.popen.wait(20)
    finally:
        kill_group(service)
    lines = log_lines(service)
    left = first_index(lines, f"deregistered {service.instance_id}")
    assert left < first_index(lines, WORKER_EXITING), "a worker stopped while the instance was still in Consul"
    assert not registered(consul_agent, service)


def test_hup_keeps_one_registration_keeper_and_the_instance_registered(consul_agent, start_instance):
    service = wait_passing(consul_agent, start_instance("logging-service"))
    client = consul_agent.client()
    try:
        for hup in (1, 2):
            service.proc.send_signal(signal.SIGHUP)
            eventually(lambda hup=hup: _logged(service, "Handling signal: hup", hup), timeout=10)
            # The reloaded master still keeps the instance registered: remove it behind its back.
            client.agent.service.deregister(service.instance_id)
            wait_passing(consul_agent, service, timeout=15)
        service.proc.stop(signal.SIGTERM)
    finally:
        kill_group(service)
    assert _count(service, f"deregistered {service.instance_id}") == 1, "exactly one registration leaves"
    assert _count(service, "registration keeper started") == 1, "one keeper per master, whatever the number of HUPs"
    assert not registered(consul_agent, service)


def test_usr2_is_refused_with_a_clear_log_line_and_the_instance_stays_registered(consul_agent, start_instance):
    service = wait_passing(consul_agent, start_instance("logging-service"))
    try:
        service.proc.send_signal(signal.SIGUSR2)
        eventually(lambda: _logged(service, "Handling signal: usr2", 1), timeout=10)
        eventually(lambda: _logged(service, REFUSED_USR2, 1), timeout=5, what="USR2 refused in the log")
        assert _count(service, "Starting gunicorn") == 1, "a second master started"
        wait_passing(consul_agent, service, timeout=5)
        assert requests.get(f"{service.url}/health", timeout=TIMEOUT).status_code == 200
        service.proc.stop(signal.SIGTERM)
        # No second master holds the socket or the registration once the only one stopped.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", service.port), timeout=2).close()
        assert not registered(consul_agent, service)
    finally:
        kill_group(service)


def _count(service: Service, text: str) -> int:
    return sum(text in line for line in log_lines(service))


def _logged(service: Service, text: str, times: int) -> None:
    assert _count(service, text) == times, f"{text!r} logged {_count(service, text)} times, not {times}"
