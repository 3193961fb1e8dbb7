"""Which network namespaces belong to a simulation (devstack.hosts): `./scripts/hosts down` must not touch
another simulation's, whatever their prefixes."""

from __future__ import annotations

import pytest

from devstack.hosts import Hosts, owned

NAMES = ["hosts-net", "hosts-app1", "hosts-consul1", "hostsb-app1", "hosts-b-app1", "hosts", "other-app1"]


def test_a_prefix_owns_exactly_its_own_namespaces_not_those_of_a_longer_prefix():
    assert owned("hosts", NAMES) == ["hosts-net", "hosts-app1", "hosts-consul1"]
    assert owned("hostsb", NAMES) == ["hostsb-app1"]


@pytest.mark.parametrize("prefix", ["hosts-b", "", "a b", "hôtes", "x" * 21])
def test_a_prefix_with_a_dash_or_other_signs_is_refused(prefix):
    with pytest.raises(ValueError):
        Hosts(prefix)
    with pytest.raises(ValueError):
        owned(prefix, NAMES)


def test_a_host_name_with_a_dash_is_refused():
    with pytest.raises(ValueError):
        Hosts("hosts").namespace("app-1")
