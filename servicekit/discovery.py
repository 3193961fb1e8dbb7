"""Finding passing instances of a service through Consul."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import consul

from .registry import CONSUL_ERRORS

log = logging.getLogger(__name__)


class DiscoveryError(RuntimeError):
    """Consul could not be asked, or no instance of a service passes its checks."""


@dataclass(frozen=True)
class Instance:
    id: str
    address: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


def passing_instances(client: consul.Consul, service: str) -> list[Instance]:
    try:
        _, entries = client.health.service(service, passing=True)
    except CONSUL_ERRORS as exc:
        raise DiscoveryError(f"Consul is unreachable: {exc}") from exc
    return [
        Instance(
            id=entry["Service"]["ID"],
            # An empty service address means "the node's address", as in Consul's own DNS answers.
            address=entry["Service"]["Address"] or entry["Node"]["Address"],
            port=entry["Service"]["Port"],
        )
        for entry in entries
    ]


def shuffled(instances: list[Instance]) -> list[Instance]:
    """A random order: the first is the random pick, the rest are the fallbacks."""
    return random.sample(instances, len(instances))
