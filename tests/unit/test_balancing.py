"""The facade's instance pick (upstream.balancing), on its own."""

import random

import pytest

from servicekit.discovery import Instance
from upstream.balancing import RandomPick

INSTANCES = tuple(Instance(f"logging-service-h-{port}", "127.0.0.1", port) for port in (8081, 8082, 8083))


def test_an_untried_instance_comes_before_one_that_failed():
    pick = RandomPick(random.Random(0))
    failed = {INSTANCES[0].id, INSTANCES[2].id}
    assert {pick(INSTANCES, failed) for _ in range(50)} == {INSTANCES[1]}


def test_every_passing_instance_gets_picked():
    pick = RandomPick(random.Random(1))
    assert {pick(INSTANCES) for _ in range(200)} == set(INSTANCES)


def test_once_every_instance_failed_any_of_them_is_tried_again():
    pick = RandomPick(random.Random(2))
    failed = {i.id for i in INSTANCES}
    assert {pick(INSTANCES, failed) for _ in range(200)} == set(INSTANCES)


def test_there_is_no_pick_without_an_instance():
    with pytest.raises(ValueError):
        RandomPick()((), set())
