"""Every exception of servicekit that another module raises or catches, in one place, so that a module
catching one never has to import the module that raises it: the four the HTTP boundary answers
(servicekit.web's handlers), a refused live setting, a bad setting, a missing KV key, an unsafe private path,
the Consul and Hazelcast errors, the store's failures."""

from __future__ import annotations

import enum
from typing import Any

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


# Retry-After (seconds) of every 503 that does not know better: what failed (an instance, a member) is
# failed over within seconds (a silent member is dropped in 10 s), and a retry may reach another instance.
RETRY_AFTER = 1


class BadInput(ValueError):
    """The request body is not what the endpoint takes; the message is safe to show the client."""


class Unavailable(RuntimeError):
    """A dependency is down. `public` goes to the client ("every logging-service instance failed");
    `detail` (instance ids, addresses, library errors) goes to the log only. `retry_after` (seconds) becomes
    the Retry-After header; `fields` go into the body beside the error."""

    def __init__(self, public: str, detail: str = "", retry_after: int = RETRY_AFTER, **fields: Any):
        super().__init__(f"{public}: {detail}" if detail else public)
        self.public = public
        self.retry_after = retry_after
        self.fields = fields


class InsufficientStorage(RuntimeError):
    """507: the service cannot store what it was sent, and will not on its own (the log never shrinks), so
    no Retry-After. `public` goes to the client, `detail` to the log only."""

    def __init__(self, public: str, detail: str = ""):
        super().__init__(f"{public}: {detail}" if detail else public)
        self.public = public


class BadGateway(RuntimeError):
    """Another service answered, but not as agreed; the message is safe to show the client."""


class Refused(ValueError):
    """A value the service will not apply; the message says why, for the log and /health."""


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


class ConfigError(RuntimeError):
    """A required key is missing from Consul KV."""


class UnsafePath(RuntimeError):
    """A path to be kept private is not: another user's, a symlink, or open to others. A RuntimeError, so
    gunicorn, when a start hook raises it, prints its message and exits 1."""
