"""Background work, one way: a named daemon thread running a step in a loop until it is stopped, and the
backoff every retry in servicekit uses (tenacity, with the caps chosen here once).

A step that raises something unexpected is logged with its traceback and run again after a backoff: a
background thread that dies leaves a worker that looks alive but no longer watches, keeps, connects or
consumes.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential
from tenacity.wait import wait_base

T = TypeVar("T")

log = logging.getLogger(__name__)

# The backoff after a failed call to a dependency (the Consul agent, the Hazelcast cluster): 0.5 s, 1 s,
# 2 s, then every 3 s, each plus up to half a second of jitter so that many workers do not hammer an agent
# that just came back. Short, because on loopback a retry is cheap and a service should be back within
# seconds of its dependency.
FIRST_RETRY = 0.5
MAX_RETRY = 3.0
JITTER = 0.5
# When Consul refuses the token: retrying fast will not fix it; say so now and then, without a crash loop.
MAX_RETRY_REFUSED = 30.0


class _wait_jitter(wait_base):
    """tenacity's wait_random, from a generator of its own: the shared `random` module's state is the
    caller's (hypothesis, for one, warns when another thread moves it)."""

    def __init__(self, jitter: float):
        self._jitter = jitter
        self._rng = random.Random()

    def __call__(self, retry_state: RetryCallState) -> float:
        return self._rng.uniform(0, self._jitter)


def backoff(cap: float = MAX_RETRY) -> wait_base:
    """The wait before retry n: FIRST_RETRY * 2**(n-1), at most `cap`, plus up to JITTER seconds."""
    return wait_exponential(multiplier=FIRST_RETRY, max=cap) + _wait_jitter(JITTER)


class _Retry:
    """A tenacity `Retrying` that is only entered once a call has failed.

    A call through `Retrying` costs about 20 us of bookkeeping even when it succeeds, and the consumer makes
    two per queue item (the loop's step and its poll): the drain bench lost a quarter of its rate to it.
    The first failure is handed to tenacity as its first attempt, so the log lines, the backoff and the
    stop condition are tenacity's, exactly as if every call had gone through it.
    """

    def __init__(self, retrying: Retrying, retry_on: tuple[type[BaseException], ...]):
        self._retrying = retrying
        self._retry_on = retry_on

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except self._retry_on as exc:
            failed: list[BaseException] = [exc]

        def again() -> T:
            if failed:
                raise failed.pop()
            return fn(*args, **kwargs)

        return self._retrying(again)


class BackgroundLoop:
    """Calls `step()` on a named daemon thread until `stop()`, or until `step` returns False.

    `step` waits through `wait()`, which returns early (True) once the loop is stopping, so `stop` takes
    effect within one call the step makes to a dependency, each of which is bounded by its own timeout.
    """

    def __init__(self, name: str, step: Callable[[], bool | None]):
        self.name = name
        self._step = step
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._steps = _Retry(
            Retrying(
                retry=retry_if_exception_type(Exception),
                wait=backoff(),
                stop=self._stop_when_stopping,
                sleep=self._sleep,
                before_sleep=self._log_unexpected,
                retry_error_callback=lambda state: False,
            ),
            (Exception,),
        )

    def start(self) -> BackgroundLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float = 0.0) -> bool:
        """Ask the loop to end; wait up to `timeout` for it. True once the thread is over."""
        self._stopping.set()
        if timeout > 0 and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True, at once, when the loop is stopping."""
        return self._stopping.wait(seconds)

    def retrying(
        self,
        retry_on: tuple[type[BaseException], ...],
        on_retry: Callable[[RetryCallState], None] | None = None,
        wait: wait_base | Callable[[RetryCallState], float] | None = None,
    ) -> _Retry:
        """Retry a call that raised one of `retry_on` with the backoff, until it succeeds or the loop is
        stopping (then the last error is raised, and the loop ends without logging it)."""
        return _Retry(
            Retrying(
                retry=retry_if_exception_type(retry_on),
                wait=wait or backoff(),
                stop=self._stop_when_stopping,
                sleep=self._sleep,
                before_sleep=on_retry,
                reraise=True,
            ),
            retry_on,
        )

    def _sleep(self, seconds: float) -> None:
        # tenacity's sleep: cut short when the loop is stopping (the stop condition then ends the retries).
        self._stopping.wait(seconds)

    def _stop_when_stopping(self, retry_state: RetryCallState) -> bool:
        return self._stopping.is_set()

    def _log_unexpected(self, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        pause = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.error("%s: unexpected %s; running again in %.1f s", self.name, type(exc).__name__, pause, exc_info=exc)

    def _run(self) -> None:
        while not self._stopping.is_set():
            result: Any = self._steps(self._step)
            if result is False:
                return
