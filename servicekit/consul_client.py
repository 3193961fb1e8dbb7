"""One way to build a Consul client, so every caller gets the address, token and timeout right."""

from __future__ import annotations

import consul

from .settings import Settings


def make_consul(settings: Settings) -> consul.Consul:
    # py-consul reads CONSUL_HTTP_ADDR only when host and port are None and lets CONSUL_HTTP_TOKEN
    # override an explicit token; passing all three from Settings keeps one source of truth.
    # connections_timeout bounds every call (the library default is 30 s).
    return consul.Consul(
        host=settings.consul.host,
        port=settings.consul.port,
        scheme=settings.consul.scheme,
        token=settings.consul_token,
        connections_timeout=settings.consul_timeout,
    )
