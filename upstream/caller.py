"""The facade's calls to one service: an instance from the watch, picked by the balancing policy, less the
ejected ones; what one attempt's failure says (`Reached`); whether another instance is tried; and what the
client is told when none answers (`CallFailed`)."""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base
from urllib3.exceptions import MaxRetryError, NewConnectionError
from werkzeug.exceptions import NotFound

from servicekit import metrics
from servicekit.discovery import Instance
from servicekit.errors import BadGateway, InsufficientStorage, Unavailable

from . import balancing
from .balancing import Picker
from .outliers import OutlierDetector
from .retry_budget import RetryBudget

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
# Right after a worker starts, how long a request may wait for Consul's first answer.
FIRST_ANSWER_TIMEOUT = 1.0

Send = Callable[[Instance, tuple[float, float]], requests.Response]


class Instances(Protocol):
    """What the caller reads the instances from: upstream.watch.Discovery, or a stand-in in the tests."""

    def instances(self, service: str, timeout: float = 0.0) -> tuple[Instance, ...]: ...


class stop_at(stop_base):  # noqa: N801 - named like tenacity's own stops
    """Stop at a moment of time.monotonic(): the request's deadline (stop_after_delay counts from the first
    attempt, which may come after the request's other steps)."""

    def __init__(self, give_up_at: float):
        self.give_up_at = give_up_at

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() >= self.give_up_at


class Reached(enum.Enum):
    """How far a failed call got at the instance, which decides whether another instance may be tried."""

    NO = "no"  # the connection was refused or never set up: the request never went out
    DONE = "done"  # it answered (5xx, or a body that is not JSON), or dropped the connection: its work is over
    MAYBE_STILL_WORKING = "maybe still working"  # the read timed out: it may still be on it
    REFUSED = "refused"  # it answered 503 {"stored": false}: it did nothing, and another instance may do it

    @staticmethod
    def of(exc: Exception) -> Reached:
        # ConnectTimeout is a ConnectionError too; ReadTimeout is not.
        if isinstance(exc, requests.ReadTimeout):
            return Reached.MAYBE_STILL_WORKING
        if isinstance(exc, requests.ConnectTimeout) or _never_sent(exc):
            return Reached.NO
        # Among them a connection closed or reset after the request went out ("Connection aborted": a worker
        # killed mid-request), which may well have been served.
        return Reached.DONE


def _never_sent(exc: Exception) -> bool:
    """A connection that could not be made (refused, unreachable, a name that does not resolve): requests
    wraps urllib3's NewConnectionError in a MaxRetryError. Any other ConnectionError may have carried the
    request."""
    cause = exc.args[0] if isinstance(exc, requests.ConnectionError) and exc.args else None
    if isinstance(cause, MaxRetryError):
        cause = cause.reason
    return isinstance(cause, NewConnectionError)


def _refusal(response: requests.Response) -> str | None:
    """The error of a 503 whose body says `"stored": false` (logging_svc's WritesRefused, StoreUnavailable);
    None for any other answer."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("stored") is False:
        return str(body.get("error") or "writes refused")
    return None


class InstanceFailed(Exception):
    """One instance did not answer usefully; another may."""

    def __init__(self, reason: str, reached: Reached, refusal: str | None = None):
        super().__init__(reason)
        self.reached = reached
        self.refusal = refusal


class CallFailed(Unavailable):
    """No instance answered usefully. `maybe_done`: one of them may have done the work all the same (it
    answered 5xx, its read timed out, or it dropped the connection after the request went out), so a write
    may have landed."""

    def __init__(self, public: str, detail: str, maybe_done: bool, **fields: Any):
        super().__init__(public, detail, **fields)
        self.maybe_done = maybe_done


class Caller:
    """Calls to the instances of some services, from one worker: the balancing policy in force, the calls in
    flight per instance (what p2c compares), each service's retry budget and outlier ejection."""

    def __init__(
        self,
        instances: Instances,
        services: Iterable[str],
        policy: str = balancing.DEFAULT_POLICY,
        timeouts: tuple[float, float] = (0.5, 3.0),
        retry_budget: tuple[float, int] = (0.1, 6),
        pick: Picker | None = None,
    ):
        self._instances = instances
        self.picker: Picker = pick or balancing.make(policy)
        # Calls in flight from this worker, by instance id: what the p2c policy compares.
        self.outstanding: dict[str, int] = {}
        self._outstanding_lock = threading.Lock()
        self.timeouts = timeouts
        self.budgets = {service: RetryBudget(*retry_budget) for service in services}
        for service in self.budgets:
            metrics.start_retries_refused(service)
        # Instances whose calls keep failing while Consul still has them passing, left out for a while.
        self.outliers = {service: OutlierDetector(service) for service in self.budgets}

    def use_policy(self, name: str) -> None:
        """Pick instances by the named policy (upstream.balancing.POLICIES) from the next call on."""
        self.picker = balancing.make(name)
        log.info("balancing by the %s policy", name)

    def forget_gone(self, service: str, registered: frozenset[str]) -> None:
        """Consul listed `registered` for `service` (its discovery watch's answer): what this worker keeps of
        any other instance goes, so instances that come and go leave nothing behind."""
        self.outliers[service].forget_all_but(registered)

    def ejected(self, service: str) -> list[str]:
        return self.outliers[service].ejected()

    def call(
        self,
        service: str,
        send: Send,
        give_up_at: float,
        retry_after_timeout: bool = False,
        only: str | None = None,
    ) -> tuple[Instance, Any]:
        """Send to a passing instance; after a failure, maybe try another one.

        Another instance is tried at once after a connection that could not be made or a split-brain refusal
        (the first did nothing), and after a 5xx, a timeout or a connection dropped once the request was sent
        (the first may have done it) only while the service's retry budget allows
        (upstream/retry_budget): a slow tier then gets at most a tenth more calls, not one more per call.
        A call whose read timed out may still be running at the first instance, so it goes elsewhere only with
        `retry_after_timeout`, for calls whose work is small and safe to repeat (POST /logging: one
        put_if_absent by id); a read of the log is never doubled that way. The instance list comes from
        memory (no Consul call); the whole call, retries included, ends by `give_up_at`. `only` names the one
        instance that may answer (a cursor of its own).
        """
        return _Call(self, service, send, give_up_at, retry_after_timeout, only).run()

    def sent(self, instance: Instance, change: int) -> None:
        with self._outstanding_lock:
            count = self.outstanding.get(instance.id, 0) + change
            if count:
                self.outstanding[instance.id] = count
            else:
                # Instances come and go: an idle one leaves no entry behind.
                del self.outstanding[instance.id]

    def candidates(self, service: str, only: str | None) -> tuple[Instance, ...]:
        instances = self._instances.instances(service, timeout=FIRST_ANSWER_TIMEOUT)
        if only is not None:
            # A cursor's instance is the only one that can answer, ejected or not.
            return tuple(i for i in instances if i.id == only)
        return self.outliers[service].usable(instances)


class _Call:
    """One call with its attempts: which instances failed it and why, and what to tell the client."""

    def __init__(
        self, caller: Caller, service: str, send: Send, give_up_at: float, retry_after_timeout: bool, only: str | None
    ):
        self.caller = caller
        self.service = service
        self.send = send
        self.give_up_at = give_up_at
        self.retry_after_timeout = retry_after_timeout
        self.only = only
        self.budget = caller.budgets[service]
        self.outliers = caller.outliers[service]
        self.failed: dict[str, str] = {}  # instance id -> why it failed this call
        self.touched: list[bool] = []  # one entry per failed attempt: whether it reached the instance
        self.refusals: list[str | None] = []  # one entry per failed attempt: what a refusing instance said

    def run(self) -> tuple[Instance, Any]:
        self.budget.first_try()
        retrying = Retrying(
            retry=retry_if_exception_type(InstanceFailed),
            stop=stop_after_attempt(MAX_ATTEMPTS) | stop_at(self.give_up_at),
            wait=self.pause,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self.attempt(attempt.retry_state.attempt_number)
        except InstanceFailed:
            raise self.give_up(f"every {self.service} instance failed") from None
        raise AssertionError("unreachable: tenacity either returns or reraises")

    def pick(self) -> Instance:
        instances = self.caller.candidates(self.service, self.only)
        if not instances:
            if self.only is not None:
                # Gone, or restarting: either way what it held is gone with its memory.
                raise NotFound(f"the {self.service} instance of this cursor is gone: start again without the cursor")
            raise Unavailable(f"no healthy {self.service} instance")
        return self.caller.picker(instances, self.failed, self.caller.outstanding)

    def pause(self, state: RetryCallState) -> float:
        # The next untried instance at once; once every instance failed (a rolling restart the cache has not
        # seen yet), a short jittered pause before going round again. `failed` may hold instances ejected
        # since: only the candidates count.
        if self.only is None and any(i.id not in self.failed for i in self.caller.candidates(self.service, None)):
            return 0.0
        return random.uniform(0.05, 0.2)

    def attempt(self, number: int) -> tuple[Instance, Any]:
        instance = self.pick()
        metrics.count_attempt(self.service, instance.id, retry=number > 1)
        remaining = max(self.give_up_at - time.monotonic(), 0.05)
        connect, read = self.caller.timeouts
        try:
            answer = self.once(instance, (min(connect, remaining), min(read, remaining)))
        except InstanceFailed as exc:
            self.after_failure(instance, exc, last=number >= MAX_ATTEMPTS or time.monotonic() >= self.give_up_at)
            raise
        self.outliers.succeeded(instance.id)
        return instance, answer

    def after_failure(self, instance: Instance, exc: InstanceFailed, last: bool) -> None:
        """Count the failure; raise CallFailed when no other instance may be tried (InstanceFailed goes on to
        the next attempt)."""
        # Every way an instance fails a call counts towards its ejection; a 4xx or a full log (not
        # InstanceFailed) says nothing about the instance.
        if self.outliers.failed(instance.id, str(exc)):
            metrics.count_ejection(self.service, instance.id)
        self.touched.append(exc.reached not in (Reached.NO, Reached.REFUSED))
        self.refusals.append(exc.refusal)
        if last or exc.reached in (Reached.NO, Reached.REFUSED):
            # The instance did nothing (no connection, or writes refused for lack of members): another one is
            # tried at once, at no cost to the budget.
            return
        if exc.reached is Reached.MAYBE_STILL_WORKING and not self.retry_after_timeout:
            raise self.give_up(f"{self.service} did not answer in time") from None
        if not self.budget.try_retry():
            metrics.count_retry_refused(self.service)
            raise self.give_up(f"{self.service} failed and its retry budget is spent") from None

    def give_up(self, public: str) -> CallFailed:
        # Every instance refused for the same reason (the log's database is down): the client is told it.
        refusals = self.refusals
        fields = {"refused": refusals[0]} if len(set(refusals)) == 1 and refusals[0] is not None else {}
        detail = "; ".join(f"{k}: {v}" for k, v in self.failed.items())
        return CallFailed(public, detail, any(self.touched), **fields)

    def once(self, instance: Instance, timeout: tuple[float, float]) -> Any:
        try:
            self.caller.sent(instance, +1)
            try:
                response = self.send(instance, timeout)
            finally:
                self.caller.sent(instance, -1)
            return self.answer(instance, response)
        except (requests.RequestException, ValueError, InstanceFailed) as exc:
            if isinstance(exc, InstanceFailed):
                reason, reached, refusal = str(exc), exc.reached, exc.refusal
            else:
                reason, reached, refusal = type(exc).__name__, Reached.of(exc), None
            self.failed[instance.id] = reason
            metrics.count_failure(self.service, instance.id, reason)
            log.warning("%s failed (%s)", instance.id, reason)
            raise InstanceFailed(reason, reached, refusal) from exc

    def answer(self, instance: Instance, response: requests.Response) -> Any:
        if response.status_code == 507:
            # The log is full for every instance alike (they share it): no other instance is tried.
            raise InsufficientStorage("the log is full", f"{instance.id}: {response.text[:200]}")
        refusal = _refusal(response) if response.status_code == 503 else None
        if refusal is not None:
            # A logging instance whose member sees too few members (split-brain protection), or whose member
            # cannot reach the log's database: nothing was stored there, and another instance (on the larger
            # side of a split) may store it.
            raise InstanceFailed(f"HTTP 503, nothing stored: {refusal}", Reached.REFUSED, refusal)
        if response.status_code >= 500:
            raise InstanceFailed(f"HTTP {response.status_code}", Reached.DONE)
        if response.status_code >= 400:
            # The facade validated the request, so a 4xx here is a contract mismatch, not bad input, and no
            # other instance would answer differently. The log names the instance; the client learns only
            # which service refused.
            log.error("%s rejected a request: %s %s", instance.id, response.status_code, response.text[:200])
            raise BadGateway(f"{self.service} rejected the request")
        return response.json()
