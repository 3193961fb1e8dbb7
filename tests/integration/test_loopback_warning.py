"""An instance registered at a loopback address with an agent of a multi-node Consul cluster is reachable
from its own host only: a facade on another host that picks it calls its own port. The instance says so
in its log and in /health; with a single-node agent (the dev stack), or at the agent's own address (a
simulated host's 127.100.0.x), it says nothing.

Both agents here run on 127.0.0.1: an instance at 127.0.0.2 stands for one registered at loopback on a
host whose agent has another address."""

from __future__ import annotations

import requests

from devstack import ConsulAgent, eventually, wait_passing

TIMEOUT = 10


def health(url: str) -> dict:
    return requests.get(f"{url}/health", timeout=TIMEOUT).json()


def test_a_loopback_address_with_a_multi_node_agent_is_a_warning_in_health(
    consul_agent, hazelcast_cluster, start_instance, log_dir
):
    joined, other = ConsulAgent(log_dir, name="consul-joined"), ConsulAgent(log_dir, name="consul-other")
    try:
        joined.start()
        other.start()
        # Two dev agents are two servers in bootstrap mode: they share a LAN pool (what /v1/agent/members
        # shows) without sharing a Raft cluster, which is all this test needs.
        joined.client().agent.join(f"127.0.0.1:{other.ports['serf-lan']}")

        def two_members():
            assert len(joined.client().agent.members()) == 2

        eventually(two_members, timeout=15, what="the agents joined")
        hazelcast_cluster.seed_kv(joined)
        apart = wait_passing(joined, start_instance("logging-service", agent=joined, env={"SERVICE_HOST": "127.0.0.2"}))
        assert health(f"http://127.0.0.2:{apart.port}")["warnings"] == [
            "registered at 127.0.0.2 with an agent in a 2-node cluster: facades on other hosts call their own port"
        ]
        assert "facades on other hosts call their own port" in apart.proc.log_path.read_text()

        # At the agent's own address, as on a simulated host: reachable from the other nodes, nothing to say.
        own = wait_passing(joined, start_instance("logging-service", agent=joined))
        assert "warnings" not in health(own.url)
        # The session's agent is a single-node dev agent: nothing to say either.
        alone = wait_passing(consul_agent, start_instance("logging-service", env={"SERVICE_HOST": "127.0.0.2"}))
        assert "warnings" not in health(f"http://127.0.0.2:{alone.port}")
    finally:
        joined.stop()
        other.stop()
