"""The exceptions more than one module of servicekit raises or catches, in one place, so that a module
catching one never has to import the module that raises it."""

from __future__ import annotations

import consul
import requests

# What a call through py-consul raises when the agent cannot answer or refuses: its own errors (ACL
# denied, a 5xx) and the transport's (refused, reset, timed out).
CONSUL_ERRORS = (consul.ConsulException, requests.RequestException)


class DiscoveryError(RuntimeError):
    """Consul could not be asked."""


class HazelcastUnavailable(RuntimeError):
    """The worker is not connected to the Hazelcast cluster (yet, or any more). Answered as a 503."""
