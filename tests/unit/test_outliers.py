"""Outlier ejection (upstream.outliers) on its own, with a clock the test moves."""

from __future__ import annotations

import logging

from servicekit.discovery import Instance
from upstream.outliers import OutlierDetector

INSTANCES = tuple(Instance(f"logging-service-h-{port}", "127.0.0.1", port) for port in (8081, 8082, 8083, 8084))
A, B, C, D = (i.id for i in INSTANCES)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def detector(clock: Clock, **kw) -> OutlierDetector:
    return OutlierDetector("logging-service", consecutive_failures=3, base_ejection=2.0, max_ejection=10.0,
                           clock=clock, **kw)  # fmt: skip


def ids(instances) -> set[str]:
    return {i.id for i in instances}


def fail(outliers: OutlierDetector, instance_id: str, times: int = 1) -> None:
    for _ in range(times):
        outliers.failed(instance_id, "HTTP 500")


def test_three_failures_in_a_row_eject_an_instance_and_two_do_not():
    outliers = detector(Clock())
    fail(outliers, A, 2)
    assert ids(outliers.usable(INSTANCES)) == {A, B, C, D}
    assert outliers.failed(A, "HTTP 500") is True, "the third failure ejects"
    assert ids(outliers.usable(INSTANCES)) == {B, C, D}
    assert outliers.failed(A, "HTTP 500") is False, "already out"


def test_a_success_between_failures_starts_the_count_again():
    outliers = detector(Clock())
    fail(outliers, A, 2)
    outliers.succeeded(A)
    fail(outliers, A, 2)
    assert outliers.ejected() == []


def test_an_ejected_instance_comes_back_on_its_own_when_its_time_is_up(caplog):
    clock = Clock()
    outliers = detector(clock)
    with caplog.at_level(logging.INFO, logger="upstream.outliers"):
        fail(outliers, A, 3)
        clock.now += 1.9
        assert A not in ids(outliers.usable(INSTANCES))
        clock.now += 0.2
        assert A in ids(outliers.usable(INSTANCES))
    ejected, back = caplog.messages
    assert A in ejected and "2.0 s" in ejected and "HTTP 500" in ejected
    assert A in back and "back" in back


def test_a_failure_right_after_coming_back_ejects_again_for_twice_as_long_up_to_the_cap():
    clock = Clock()
    outliers = detector(clock)
    fail(outliers, A, 3)
    for seconds in (2.0, 4.0, 8.0, 10.0, 10.0):
        clock.now += seconds - 0.01
        assert outliers.ejected() == [A], f"out for {seconds} s"
        clock.now += 0.01
        assert outliers.ejected() == []
        fail(outliers, A)


def test_an_instance_that_served_well_for_a_long_ejection_starts_short_again():
    clock = Clock()
    outliers = detector(clock)
    fail(outliers, A, 3)
    clock.now += 2.0
    fail(outliers, A)  # out for 4 s
    clock.now += 4.0
    outliers.succeeded(A)
    clock.now += 10.0
    outliers.succeeded(A)
    fail(outliers, A, 3)
    clock.now += 2.0
    assert outliers.ejected() == []


def test_a_success_of_another_instance_does_not_clear_the_failures():
    outliers = detector(Clock())
    fail(outliers, A, 2)
    outliers.succeeded(B)
    fail(outliers, A)
    assert outliers.ejected() == [A]


def test_at_most_half_the_instances_stay_out_the_first_ejected_first():
    clock = Clock()
    outliers = detector(clock)
    for instance_id in (C, A, B):
        fail(outliers, instance_id, 3)
        clock.now += 0.1
    assert outliers.ejected() == [A, B, C]
    assert ids(outliers.usable(INSTANCES)) == {B, D}, "two of four out: C and A, ejected first"


def test_when_every_instance_is_ejected_all_of_them_are_used():
    outliers = detector(Clock())
    pair = INSTANCES[:2]
    fail(outliers, A, 3)
    fail(outliers, B, 3)
    assert ids(outliers.usable(pair)) == {B}, "one of two may be out, the other stays"
    assert ids(outliers.usable(INSTANCES[:1])) == {A}, "a lone instance is never ejected from its own list"


def test_an_instance_that_left_consul_is_forgotten_and_starts_afresh_when_it_returns():
    clock = Clock()
    outliers = detector(clock)
    fail(outliers, A, 3)
    clock.now += 2.0
    fail(outliers, A)  # let back in, failed at once: ejected again, for twice as long
    fail(outliers, B)
    assert outliers.ejected() == [A]
    outliers.forget_all_but({B, C, D})
    assert outliers.ejected() == []
    fail(outliers, A, 2)
    assert outliers.ejected() == [], "its failures before it left are forgotten"
    fail(outliers, A)
    clock.now += 2.0
    assert outliers.ejected() == [], "ejected for the first time again, not the third"
    fail(outliers, B, 2)
    assert outliers.ejected() == [B], "what the others owe is kept"


def test_the_records_of_instances_that_came_and_went_do_not_pile_up():
    outliers = detector(Clock())
    for n in range(10_000):
        outliers.failed(f"logging-service-gone-{n}", "HTTP 500")
    fail(outliers, A)
    outliers.forget_all_but({A})
    assert set(outliers._records) == {A}


def test_the_facade_forgets_the_ejections_of_instances_that_left_consul():
    from facade.backends import LOGGING_SERVICE, MESSAGES_SERVICE, Backends
    from facade.settings import FacadeSettings

    class Watched:
        def status(self) -> dict:
            return {LOGGING_SERVICE: {}, MESSAGES_SERVICE: {}}

    backends = Backends(FacadeSettings.from_env("facade-service", 8080, env={}), Watched())  # type: ignore[arg-type]
    for service in (LOGGING_SERVICE, MESSAGES_SERVICE):
        fail(backends.caller.outliers[service], A, 3)
    backends.caller.forget_gone(LOGGING_SERVICE, frozenset({B}))
    assert backends.status()[LOGGING_SERVICE]["ejected"] == []
    assert backends.status()[MESSAGES_SERVICE]["ejected"] == [A], "only the service Consul answered for"
