"""The exceptions more than one module of servicekit raises or catches, in one place, so that a module
catching one never has to import the module that raises it."""

from __future__ import annotations

import enum

import consul
import requests

# What a call through py-consul raises when the agent cannot answer or refuses: its own errors (ACL
# denied, a 5xx) and the transport's (refused, reset, timed out).
CONSUL_ERRORS = (consul.ConsulException, requests.RequestException)


class DiscoveryError(RuntimeError):
    """Consul could not be asked."""


class HazelcastUnavailable(RuntimeError):
    """The worker is not connected to the Hazelcast cluster (yet, or any more). Answered as a 503."""


class StoreFailure(enum.Enum):
    """How a write through to the members' database failed (hazelcast-store/)."""

    REFUSED = "consulservices.store.StoreRefused"  # nothing was written: no connection, or PostgreSQL said no
    OUTCOME_UNKNOWN = "consulservices.store.StoreOutcomeUnknown"  # the connection broke mid-write


def store_failure(exc: BaseException) -> StoreFailure | None:
    """The store's failure behind a Hazelcast error, or None. The member names the store's exception class in
    the error the client receives: as the error itself for a map operation, inside a HazelcastException's
    message for a queue operation."""
    text = str(exc)
    for failure in StoreFailure:
        if f"{failure.value}:" in text:
            return failure
    return None
