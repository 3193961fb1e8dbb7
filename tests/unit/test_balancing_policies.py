"""The weighted random pick and the power of two choices (upstream.balancing), with seeded randomness."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from servicekit.discovery import Instance
from upstream import balancing
from upstream.balancing import PowerOfTwoPick, RandomPick

PICKS = 21_000


def instances(*weights: int) -> tuple[Instance, ...]:
    return tuple(Instance(f"logging-service-h-{8081 + n}", "127.0.0.1", 8081 + n, w) for n, w in enumerate(weights))


def shares(pick, pool, picks: int = PICKS, **kw) -> list[float]:
    counted = Counter(pick(pool, **kw).id for _ in range(picks))
    return [counted[i.id] / picks for i in pool]


@pytest.mark.parametrize("policy", [RandomPick, PowerOfTwoPick])
def test_an_instance_gets_its_weights_share_of_the_picks(policy):
    pool = instances(10, 10, 1)
    found = shares(policy(random.Random(7)), pool)
    assert found == pytest.approx([10 / 21, 10 / 21, 1 / 21], abs=0.01)


@pytest.mark.parametrize("policy", [RandomPick, PowerOfTwoPick])
def test_equal_weights_share_the_picks_evenly(policy):
    assert shares(policy(random.Random(3)), instances(1, 1, 1)) == pytest.approx([1 / 3] * 3, abs=0.015)


@pytest.mark.parametrize("policy", [RandomPick, PowerOfTwoPick])
def test_an_untried_instance_comes_before_one_that_failed(policy):
    pool = instances(1, 1, 1)
    pick = policy(random.Random(0))
    assert {pick(pool, {pool[0].id, pool[2].id}) for _ in range(50)} == {pool[1]}
    assert {pick(pool, {i.id for i in pool}) for _ in range(200)} == set(pool), "all failed: any of them"


def test_two_choices_never_pick_the_busiest_of_three():
    pool = instances(1, 1, 1)
    busy = {pool[0].id: 5, pool[1].id: 1}
    found = shares(PowerOfTwoPick(random.Random(1)), pool, picks=3000, outstanding=busy)
    assert found[0] == 0, "the busiest loses every pair it is drawn in"
    # pool[2] (idle) wins every pair it is in (2 of 3 pairs); pool[1] wins only the pair with pool[0].
    assert found[1:] == pytest.approx([1 / 3, 2 / 3], abs=0.03)


def test_two_choices_weigh_the_outstanding_calls():
    heavy, light = instances(10, 1)
    # 5 calls on a weight of 10 is less loaded than 1 call on a weight of 1.
    pick = PowerOfTwoPick(random.Random(2))
    assert {pick((heavy, light), outstanding={heavy.id: 5, light.id: 1}) for _ in range(100)} == {heavy}
    assert {pick((heavy, light), outstanding={heavy.id: 20, light.id: 1}) for _ in range(100)} == {light}


def test_the_random_pick_ignores_outstanding_calls():
    pool = instances(1, 1)
    found = shares(RandomPick(random.Random(4)), pool, picks=4000, outstanding={pool[0].id: 50})
    assert found == pytest.approx([0.5, 0.5], abs=0.03)


def test_a_lone_instance_is_picked_by_both_policies():
    pool = instances(3)
    assert PowerOfTwoPick()(pool, outstanding={pool[0].id: 9}) == pool[0]
    assert RandomPick()(pool) == pool[0]


def test_zero_weights_everywhere_still_pick_one():
    pool = instances(0, 0)
    assert RandomPick(random.Random(5))(pool) in pool


def test_the_policies_are_known_by_name_and_random_is_the_default():
    assert balancing.DEFAULT_POLICY == "random"
    assert isinstance(balancing.make("p2c"), PowerOfTwoPick)
    with pytest.raises(ValueError, match="p2c, random"):
        balancing.make("round-robin")


def test_two_choices_prefer_a_heavy_instance_with_one_call_to_an_idle_light_one():
    heavy, light = instances(10, 1)
    # Weighted least request ((outstanding + 1) / weight): one call on a weight of 10 (0.2) is less
    # loaded than the next call on a weight of 1 (1.0). By outstanding / weight the idle one (0) would win.
    pick = PowerOfTwoPick(random.Random(6))
    assert {pick((heavy, light), outstanding={heavy.id: 1}) for _ in range(100)} == {heavy}
