"""The tests' Consul dev agents listen only where they were told, whatever the consul version."""

from __future__ import annotations

import errno
import socket

import psutil

from devstack import ConsulAgent

# What a dev agent opens when not told otherwise: the HTTP API, DNS, Serf LAN/WAN, server RPC, gRPC,
# and from Consul 1.14 gRPC TLS (8503): the ports ./scripts/up's agent holds.
DEFAULT_PORTS = {8500, 8600, 8301, 8302, 8300, 8502, 8503}


def listening_ports(pid: int) -> set[int]:
    return {
        conn.laddr.port
        for conn in psutil.Process(pid).net_connections("inet")
        if conn.laddr and conn.status in (psutil.CONN_LISTEN, psutil.CONN_NONE)
    }


def test_two_test_agents_beside_a_default_agent_bind_only_their_own_ports(log_dir):
    # Stand in for ./scripts/up's agent on 8503, unless one (or anything else) already holds it.
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8503))
        holder.listen()
    except OSError as exc:
        assert exc.errno == errno.EADDRINUSE, exc
    agents: list[ConsulAgent] = []
    try:
        for i in range(2):
            agents.append(ConsulAgent(log_dir, name=f"consul-ports-{i}"))
            agents[-1].start()
        for agent in agents:
            given = set(agent.ports.values())
            bound = listening_ports(agent.proc.pid)
            assert bound <= given, f"{agent.proc.name} also listens on {sorted(bound - given)}"
            assert not bound & DEFAULT_PORTS
    finally:
        for agent in agents:
            agent.stop()
        holder.close()
