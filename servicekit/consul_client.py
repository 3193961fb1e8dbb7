"""One way to build a Consul client, so every caller gets the address, token and timeout right."""

from __future__ import annotations

import consul

from .settings import ConsulSettings


def make_consul(settings: ConsulSettings) -> consul.Consul:
    # py-consul reads CONSUL_HTTP_ADDR only when host and port are None and lets CONSUL_HTTP_TOKEN
    # override an explicit token; passing all three from ConsulSettings keeps one source of truth.
    # connections_timeout bounds every call (the library default is 30 s).
    return consul.Consul(
        host=settings.address.host,
        port=settings.address.port,
        scheme=settings.address.scheme,
        token=settings.token,
        connections_timeout=settings.timeout,
    )
