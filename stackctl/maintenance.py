"""Taking an instance out of every caller's rotation without stopping it: Consul's maintenance mode.

The agent adds a critical check (`_service_maintenance:<id>`, its Notes the reason) to the instance. Every
watch (servicekit.discovery) leaves critical instances out (servicekit.discovery.usable), and its
blocking query is answered as soon as the check is added, so each facade worker drops the instance within
milliseconds, while the instance itself keeps serving what it has and answers direct calls. Its own
/health check runs on and stays passing underneath; disabling maintenance removes the extra check, and it is back.
"""

from __future__ import annotations

import getpass
import socket
import time

import consul

MAINTENANCE_CHECK_PREFIX = "_service_maintenance:"


class NotHere(LookupError):
    """The instance is not registered with this agent (maintenance is set on the agent that holds it)."""


def default_reason() -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"drained by {getpass.getuser()}@{socket.gethostname()} at {when}"


def _require_local(client: consul.Consul, instance_id: str) -> None:
    if instance_id in client.agent.services():
        return
    _, nodes = client.catalog.nodes()
    for node in nodes:
        _, found = client.catalog.node(node["Node"])
        if found and instance_id in (found.get("Services") or {}):
            raise NotHere(
                f"{instance_id} is registered with the agent of node {node['Node']} ({node['Address']}), not "
                "this one: point CONSUL_HTTP_ADDR at that agent"
            )
    raise NotHere(f"no instance {instance_id!r} in Consul (./scripts/status lists them)")


def drain(client: consul.Consul, instance_id: str, reason: str | None = None) -> str:
    """Put the instance in maintenance; returns the reason Consul shows (the check's Notes)."""
    _require_local(client, instance_id)
    reason = reason or default_reason()
    client.agent.service.maintenance(instance_id, True, reason)
    return reason


def undrain(client: consul.Consul, instance_id: str) -> None:
    _require_local(client, instance_id)
    client.agent.service.maintenance(instance_id, False)
