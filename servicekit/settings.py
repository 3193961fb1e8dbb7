"""Typed settings, read from the environment once at startup: the fields every service has. Each service's
settings module adds its own (facade.settings, logging_svc.settings, messages_svc.settings)."""

from __future__ import annotations

import functools
import importlib.metadata
import ipaddress
import os
import re
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from . import stack
from .errors import SettingsError
from .logs import LOG_FORMATS

# The project as pyproject.toml names it: its installed metadata carries the version (./scripts/install
# installs it), which each instance registers as its Consul tag and meta.
DISTRIBUTION = "consul-services"


@functools.cache
def project_version() -> str:
    """The version in pyproject.toml, as the installed project's metadata has it."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise SettingsError(f"the project {DISTRIBUTION} is not installed (./scripts/install installs it)") from None


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, allow_zero: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise SettingsError(f"{name} must be {'at least 0' if allow_zero else 'positive'}, got {value}")
    return value


def max_body_bytes_from_env(env: Mapping[str, str] | None = None) -> int:
    """MAX_BODY_BYTES on its own: the gunicorn worker enforces it too, and has no Settings of its own."""
    return env_int(os.environ if env is None else env, "MAX_BODY_BYTES", 64 * 1024, minimum=1)


# The names a browser on this machine uses for it. DNS rebinding works through a name the attacker owns,
# so a request is served only under a name listed here (ALLOWED_HOSTS) or the bind address.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_DNS_NAME = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*", re.ASCII)


def host_name(raw: str) -> str:
    """A host name or address as the Host check compares it: lower case, one trailing dot dropped, IPv6
    without brackets and in its short form. ValueError when it is neither a name nor an address."""
    name = raw.strip().lower()
    name = name[:-1] if name.endswith(".") else name
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if ":" in name:
        return str(ipaddress.IPv6Address(name))
    if not _DNS_NAME.fullmatch(name):
        raise ValueError(f"{raw!r} is not a host name or address")
    return name


# A Host header: a name, an IPv4 address or a bracketed IPv6 address, and an optional port.
_HOST_HEADER = re.compile(r"(?P<name>[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?", re.ASCII | re.IGNORECASE)


def host_is_accepted(host: str, accepted: frozenset[str]) -> bool:
    """Whether a Host header ("name", "name:port", "[v6]:port") names one of the accepted hosts, on any port
    (the public port's check in servicekit.web, and the metrics port's in servicekit.metrics)."""
    match = _HOST_HEADER.fullmatch(host)
    if match is None:
        return False
    try:
        return host_name(match["name"]) in accepted
    except ValueError:
        return False


def _host_names(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not names:
        raise SettingsError(f"{name} must list at least one host name, got {raw!r}")
    for part in names:
        try:
            host_name(part)
        except ValueError:
            raise SettingsError(
                f"{name} takes host names or addresses separated by commas, without scheme or port; got {part!r}"
            ) from None
    return names


def _service_host(env: Mapping[str, str]) -> str:
    raw = env.get("SERVICE_HOST") or "127.0.0.1"
    try:
        host_name(raw)
    except ValueError:
        raise SettingsError(f"SERVICE_HOST must be a host name or IP address, got {raw!r}") from None
    return raw


def service_host(env: Mapping[str, str] | None = None) -> str:
    """SERVICE_HOST: the address an instance or member binds and registers (127.0.0.1 by default)."""
    return _service_host(os.environ if env is None else env)


LOCALHOST = ipaddress.IPv4Address("127.0.0.1")


def listen_addresses(host: str, port: int) -> list[str]:
    """The address an instance registers, and 127.0.0.1 on the same port when that is another address: a
    tool on the host (`curl http://127.0.0.1:8080/facade`) reaches it as on a single-host stack. Consul and
    the other hosts still use the registered address only. Where gunicorn binds, or the facade's nginx."""
    bind = f"{host}:{port}"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return [bind]  # a name: it may well resolve to 127.0.0.1, which cannot be bound twice
    if address.version != 4 or address.is_unspecified or address == LOCALHOST:
        return [bind]
    return [bind, f"{LOCALHOST}:{port}"]


# The JSON the facade sends to logging_svc around a message: {"id": "<uuid>", "msg": "..."}.
_ENVELOPE_BYTES = 256


def forwarded_body_bytes(max_message_chars: int) -> int:
    """The largest body a message of `max_message_chars` code points can make, JSON-escaped (12 bytes each)."""
    return 12 * max_message_chars + _ENVELOPE_BYTES


def default_metrics_port(port: int) -> int:
    """Where an instance on `port` serves its metrics unless METRICS_PORT says: a fixed distance above it
    (conf/stack.env), so the metrics ports move with the instances' (and with STACK_PORT_OFFSET)."""
    return port + int(stack.values()["METRICS_PORT_OFFSET"])


def app_port(port: int, env: Mapping[str, str] | None = None) -> int:
    """Where the gunicorn of the facade whose public port (nginx's) is `port` listens, on 127.0.0.1: APP_PORT,
    else a fixed distance above `port` (APP_PORT_OFFSET, conf/stack.env), as the metrics port."""
    env = os.environ if env is None else env
    return env_int(env, "APP_PORT", port + int(stack.values()["APP_PORT_OFFSET"]), minimum=1)


def _log_format(env: Mapping[str, str]) -> str:
    raw = (env.get("LOG_FORMAT") or LOG_FORMATS[0]).strip().lower()
    if raw not in LOG_FORMATS:
        raise SettingsError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {raw!r}")
    return raw


_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.ASCII | re.IGNORECASE)


def instance_host(env: Mapping[str, str] | None = None) -> str:
    """The host part of instance ids: INSTANCE_HOST when set, else the machine's hostname. The simulated
    hosts of ./scripts/hosts are network namespaces of one machine, which all share its hostname."""
    raw = (os.environ if env is None else env).get("INSTANCE_HOST")
    if not raw:
        return socket.gethostname()
    if not _DNS_LABEL.fullmatch(raw):
        raise SettingsError(
            f"INSTANCE_HOST must be one DNS label (letters, digits and inner hyphens, at most 63), got {raw!r}"
        )
    return raw


def instance_id(service_name: str, port: int, host: str | None = None) -> str:
    """The Consul id of one instance, a service's or a Hazelcast member's: `<service>-<host>-<port>`, the
    host from instance_host() unless given. Deterministic, so a restarted instance replaces its old Consul
    entry instead of leaving a zombie; unique across hosts, so instances on two hosts never replace each other."""
    return f"{service_name}-{host or instance_host()}-{port}"


@dataclass(frozen=True)
class ConsulAddress:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, raw: str) -> ConsulAddress:
        """Parse CONSUL_HTTP_ADDR the way the consul CLI does: host:port or scheme://host:port."""
        parsed = urllib.parse.urlsplit(raw if "//" in raw else f"//{raw}")
        try:
            port = parsed.port or 8500
        except ValueError:
            port = None
        if not parsed.hostname or port is None or parsed.scheme not in ("", "http", "https"):
            raise SettingsError(f"CONSUL_HTTP_ADDR must look like host:port or http://host:port, got {raw!r}")
        return cls(parsed.scheme or "http", parsed.hostname, port)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def _token(env: Mapping[str, str]) -> str | None:
    """CONSUL_HTTP_TOKEN_FILE's content when it is set, as Consul's own API client reads it (the file wins
    over CONSUL_HTTP_TOKEN): a token in a file of mode 0600 is out of every configuration file and of the
    process's environment. Else CONSUL_HTTP_TOKEN."""
    path = env.get("CONSUL_HTTP_TOKEN_FILE")
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"CONSUL_HTTP_TOKEN_FILE names {path}, which cannot be read: {exc.strerror}") from None
        if not token:
            raise SettingsError(f"CONSUL_HTTP_TOKEN_FILE names {path}, which is empty")
        return token
    return env.get("CONSUL_HTTP_TOKEN") or None


@dataclass(frozen=True)
class ConsulSettings:
    """How to reach the local Consul agent: all a tool needs, without a service name or port of its own."""

    address: ConsulAddress = ConsulAddress("http", "127.0.0.1", 8500)
    token: str | None = field(default=None, repr=False)
    # Every Consul call is bounded: an agent that stops answering must not hang a request or a boot.
    timeout: float = 2.0
    # The CA that signed the agent's HTTPS certificate (an https CONSUL_HTTP_ADDR); None: the system's.
    ca_file: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConsulSettings:
        """Consul's own variable names (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE,
        CONSUL_CACERT), plus CONSUL_TIMEOUT."""
        env = os.environ if env is None else env
        return cls(
            address=ConsulAddress.parse(env.get("CONSUL_HTTP_ADDR") or "127.0.0.1:8500"),
            token=_token(env),
            timeout=env_float(env, "CONSUL_TIMEOUT", 2.0),
            ca_file=env.get("CONSUL_CACERT") or None,
        )

    @property
    def url(self) -> str:
        return self.address.url


@dataclass(frozen=True)
class Settings:
    service_name: str
    port: int
    host: str = "127.0.0.1"
    # The host part of the instance id: instance_host(), INSTANCE_HOST included, as instance_id() reads it.
    instance_host: str = field(default_factory=lambda: instance_host())
    consul: ConsulSettings = field(default_factory=ConsulSettings)
    # Connect and read timeouts for calls between services (a Hazelcast call's wait too: servicekit.hz).
    connect_timeout: float = 0.5
    read_timeout: float = 3.0
    # On SIGTERM, how long an instance keeps serving after leaving Consul, so callers drop it first.
    drain_seconds: float = 1.0
    max_body_bytes: int = 64 * 1024
    # Longest message (in code points) the facade accepts. The facade forwards it to logging_svc as
    # JSON, where a code point can take 12 bytes (an escaped surrogate pair), so every accepted
    # message must still fit that service's MAX_BODY_BYTES: __post_init__ checks it.
    max_message_chars: int = 4096
    # How often Consul runs the /health check, and when it forgets an instance that died silently.
    check_interval: str = "1s"
    check_timeout: str = "1s"
    deregister_after: str = "1m"
    # Consecutive check results before Consul changes the status (Consul >= 1.7): one slow or failed
    # /health does not take an instance out of every rotation, nor one good answer put a failing one back.
    # The cost: a dead instance turns critical one interval later (callers retry a refused connection on
    # another instance at once), a new one passes one interval later.
    check_failures_before_critical: int = 2
    check_success_before_passing: int = 2
    # Host names a request may be addressed to (any port); the bind address is always accepted too.
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    # The Consul service weights this instance registers with: its share of the picks while its check
    # passes, and while it is in warning (HTTP 429 from /health).
    weight_passing: int = 10
    weight_warning: int = 1
    # LOG_FORMAT: "text" (one line a record, for people) or "json" (one object a line, for log shippers).
    log_format: str = "text"
    # GET /metrics is served here, on the instance's address, not on its public port: the metrics name
    # instances and hosts. 0: the port plus METRICS_PORT_OFFSET (conf/stack.env).
    metrics_port: int = 0
    # The project's version (project_version): the instance's Consul tag and meta.
    version: str = field(default_factory=lambda: project_version())

    def __post_init__(self) -> None:
        if not self.metrics_port:
            object.__setattr__(self, "metrics_port", default_metrics_port(self.port))
        if self.metrics_port == self.port:
            raise SettingsError(f"METRICS_PORT must differ from PORT ({self.port}): /metrics stays off the public port")
        needed = forwarded_body_bytes(self.max_message_chars)
        if needed > self.max_body_bytes:
            raise SettingsError(
                f"MAX_MESSAGE_CHARS={self.max_message_chars} needs MAX_BODY_BYTES of at least {needed} "
                f"(got {self.max_body_bytes}): a message that long may not fit the body sent to logging_svc"
            )

    @classmethod
    def from_env(cls, service_name: str, default_port: int, env: Mapping[str, str] | None = None) -> Self:
        """The fields every service has, then those its own settings class adds (own_from_env)."""
        env = os.environ if env is None else env
        return cls(
            service_name=service_name,
            port=env_int(env, "PORT", default_port, minimum=1),
            host=_service_host(env),
            instance_host=instance_host(env),
            consul=ConsulSettings.from_env(env),
            connect_timeout=env_float(env, "HTTP_CONNECT_TIMEOUT", 0.5),
            read_timeout=env_float(env, "HTTP_READ_TIMEOUT", 3.0),
            drain_seconds=env_float(env, "DRAIN_SECONDS", 1.0, allow_zero=True),
            max_body_bytes=max_body_bytes_from_env(env),
            max_message_chars=env_int(env, "MAX_MESSAGE_CHARS", 4096, minimum=1),
            allowed_hosts=_host_names(env, "ALLOWED_HOSTS", LOOPBACK_NAMES),
            weight_passing=env_int(env, "WEIGHT_PASSING", 10, minimum=1),
            weight_warning=env_int(env, "WEIGHT_WARNING", 1),
            log_format=_log_format(env),
            metrics_port=env_int(env, "METRICS_PORT", 0, minimum=1),
            check_failures_before_critical=env_int(env, "CHECK_FAILURES_BEFORE_CRITICAL", 2, minimum=1),
            check_success_before_passing=env_int(env, "CHECK_SUCCESS_BEFORE_PASSING", 2, minimum=1),
            **cls.own_from_env(env),
        )

    @classmethod
    def own_from_env(cls, env: Mapping[str, str]) -> dict[str, Any]:
        """The fields a service's settings class adds to these, read from `env` (facade.settings,
        logging_svc.settings, messages_svc.settings): none here."""
        return {}

    @property
    def accepted_host_names(self) -> frozenset[str]:
        """ALLOWED_HOSTS plus the bind address: Consul's HTTP check and the facade's calls use the address
        the instance registered, which is SERVICE_HOST."""
        return frozenset(map(host_name, (*self.allowed_hosts, self.host)))

    @property
    def bind(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def instance_id(self) -> str:
        return instance_id(self.service_name, self.port, self.instance_host)
