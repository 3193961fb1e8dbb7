"""One definition of a usable instance (servicekit.discovery): passing, or warning with its warning weight;
never critical. The one-off lookup (Hazelcast's join list, the shared config) and the watch agree."""

from __future__ import annotations

from servicekit import discovery
from stackctl import stack_status
from upstream.watch import ServiceWatch

SERVICE = "hazelcast"


def entry(port: int, status: str, address: str = "127.0.0.1") -> dict:
    return {
        "Service": {"ID": f"{SERVICE}-{port}", "Address": address, "Port": port,
                    "Weights": {"Passing": 10, "Warning": 1}},
        "Node": {"Address": "10.0.0.1"},
        "Checks": [{"CheckID": "serfHealth", "Status": "passing"}, {"Status": status}],
    }  # fmt: skip


ENTRIES = [entry(5701, "passing"), entry(5702, "warning"), entry(5703, "critical")]


class OneAnswer:
    """Consul's health endpoint: `passing` filters to instances whose every check passes, as Consul does."""

    def __init__(self):
        self.health = self

    def service(self, service: str, passing: bool = False, index=None, wait=None):
        found = [e for e in ENTRIES if not passing or all(c["Status"] == "passing" for c in e["Checks"])]
        return "7", found


def test_the_one_off_lookup_and_the_watch_agree_on_the_usable_instances():
    usable = [(i.port, i.weight) for i in discovery.usable_instances(OneAnswer(), SERVICE)]  # type: ignore[arg-type]
    assert usable == [(5701, 10), (5702, 1)]
    watch = ServiceWatch(OneAnswer(), SERVICE)  # type: ignore[arg-type]
    watch._watch.once()
    assert [(i.port, i.weight) for i in watch.instances()] == usable


def test_an_empty_service_address_means_the_node_address_everywhere():
    assert discovery.service_address(entry(5701, "passing", address="")) == "10.0.0.1"
    assert discovery.service_address(entry(5701, "passing", address="127.100.0.5")) == "127.100.0.5"

    class Catalog:
        def __init__(self):
            self.catalog = self.health = self

        def services(self):
            return "1", {SERVICE: [], "consul": []}

        def service(self, service: str):
            return "1", [entry(5701, "passing", address="")]

    assert stack_status.service_health(Catalog())[SERVICE][0][1] == "10.0.0.1:5701"  # type: ignore[arg-type]
