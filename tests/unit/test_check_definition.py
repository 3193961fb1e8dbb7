"""The HTTP check every instance registers: Consul's thresholds ride along, since py-consul's Check.http has
no parameters for them."""

from __future__ import annotations

from servicekit.registration import service_definition
from servicekit.settings import Settings


def test_the_check_carries_the_thresholds_from_the_settings():
    check = service_definition(Settings.from_env("logging-service", 8081, env={}))["check"]
    assert check["SuccessBeforePassing"] == 2
    assert check["FailuresBeforeCritical"] == 2
    assert check["http"].endswith("/health") and check["interval"] == "1s"


def test_the_thresholds_come_from_the_environment():
    env = {"CHECK_FAILURES_BEFORE_CRITICAL": "3", "CHECK_SUCCESS_BEFORE_PASSING": "1"}
    check = service_definition(Settings.from_env("logging-service", 8081, env=env))["check"]
    assert (check["FailuresBeforeCritical"], check["SuccessBeforePassing"]) == (3, 1)
