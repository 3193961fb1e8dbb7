"""The index a Consul blocking query sends, by Consul's rules; kept by servicekit.blocking_watch, the one
watch behind the facade's discovery (upstream.watch) and live configuration (servicekit.live_config).

https://developer.hashicorp.com/consul/api-docs/features/blocking: start over (no index) when the index
went backwards, never send an index of 0 or less; and here, start over after a failed query too, since the
agent may come back restarted with a lower index, and a query for the old one would be held for the
whole wait.
"""

from __future__ import annotations


class BlockingIndex:
    def __init__(self) -> None:
        # The X-Consul-Index of the last answer (None before the first), to notice one that goes backwards.
        self.last: int | None = None
        # The index the next query sends; None: a query that answers at once.
        self.next: int | None = None

    def answered(self, index: int) -> bool:
        """Take the index of an answer; True when it went backwards (the agent restarted)."""
        restarted = self.last is not None and index < self.last
        self.last = index
        self.next = None if restarted or index <= 0 else index
        return restarted

    def failed(self) -> None:
        """A query failed: the next one starts over."""
        self.next = None
