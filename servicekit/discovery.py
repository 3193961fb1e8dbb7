"""The instances of a service in Consul, with the weight of the state each one is in: what a usable instance
is (passing or warning, never critical; `usable`), and `usable_instances`, which asks once. The facade's
watch that keeps the answer current is upstream.watch."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import consul

from .errors import CONSUL_ERRORS, DiscoveryError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Instance:
    id: str
    address: str
    port: int
    # The Consul service weight of the state the instance is in (Weights.Passing or Weights.Warning):
    # its share of the picks against the others (upstream.balancing).
    weight: int = 1

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


def _weight(entry: dict) -> int:
    """The Consul weight of the instance's state: Weights.Warning while any of its checks warns."""
    weights = entry["Service"].get("Weights") or {}
    warning = any(check["Status"] == "warning" for check in entry.get("Checks", ()))
    return int(weights.get("Warning" if warning else "Passing", 1))


def service_address(entry: dict) -> str:
    """The address of an instance in a health (or catalog) entry: an empty service address means "the
    node's address", as in Consul's own DNS answers."""
    return entry["Service"]["Address"] or entry["Node"]["Address"]


def usable(entry: dict) -> bool:
    """The one definition of a usable instance: passing, or warning (it still serves, with its smaller
    weight; Consul's DNS interface answers those too). Critical ones (maintenance mode included) are out."""
    return not any(check["Status"] == "critical" for check in entry.get("Checks", ()))


def instances_of(entries: list[dict]) -> tuple[Instance, ...]:
    return tuple(
        Instance(
            id=entry["Service"]["ID"],
            address=service_address(entry),
            port=entry["Service"]["Port"],
            weight=_weight(entry),
        )
        for entry in entries
        if usable(entry)
    )


def usable_instances(client: consul.Consul, service: str) -> list[Instance]:
    """The usable instances of a service, asked once (a watch keeps them current: upstream.watch)."""
    try:
        # Every instance, not Consul's passing filter (which drops warning ones too): `usable` decides.
        _, entries = client.health.service(service, passing=False)
    except CONSUL_ERRORS as exc:
        raise DiscoveryError(f"Consul is unreachable: {exc}") from exc
    return list(instances_of(entries))
