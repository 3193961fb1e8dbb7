"""Which registered addresses warn (servicekit.registration.loopback_warning); the real agents are in
tests/integration/test_loopback_warning.py."""

import pytest

from servicekit.registration import loopback_warning
from servicekit.settings import Settings


class Agent:
    def __init__(self, nodes: int, own_address: str = "10.0.0.7"):
        self.agent = self
        self.nodes = nodes
        self.own_address = own_address

    def members(self):
        return [{"Name": f"node{n}"} for n in range(self.nodes)]

    def self(self):
        return {"Member": {"Addr": self.own_address}}

    # What servicekit.registration calls: the agent's endpoints with the client's token.
    @property
    def http(self):
        return self

    def prepare_headers(self):
        return {}

    def get(self, callback, path, headers=None):
        return self.members() if path == "/v1/agent/members" else self.self()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.100.0.9", "::1", "localhost"])
def test_a_loopback_address_warns_only_with_other_nodes(host):
    settings = Settings.from_env("logging-service", 8081, env={"SERVICE_HOST": host})
    assert loopback_warning(settings, Agent(1)) is None
    assert loopback_warning(settings, Agent(3)) == (
        f"registered at {host} with an agent in a 3-node cluster: facades on other hosts call their own port"
    )


def test_a_routable_address_never_warns_and_asks_nothing():
    settings = Settings.from_env("logging-service", 8081, env={"SERVICE_HOST": "10.0.0.7"})
    assert loopback_warning(settings, None) is None  # type: ignore[arg-type]


def test_the_agents_own_loopback_address_does_not_warn():
    # A simulated host: its agent and its services on the host's 127.100.0.x address, which other hosts reach.
    settings = Settings.from_env("logging-service", 8081, env={"SERVICE_HOST": "127.100.0.11"})
    assert loopback_warning(settings, Agent(6, own_address="127.100.0.11")) is None
