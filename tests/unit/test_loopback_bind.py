"""An instance bound to its host's address also answers on 127.0.0.1 of that host, on the same port
(servicekit.gunicorn_config.binds); what it registers stays the host's address."""

from __future__ import annotations

import pytest

from facade.settings import FacadeSettings
from servicekit import gunicorn_config
from servicekit.registration import service_definition
from servicekit.settings import Settings


def settings(host: str) -> Settings:
    return FacadeSettings.from_env("facade-service", 8080, env={"SERVICE_HOST": host})


@pytest.mark.parametrize("host", ["127.100.0.21", "10.0.0.7"])
def test_an_instance_on_a_host_address_binds_loopback_too_and_registers_the_host_address(host):
    assert gunicorn_config.binds(settings(host)) == [f"{host}:8080", "127.0.0.1:8080"]
    assert service_definition(settings(host))["address"] == host


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "localhost", "::1"])
def test_an_instance_on_loopback_a_wildcard_or_a_name_binds_only_that(host):
    assert gunicorn_config.binds(settings(host)) == [settings(host).bind]
