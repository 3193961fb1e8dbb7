"""Which instance of a service a caller tries next."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from .discovery import Instance


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
