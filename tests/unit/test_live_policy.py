"""The facade's balancing policy as Consul KV switches it live (facade.create_app wires
servicekit.live_config to Backends.use_policy, with LB_POLICY as the start value)."""

from __future__ import annotations

from facade import create_app
from facade.settings import FacadeSettings
from upstream import balancing
from upstream.balancing import PowerOfTwoPick, RandomPick


class DisconnectedHazelcast:
    connected = False


def _policy_entry(value: str, index: int) -> dict:
    return {"Key": balancing.KEY_POLICY, "Value": value.encode(), "ModifyIndex": index}


def facade(closing, **env: str):
    # Consul at a port nothing listens on: the watch's own queries fail; the test hands it Consul's answers.
    settings = FacadeSettings.from_env("facade-service", 8080, env={"CONSUL_HTTP_ADDR": "127.0.0.1:1", **env})
    app = closing(create_app(settings, hz=DisconnectedHazelcast()))
    return app.extensions["live_config"], app.extensions["backends"]


def test_a_kv_policy_switches_the_picker_the_calls_use(closing):
    live, backends = facade(closing)
    assert isinstance(backends.caller.picker, RandomPick)
    live.answered(5, [_policy_entry("p2c", 5)])
    assert isinstance(backends.caller.picker, PowerOfTwoPick), "the calls pick by p2c, not only /health says so"
    live.answered(9, [_policy_entry("random", 9)])
    assert isinstance(backends.caller.picker, RandomPick)


def test_deleting_the_kv_policy_brings_back_lb_policy_not_random(closing):
    live, backends = facade(closing, LB_POLICY="p2c")
    assert isinstance(backends.caller.picker, PowerOfTwoPick)
    live.answered(5, [_policy_entry("random", 5)])
    assert isinstance(backends.caller.picker, RandomPick)
    live.answered(8, [])
    assert isinstance(backends.caller.picker, PowerOfTwoPick)
    assert live.status()["values"][balancing.KEY_POLICY] == {"value": "p2c", "from": "env", "index": None}
