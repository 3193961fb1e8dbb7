"""Instances come and go under load; the facade keeps answering. Real processes, bounded load, loopback.

Each test has a stack of its own (own Consul agent, own map and queue on the shared Hazelcast cluster),
because it kills or restarts parts of it.
"""

from __future__ import annotations

import random
import signal
import time
import uuid

import requests

from devstack import Load, Stack, eventually, passing_to_first_request, read_all, record, wait_passing
from servicekit.consul_client import make_consul
from servicekit.settings import ConsulSettings
from upstream.watch import ServiceWatch

TIMEOUT = 10
CHECK_INTERVAL = 1.0  # servicekit.settings.Settings.check_interval


def post_load(stack: Stack, **kwargs) -> Load:
    tag = uuid.uuid4().hex[:6]
    return Load(lambda s, n: s.post(stack.url, json={"msg": f"{tag}-{n}"}, timeout=TIMEOUT), **kwargs)


def logged(stack: Stack) -> list[str]:
    live = next(s for s in stack.logging if s.proc.alive())
    return read_all(f"{live.url}/logging", "messages")


def describe(failures) -> str:
    return "; ".join(f"#{o.seq}: {o.status} {o.error or o.body}" for o in failures[:5])


def test_posts_survive_a_killed_logging_instance(own_stack):
    stack = own_stack(logging=3, messages=1)
    with post_load(stack, clients=4, max_requests=600, max_seconds=40) as load:
        load.wait_for(100)
        stack.logging[0].proc.kill9()
        load.wait_for(400)
    assert load.failures() == [], describe(load.failures())
    acknowledged = {o.body["msg"] for o in load.succeeded()}
    assert len(acknowledged) == len(load.outcomes) >= 400
    assert acknowledged <= set(logged(stack)), "an acknowledged message is missing from the log"


def test_gets_survive_a_killed_messages_instance(own_stack):
    stack = own_stack(logging=1, messages=2)
    with Load(lambda s, n: s.get(stack.url, timeout=TIMEOUT), clients=4, max_requests=400, max_seconds=40) as load:
        load.wait_for(50)
        stack.messages[0].proc.kill9()
        load.wait_for(300)
    assert load.failures() == [], describe(load.failures())
    answered_by = {o.body["messages_from"] for o in load.outcomes[-50:]}
    assert answered_by == {stack.messages[1].instance_id}


def test_a_new_logging_instance_receives_traffic_within_a_check_interval(own_stack):
    stack = own_stack(logging=1, messages=1)
    with post_load(stack, clients=2, max_requests=3000, max_seconds=40) as load:
        load.wait_for(20)
        delay = passing_to_first_request(stack, load)
    assert delay <= CHECK_INTERVAL + 1.0
    assert load.failures() == [], describe(load.failures())


def test_rolling_restart_of_every_service_loses_no_request(own_stack):
    stack = own_stack(logging=3, messages=2, facades=2)
    # The load finds the facades through Consul too, as a client of such a system would, on a fresh
    # connection per request, so a facade that left Consul gets no new request.
    watch = ServiceWatch(
        make_consul(ConsulSettings.from_env(env={"CONSUL_HTTP_ADDR": stack.agent.addr})), "facade-service", wait="5s"
    ).start()
    client = stack.agent.client()
    sent_at: dict[str, float] = {}

    def facade_url() -> str:
        return f"{random.choice(watch.instances(timeout=5)).url}/facade"

    def post(session, n):
        msg = f"roll-{n}"
        sent_at[msg] = time.monotonic()
        return session.post(facade_url(), json={"msg": msg}, timeout=TIMEOUT)

    def get(session, n):
        return session.get(facade_url(), timeout=TIMEOUT)

    def left_consul(service) -> float:
        assert service.instance_id not in client.agent.services(), f"{service.instance_id} still registered"
        return time.monotonic()

    left_at = {}  # service name -> when its last old instance left Consul
    # Bounded well past the restarts' own time (85 s serially on a loaded machine, over 150 s beside the
    # suite's other workers): the test ends the load itself once the last new instance has served.
    posts = Load(post, clients=3, max_requests=20000, max_seconds=240, pause=0.01, keep_alive=False)
    gets = Load(get, clients=1, max_requests=3000, max_seconds=240, pause=0.05, keep_alive=False)
    try:
        with posts as load, gets:
            load.wait_for(30)
            for group in (stack.logging, stack.messages, stack.facades):
                for old in list(group):
                    old.proc.send_signal(signal.SIGTERM)
                    left_at[old.name] = eventually(lambda old=old: left_consul(old), timeout=10, interval=0.01)
                    old.proc.stop()
                    wait_passing(stack.agent, stack.replace(old))
            load.wait_for(len(load.outcomes) + 30)
    finally:
        watch.stop()
    failures = posts.failures() + gets.failures()
    assert failures == [], describe(failures)
    assert len(posts.outcomes) > 100 and len(gets.outcomes) > 10
    acknowledged = {o.body["msg"] for o in load.succeeded()}
    assert acknowledged <= set(logged(stack))

    # A messages instance's memory dies with it, but it takes nothing once it has left Consul: every
    # message sent after the last old messages instance left is held by one of the new ones, once.
    after = {m for m in acknowledged if sent_at[m] > left_at["messages-service"]}
    assert len(after) > 30

    def held_once_by_the_new_instances():
        held = [m for s in stack.messages for m in read_all(f"{s.url}/messages", "messages")]
        assert len(held) == len(set(held)), "a message was consumed twice"
        missing = after - set(held)
        assert not missing, (
            f"{len(missing)} of {len(after)} messages sent after the last old instance left Consul are held nowhere"
        )

    eventually(held_once_by_the_new_instances, timeout=10)


def test_instances_register_again_after_the_consul_agent_restarts(own_stack):
    stack = own_stack(logging=2, messages=1)
    pids = {s.instance_id: s.proc.pid for s in stack.instances}
    with post_load(stack, clients=2, max_requests=5000, max_seconds=60) as load:
        load.wait_for(20)
        stack.agent.restart()
        back_at = time.monotonic()
        # What ./scripts/up does after an agent restart: seed KV again (the services do the rest).
        stack.cluster.seed_kv(stack.agent)
        stack.wait_all_passing(timeout=10)
        recovered_in = time.monotonic() - back_at
        load.wait_for(len(load.outcomes) + 20)
    record(
        stack.log_dir,
        "consul-agent-restart",
        {
            "all_passing_after_agent_back_s": round(recovered_in, 2),
            "requests": len(load.outcomes),
            "failed": len(load.failures()),
        },
    )
    assert recovered_in <= 10
    assert {s.instance_id: s.proc.pid for s in stack.instances} == pids, "no instance restarted"
    assert load.failures() == [], describe(load.failures())


def test_facade_serves_from_last_known_instances_while_consul_is_down(own_stack):
    stack = own_stack(logging=2, messages=1)
    try:
        with post_load(stack, clients=2, max_requests=2000, max_seconds=60) as load:
            load.wait_for(20)
            stack.agent.stop()
            down_from = len(load.outcomes)
            load.wait_for(down_from + 100)

            def says_consul_is_unreachable():
                details = requests.get(f"{stack.facade.url}/health", timeout=TIMEOUT).json()["details"]
                assert details["discovery"]["logging-service"]["consul"].startswith("unreachable")
                assert len(details["discovery"]["logging-service"]["instances"]) == 2
                assert details["discovery"]["logging-service"]["stale_since"]

            eventually(says_consul_is_unreachable, timeout=10)
            served_while_down = len(load.outcomes) - down_from
    finally:
        if not stack.agent.proc.alive():
            stack.agent.relaunch()
    record(
        stack.log_dir,
        "consul-down-mid-run",
        {
            "served_while_down": served_while_down,
            "requests": len(load.outcomes),
            "failed": len(load.failures()),
        },
    )
    assert served_while_down >= 100
    assert load.failures() == [], describe(load.failures())


def test_an_instance_started_while_consul_is_down_registers_once_it_is_back(own_stack):
    stack = own_stack(logging=1, messages=1)
    stack.agent.stop()
    late = stack.start("logging-service")
    stack.logging.append(late)
    time.sleep(2)  # a moment of real downtime for the instance to live through
    assert late.proc.alive(), "a missing Consul must not crash the instance"

    def not_ready():
        # Without KV the worker cannot learn the Hazelcast settings, so it says it is not ready. On a busy
        # machine gunicorn may still be booting after 2 s: a refused connection is retried, not a failure.
        assert requests.get(f"{late.url}/health", timeout=TIMEOUT).status_code == 503

    eventually(not_ready, timeout=20)
    assert late.proc.alive(), "a missing Consul must not crash the instance"
    stack.agent.relaunch()
    back_at = time.monotonic()
    stack.cluster.seed_kv(stack.agent)
    wait_passing(stack.agent, late, timeout=20)
    record(
        stack.log_dir, "consul-down-at-startup", {"passing_after_agent_back_s": round(time.monotonic() - back_at, 2)}
    )
    log = late.proc.log_path.read_text()
    assert "Consul" in log and "does not answer" in log, "the log says why it is not registered"
