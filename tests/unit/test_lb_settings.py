"""LB_POLICY and the Consul weights an instance registers with (servicekit.settings, registration)."""

from __future__ import annotations

import pytest

from facade.backends import Backends
from facade.settings import FacadeSettings
from servicekit.registration import service_definition
from servicekit.settings import Settings, SettingsError
from upstream.balancing import PowerOfTwoPick, RandomPick


class NoDiscovery:
    def close(self) -> None:
        pass


def test_random_stays_the_default_policy():
    settings = FacadeSettings.from_env("facade-service", 8080, env={})
    assert settings.lb_policy == "random"
    assert isinstance(Backends(settings, NoDiscovery()).caller.picker, RandomPick)  # type: ignore[arg-type]


def test_lb_policy_p2c_is_applied_at_start():
    settings = FacadeSettings.from_env("facade-service", 8080, env={"LB_POLICY": "p2c"})
    assert isinstance(Backends(settings, NoDiscovery()).caller.picker, PowerOfTwoPick)  # type: ignore[arg-type]


def test_an_unknown_lb_policy_is_refused_naming_the_variable_and_the_choices():
    with pytest.raises(SettingsError, match=r"LB_POLICY must be one of p2c, random, got 'least-conn'"):
        FacadeSettings.from_env("facade-service", 8080, env={"LB_POLICY": "least-conn"})


def test_an_instance_registers_with_a_weight_for_passing_and_one_for_warning():
    assert service_definition(Settings.from_env("logging-service", 8081, env={}))["weights"] == {
        "Passing": 10,
        "Warning": 1,
    }
    custom = Settings.from_env("logging-service", 8081, env={"WEIGHT_PASSING": "3", "WEIGHT_WARNING": "0"})
    assert service_definition(custom)["weights"] == {"Passing": 3, "Warning": 0}


def test_a_passing_weight_of_zero_is_refused():
    with pytest.raises(SettingsError, match="WEIGHT_PASSING"):
        Settings.from_env("logging-service", 8081, env={"WEIGHT_PASSING": "0"})
