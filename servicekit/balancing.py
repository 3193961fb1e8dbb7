"""Which instance of a service a caller tries next."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from .discovery import Instance


class Picker(Protocol):
    def __call__(self, instances: Sequence[Instance], failed_ids: Collection[str] = ()) -> Instance: ...


class RandomPick:
    """A random passing instance, preferring those that have not failed this call yet.

    Random rather than round robin: every facade worker picks on its own, with no state to share, and
    the load still spreads evenly. Once every instance failed (a rolling restart the cache has not seen
    yet), any of them again.
    """

    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.Random()

    def __call__(self, instances: Sequence[Instance], failed_ids: Collection[str] = ()) -> Instance:
        if not instances:
            raise ValueError("no instance to pick from")
        untried = [i for i in instances if i.id not in failed_ids]
        return self._rng.choice(untried or instances)


# The balancing policies by the name LB_POLICY (and Consul KV) gives them.
POLICIES: dict[str, Callable[[], Picker]] = {"random": RandomPick}
DEFAULT_POLICY = "random"


def make(name: str) -> Picker:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown balancing policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None
