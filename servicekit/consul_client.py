"""One way to build a Consul client, so every caller gets the address, token and timeout right."""

from __future__ import annotations

import consul

from .settings import ConsulSettings


def make_consul(settings: ConsulSettings) -> consul.Consul:
    # py-consul reads CONSUL_HTTP_ADDR only when host and port are None, so all three are passed. It also
    # lets CONSUL_HTTP_TOKEN win over an explicit token (py-consul 1.8.0, `os.getenv("CONSUL_HTTP_TOKEN",
    # token)`): a tool run under `sudo -E` would send the caller's token instead of the one it was given.
    # So the token is set after the client is made; ConsulSettings read the environment already, and
    # is the one source of truth. connections_timeout bounds every call (the library default is 30 s).
    client = consul.Consul(
        host=settings.address.host,
        port=settings.address.port,
        scheme=settings.address.scheme,
        token=settings.token,
        connections_timeout=settings.timeout,
        # Given, so that CONSUL_HTTP_SSL_VERIFY, which py-consul reads when it is None, cannot turn checks off.
        verify=settings.ca_file or True,
    )
    client.token = settings.token
    return client
