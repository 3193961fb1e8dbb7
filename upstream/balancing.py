"""Which instance of a service a caller tries next.

Both policies honour the instances' Consul weights (servicekit.discovery: the weight of the state each
instance is in, passing or warning), and both prefer instances that have not failed this call yet; once
every instance failed (a rolling restart the cache has not seen yet), any of them again.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol

from servicekit.discovery import Instance
from servicekit.errors import Refused
from servicekit.live_config import LiveSetting


class Picker(Protocol):
    def __call__(
        self,
        instances: Sequence[Instance],
        failed_ids: Collection[str] = (),
        outstanding: Mapping[str, int] | None = None,
    ) -> Instance: ...


def _candidates(instances: Sequence[Instance], failed_ids: Collection[str]) -> Sequence[Instance]:
    if not instances:
        raise ValueError("no instance to pick from")
    return [i for i in instances if i.id not in failed_ids] or instances


def _weighted(rng: random.Random, pool: Sequence[Instance]) -> Instance:
    weights = [i.weight for i in pool]
    if not any(weights):
        # Every one in a zero-weight state: Consul still lists them, so they are all there is.
        return rng.choice(pool)
    return rng.choices(pool, weights=weights)[0]


class RandomPick:
    """A random instance, in proportion to its weight.

    Random rather than round robin: every facade worker picks on its own, with no state to share, and
    the load still spreads evenly (by weight).
    """

    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.Random()

    def __call__(
        self,
        instances: Sequence[Instance],
        failed_ids: Collection[str] = (),
        outstanding: Mapping[str, int] | None = None,
    ) -> Instance:
        return _weighted(self._rng, _candidates(instances, failed_ids))


class PowerOfTwoPick:
    """The power of two choices: two distinct random instances (drawn by weight), and of the two the one
    with the lower load once this call is added, per unit of weight ((outstanding + 1) / weight).

    A slow instance piles up outstanding calls and loses most draws, with no state beyond the counts the
    caller keeps; with no outstanding calls it spreads like the weighted random pick. The + 1 counts the
    call being placed: by outstanding / weight an idle weight-1 (warning) instance would beat a weight-10
    one with a single call in flight. Two idle instances: the first draw, as the random pick would.
    (Mitzenmacher; Envoy's weighted least request, Finagle's P2C.)
    """

    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.Random()

    def __call__(
        self,
        instances: Sequence[Instance],
        failed_ids: Collection[str] = (),
        outstanding: Mapping[str, int] | None = None,
    ) -> Instance:
        pool = _candidates(instances, failed_ids)
        first = _weighted(self._rng, pool)
        rest = [i for i in pool if i is not first]
        if not rest:
            return first
        second = _weighted(self._rng, rest)
        busy = outstanding or {}

        def load(instance: Instance) -> float:
            return (busy.get(instance.id, 0) + 1) / max(instance.weight, 1e-9)

        if not busy.get(first.id) and not busy.get(second.id):
            # Both idle (the usual case on a quiet caller): the first draw, so the share follows the weights
            # as with the random pick. By (0 + 1) / weight a light instance would never win an idle pair.
            return first
        return second if load(second) < load(first) else first


# The balancing policies by the name LB_POLICY (and Consul KV) gives them.
POLICIES: dict[str, Callable[[], Picker]] = {"random": RandomPick, "p2c": PowerOfTwoPick}
DEFAULT_POLICY = "random"
KNOWN = ", ".join(sorted(POLICIES))
# The Consul KV key that switches the policy live (servicekit.live_config).
KEY_POLICY = "config/balancing/policy"


def parse_policy(raw: str) -> str:
    """The one check of a policy name, wherever it comes from (LB_POLICY at start, the KV key live)."""
    name = raw.strip()
    if name not in POLICIES:
        raise Refused(f"unknown balancing policy {name!r}; known: {KNOWN}")
    return name


def make(name: str) -> Picker:
    return POLICIES[parse_policy(name)]()


def live_policy(use_policy: Callable[[str], None], start: str) -> LiveSetting:
    """The balancing policy of a caller as Consul KV switches it (upstream.caller.Caller.use_policy). `start`
    is the caller's LB_POLICY, no default: a deleted key must bring back what the environment says, not
    `random`."""
    return LiveSetting(key=KEY_POLICY, start=start, parse=parse_policy, apply=use_policy)
