"""One Consul blocking query asked again and again on a named daemon thread, by one set of rules: the index
Consul's way (servicekit.blocking_index, reset after a failed query), the shared backoff with jitter on
errors (servicekit.background), one log line when Consul stops answering or refuses the token, and one when
it answers again. The facade's discovery cache (upstream.watch) and live configuration
(servicekit.live_config) are each one of these, with their own query and what they make of an answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import consul
from tenacity import RetryCallState

from .background import BackgroundLoop
from .blocking_index import BlockingIndex
from .errors import CONSUL_ERRORS

log = logging.getLogger(__name__)


class BlockingWatch:
    """`ask(index)` makes the blocking query with that index (None: answer at once) and returns Consul's
    (X-Consul-Index, data); `answered(index, data)` takes each answer, and takes it to `index.answered`;
    `failed(denied)` hears of each failed query, once the index was reset. `refused` and `unreachable` are
    the log lines for a token Consul refuses and for an agent that cannot be reached."""

    def __init__(
        self,
        name: str,
        what: str,
        ask: Callable[[int | None], tuple[Any, Any]],
        answered: Callable[[int, Any], None],
        *,
        refused: str,
        unreachable: str,
        failed: Callable[[bool], None] | None = None,
    ):
        self.what = what
        self.index = BlockingIndex()
        # Why the last query failed ("permission denied", or the error's type); None while Consul answers.
        self.consul_error: str | None = None
        self._ask = ask
        self._answered = answered
        self._on_failure = failed
        self._refused = refused
        self._unreachable = unreachable
        self._loop = BackgroundLoop(name, self.once)
        # Jittered backoff on errors keeps many workers from hammering an agent that just came back.
        self._query = self._loop.retrying(CONSUL_ERRORS, on_retry=self._failed)

    def start(self) -> BlockingWatch:
        self._loop.start()
        return self

    def stop(self, timeout: float = 0.0) -> bool:
        """Stop watching. A blocking query in flight is not cut short; the daemon thread ends after it."""
        return self._loop.stop(timeout)

    @property
    def consul_status(self) -> str:
        """ "ok" while Consul answers, else "unreachable: <why>" (for /health)."""
        return "unreachable: " + self.consul_error if self.consul_error else "ok"

    def once(self) -> None:
        """One query, retried until Consul answers, and its answer taken."""
        # A lambda, so that a retry sends the index _failed reset, not the one of the first try.
        index, data = self._query(lambda: self._ask(self.index.next))
        if self.consul_error is not None:
            log.info("Consul answers again; watching %s", self.what)
            self.consul_error = None
        self._answered(int(index or 0), data)

    def _failed(self, retry_state: RetryCallState) -> None:
        assert retry_state.outcome is not None
        exc = retry_state.outcome.exception()
        denied = isinstance(exc, consul.ACLPermissionDenied)
        if self.consul_error is None:
            if denied:
                log.error("%s", self._refused)
            else:
                log.warning("%s: %s", self._unreachable, exc)
        self.consul_error = "permission denied" if denied else type(exc).__name__
        self.index.failed()
        if self._on_failure is not None:
            self._on_failure(denied)
