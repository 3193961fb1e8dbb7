"""What the facade's discovery cache does when Consul or every instance of a service fails. Real processes.

Each test has a stack of its own (own Consul agent), because it stops instances or restarts the agent.
"""

from __future__ import annotations

import os
import signal
import time

import consul
import requests

from devstack import Service, Stack, check_status, eventually, record

TIMEOUT = 10


def discovery(stack: Stack, service: str = "logging-service") -> dict:
    return requests.get(f"{stack.facade.url}/health", timeout=TIMEOUT).json()["details"]["discovery"][service]


def freeze(service: Service) -> None:
    """SIGSTOP the whole instance: its port still accepts connections, but nothing answers (a hung host)."""
    os.killpg(service.proc.pid, signal.SIGSTOP)


def thaw(service: Service) -> None:
    if service.proc.alive():
        os.killpg(service.proc.pid, signal.SIGCONT)


def test_post_is_a_503_at_once_when_every_logging_instance_is_critical(own_stack):
    stack = own_stack(logging=2, messages=1)
    client = stack.agent.client()
    try:
        for service in stack.logging:
            freeze(service)

        def all_critical():
            assert [check_status(client, s.instance_id) for s in stack.logging] == ["critical"] * 2

        eventually(all_critical, timeout=10, what="Consul marks every logging instance critical")

        def out_of_rotation():
            status = discovery(stack)
            assert status["instances"] == [], status
            assert status["consul"] == "ok" and status["stale_since"] is None, status

        critical_at = time.monotonic()
        # The facade hears of it through its blocking query, within moments.
        eventually(out_of_rotation, timeout=3, what="the facade drops the critical instances")
        dropped_in = time.monotonic() - critical_at
        started = time.monotonic()
        response = requests.post(stack.url, json={"msg": "nobody logs this"}, timeout=TIMEOUT)
        took = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert response.json() == {"error": "no healthy logging-service instance"}
        # At once: no attempt on the frozen instances, so nothing waits out a read timeout or the deadline.
        record(
            stack.log_dir,
            "every-logging-instance-critical",
            {
                "seen_critical_to_out_of_rotation_s": round(dropped_in, 2),
                "post_503_s": round(took, 3),
            },
        )
        assert took < 0.5, f"503 after {took:.2f} s"
    finally:
        for service in stack.logging:
            thaw(service)

    def accepted_again():
        assert requests.post(stack.url, json={"msg": "back"}, timeout=TIMEOUT).status_code == 201

    # Back in rotation as soon as Consul sees them pass again.
    eventually(accepted_again, timeout=10, what="POST accepted once the instances pass again")


def test_the_facade_follows_changes_within_seconds_after_the_consul_agent_restarts(own_stack):
    stack = own_stack(logging=2, messages=1)
    client = stack.agent.client()
    # An agent that has run for a while has a high index; a fresh test agent has not. Writes raise it,
    # and a registration makes it the logging-service index the facade's watch holds (the instance is
    # never passing, so nothing routes to it).
    for n in range(300):
        client.kv.put(f"test/index/{n}", "x")

    def watch_idle():
        assert discovery(stack)["updated_s_ago"] >= 1.0

    def watch_took_the_new_index():
        status = discovery(stack)
        assert status["updated_s_ago"] < 1.0 and "logging-service-never-passing" not in status["instances"]

    eventually(watch_idle, timeout=10)
    client.agent.service.register(
        "logging-service", service_id="logging-service-never-passing", port=1, check=consul.Check.ttl("1h")
    )
    eventually(watch_took_the_new_index, timeout=5)
    stack.agent.restart()
    # What ./scripts/up does after an agent restart: seed KV again (the instances register themselves).
    stack.cluster.seed_kv(stack.agent)
    stack.wait_all_passing(timeout=10)
    survivor, victim = stack.logging
    stack.logging.remove(victim)
    victim.proc.kill9()
    killed_at = time.monotonic()

    def only_the_survivor():
        status = discovery(stack)
        assert status["instances"] == [survivor.instance_id], status
        assert status["stale_since"] is None, status

    # A check interval (1 s) to go critical, then the blocking query answers at once. A watch that sent
    # the old agent's (higher) index would hear nothing for the whole 30 s wait.
    eventually(only_the_survivor, timeout=5, what="the facade drops the killed instance")
    seen_in = time.monotonic() - killed_at
    record(stack.log_dir, "change-after-agent-restart", {"kill_to_out_of_rotation_s": round(seen_in, 2)})
    assert seen_in < 5
